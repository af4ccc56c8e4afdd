"""The similarity-measure registry against independent derivations (numpy, scipy), in
float64 on random data with n much larger than d: compare(X, X) is perfect and each
declared invariance holds."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg, stats
from scipy.spatial.distance import pdist

from core.analyses import similarity
from core.analyses.similarity import MEASURES, SimilarityError, compare

N, D1, D2 = 300, 12, 8


def pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related representations: Y a noisy, nonlinear read of part of X."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D1)) * np.linspace(3, 0.3, D1) + 2.0
    y = np.tanh(x[:, :D2] @ rng.normal(size=(D2, D2))) + 0.5 * rng.normal(size=(N, D2))
    return x, y


def classical_cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations from the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx."""
    x, y = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    ev = np.sort(np.linalg.eigvals(m).real)[::-1][:min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(ev, 0, 1))


def test_mean_cca_and_svcca_match_the_classical_eigen_solution():
    x, y = pair()
    rho = classical_cca(x, y)
    assert np.allclose(similarity.canonical_correlations(x, y).numpy(), rho, atol=1e-6)
    assert compare(x, y, "mean_cca") == pytest.approx(rho.mean(), abs=1e-6)
    # SVCCA: the top singular directions with 99% of each side's variance, then CCA
    def reduced(z):
        c = z - z.mean(0)
        u, s, _ = np.linalg.svd(c, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.99) + 1)
        return u[:, :k] * s[:k]
    assert compare(x, y, "svcca") == pytest.approx(classical_cca(reduced(x), reduced(y)).mean(),
                                                   abs=1e-6)


def test_pwcca_weights_the_correlations_by_the_narrower_side():
    """Morcos et al.'s weights, derived with the classical solution: canonical weights a_i
    of the narrower side (Y here), variates h_i = Yc a_i / |Yc a_i|, alpha_i = sum_j
    |<h_i, y_j>|."""
    x, y = pair(1)
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    ev, vecs = np.linalg.eig(np.linalg.solve(syy, sxy.T) @ np.linalg.solve(sxx, sxy))
    order = np.argsort(ev.real)[::-1]
    rho, a = np.sqrt(np.clip(ev.real[order], 0, 1)), vecs.real[:, order]
    h = yc @ a
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ yc).sum(1)
    expected = float((alpha / alpha.sum() * rho).sum())
    assert compare(x, y, "pwcca") == pytest.approx(expected, abs=1e-6)
    assert compare(y, x, "pwcca") == pytest.approx(expected, abs=1e-6)


def test_procrustes_is_the_angle_after_the_best_rotation():
    x, y = pair(2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    padded = np.hstack([yc, np.zeros((N, D1 - D2))])
    r, _ = linalg.orthogonal_procrustes(padded, xc)     # the rotation that best maps Y onto X
    expected = math.acos(np.trace(xc.T @ padded @ r))
    assert compare(x, y, "procrustes") == pytest.approx(expected, abs=1e-6)


def test_rsa_compares_correlation_distance_matrices():
    x, y = pair(3)
    a, b = pdist(x, "correlation"), pdist(y, "correlation")
    assert compare(x, y, "rsa_pearson") == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-6)
    assert compare(x, y, "rsa_spearman") == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-6)
    ties = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert np.allclose(similarity._ranks(ties).numpy(), stats.rankdata(ties.numpy()))


def test_mutual_knn_counts_shared_neighbours():
    x, y = pair(4)
    k = 5

    def nearest(z):
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        s = z @ z.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row)[:k]) for row in s]
    expected = np.mean([len(p & q) / k for p, q in zip(nearest(x), nearest(y))])
    assert similarity.mutual_knn(x, y, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", list(MEASURES))
def test_a_representation_is_perfectly_similar_to_itself(name):
    x, _ = pair(5)
    perfect = 0.0 if not MEASURES[name].higher_is_similar else 1.0
    assert compare(x, x, name) == pytest.approx(perfect, abs=1e-6)


@pytest.mark.parametrize("name", list(MEASURES))
def test_each_declared_invariance_holds(name):
    x, y = pair(6)
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(D2, D2)))
    maps = {"orthogonal": y @ q, "isotropic_scaling": 3.7 * y,
            "permutation": y[:, rng.permutation(D2)], "translation": y + rng.normal(size=D2) * 5,
            "invertible_linear": y @ (rng.normal(size=(D2, D2)) + 3 * np.eye(D2))}
    base = compare(x, y, name)
    measure = MEASURES[name]
    for invariance, moved in maps.items():
        value = compare(x, moved, name)
        if invariance in measure.invariant_to:
            assert value == pytest.approx(base, abs=1e-6), invariance
    # and what it does not claim, it sees (one such map moves it)
    unclaimed = [i for i in maps if i not in measure.invariant_to]
    assert any(abs(compare(x, maps[i], name) - base) > 1e-4 for i in unclaimed) or not unclaimed
    assert measure.invariances().startswith("invariant to")


def test_bad_inputs_are_sentences():
    x, y = pair()
    with pytest.raises(SimilarityError, match="same images"):
        compare(x, y[:10], "linear_cka")
    with pytest.raises(SimilarityError, match="no similarity measure is called 'cca'"):
        compare(x, y, "cca")
    with pytest.raises(SimilarityError, match="more images than dimensions"):
        compare(x[:10], y[:10], "mean_cca")
    with pytest.raises(SimilarityError, match="pool the feature map"):
        compare(np.random.default_rng(0).normal(size=(20, 5000)), y[:20], "svcca")
    with pytest.raises(SimilarityError, match="NaN"):
        compare(np.full((10, 3), np.nan), y[:10], "rsa_pearson")


def test_a_layer_matrix_of_feature_maps_flattened_or_pooled():
    g = torch.Generator().manual_seed(0)
    a = {"l1": torch.randn(40, 4, 3, 3, generator=g), "l2": torch.randn(40, 6, generator=g)}
    b = {"m1": a["l1"] * 2 + 0.1 * torch.randn(40, 4, 3, 3, generator=g)}
    flat = similarity.matrix(a, b, "linear_cka")
    pooled = similarity.matrix(a, b, "linear_cka", how="pool")
    assert flat.shape == (2, 1) and flat[0, 0] > 0.95 and flat[1, 0] < 0.6
    assert pooled[0, 0] > 0.9 and similarity.rows(a["l1"], "pool").shape == (40, 4)


def test_the_command_line_compares_two_zoo_models_under_a_measure(world, tmp_path, capsys):
    import json

    from core.__main__ import main
    out = tmp_path / "svcca.json"
    assert main(["similarity", "--a", "resnet18-linf-8", "--b", "resnet18-standard-s0",
                 "--measure", "svcca", "-n", "80", "--layers", "layer1.0,layer2.0,layer4.1",
                 "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 80 and result["maps"] == "pool" and len(result["matrix"]) == 3
    assert all(0 <= v <= 1 for row in result["matrix"] for v in row)
    assert result["invariances"].startswith("invariant to orthogonal")
    capsys.readouterr()
    # a model against itself: the diagonal is perfect
    assert main(["similarity", "--a", "resnet18-linf-8", "--b", "resnet18-linf-8",
                 "--measure", "procrustes", "-n", "80", "--layers", "layer2.0,layer4.1",
                 "--device", "cpu"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert np.allclose(np.diag(same["matrix"]), 0, atol=1e-6) and not same["higher_is_similar"]
    # flattened maps of every layer on too many images: one sentence, nothing computed
    assert main(["similarity", "--a", "resnet18-linf-8", "--b", "resnet18-standard-s0",
                 "--measure", "rsa_pearson", "-n", "100000", "--maps", "flatten"]) == 2
    assert "holds the features of all 100,000 images at once" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["linear_cka", "svcca", "procrustes", "mutual_knn"])
def test_calibration_tells_related_from_unrelated_representations(name):
    x, y = pair(8)
    related = similarity.calibrate(x[:120], y[:120], name, permutations=40, resamples=40)
    assert related["p_value"] == pytest.approx(1 / 41)
    low, high = related["interval"]
    assert low <= related["value"] <= high
    beyond = (low > related["null_95"]) if MEASURES[name].higher_is_similar \
        else (high < related["null_95"])
    assert beyond, related
    unrelated = np.random.default_rng(9).normal(size=(120, D2))
    null = similarity.calibrate(x[:120], unrelated, name, permutations=40, resamples=10)
    assert null["p_value"] > 0.05, null
    assert similarity.calibrate(x[:120], y[:120], name, permutations=40, resamples=40) == related
    assert related["resample"] == MEASURES[name].resample


@pytest.mark.parametrize("ours, theirs", [("rsa_pearson", "corr"), ("rsa_spearman", "spearman")])
def test_rsa_matches_rsatoolbox(ours, theirs):
    """The reference RSA: rsatoolbox's correlation-distance RDMs, compared by Pearson or
    Spearman correlation (installed for the tests)."""
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm
    from rsatoolbox.rdm import compare as rsa_compare
    x, y = pair(3)
    rdms = [calc_rdm(Dataset(v), method="correlation") for v in (x, y)]
    assert compare(x, y, ours) == pytest.approx(float(rsa_compare(*rdms, method=theirs)[0, 0]),
                                                abs=1e-6)


@pytest.mark.parametrize("name", ["linear_cka", "rbf_cka_debiased", "rsa_spearman"])
def test_a_layer_matrix_reads_each_layer_once_and_agrees_cell_by_cell(name):
    g = torch.Generator().manual_seed(1)
    a = {"l1": torch.randn(60, 5, generator=g), "l2": torch.randn(60, 7, generator=g)}
    b = {"m1": a["l2"] @ torch.randn(7, 4, generator=g), "m2": torch.randn(60, 3, generator=g)}
    m = similarity.matrix(a, b, name)
    per_cell = [[compare(x, y, name) for y in b.values()] for x in a.values()]
    assert np.allclose(m, per_cell, atol=1e-12)


def test_calibration_job_calibrates_a_view_cell_by_cell(world):
    """A CKA-page view's cells on its first images: the minibatch CKA as debiased CKA; a
    cell alone gives the same numbers as in the whole matrix."""
    from core.analyses import cka
    from core.jobs import runner
    from core.models import zoo

    def run(job):
        return runner.run(job)[0]
    load = zoo.loader("cpu")
    layers = ["layer1.0", "layer3.1"]
    whole = run(similarity.calibration_job(load, "resnet18-linf-8", "resnet18-standard-s0",
                                           layers, layers, n=48))
    assert whole["measure"] == "linear_cka_debiased" and whole["count"] == 48
    assert np.asarray(whole["p_value"]).shape == (2, 2)
    assert np.all(np.asarray(whole["low"]) <= np.asarray(whole["value"]))
    one = run(similarity.calibration_job(load, "resnet18-linf-8", "resnet18-standard-s0",
                                         ["layer3.1"], ["layer1.0"], n=48))
    for key in ("value", "null_mean", "p_value", "low"):
        assert float(np.asarray(one[key])[0][0]) == pytest.approx(
            float(np.asarray(whole[key])[1][0]), abs=1e-9)
    # another measure, on adversarial inputs (the view's own examples)
    adv = run(similarity.calibration_job(load, "resnet18-linf-8", "resnet18-standard-s0",
                                         ["layer4.1"], ["layer4.1"], "svcca", n=48,
                                         inputs_a="linf", inputs_b="linf"))
    assert adv["measure"] == "svcca" and 0 <= float(np.asarray(adv["value"])[0][0]) <= 1
    text = similarity.describe_calibration(whole, 0, 1)
    assert text.startswith("Calibrated on the first 48 images as linear CKA, debiased")
    # the page's default view ships its calibration
    from core import views
    kinds = [j.kind for j in views.view_jobs(load, "cka", {})]
    assert kinds == ["cka", "calibration"]
    assert [j.kind for j in views.view_jobs(load, "cka", {"cka_n": 2000})] == ["cka"]
    assert cka.calibration_requests(load, {**views.page_settings("cka"), "a": "x",
                                           "cka_folder": "/some/folder"}, (0, 0)) is None


def test_the_cka_command_and_sweeps_take_a_measure(world, capsys):
    import json

    from core.__main__ import main
    from core.analyses import cka
    from core.models import zoo
    assert main(["cka", "--a", "resnet18-linf-8", "--b", "resnet18-standard-s0", "-n", "40",
                 "--measure", "procrustes", "--layers", "layer2.0,layer4.1",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["matrix"]) == 2 and all(0 <= v <= math.pi / 2 for r in out["matrix"] for v in r)
    grid = cka._grid({"pairs": [["resnet18-linf-8", "resnet18-standard-s0"]], "n": 40,
                      "measure": ["cka", "svcca", "pwcca"], "kernel": ["linear", "rbf"]},
                     zoo.names(), zoo.loader("cpu"))
    # the minibatch CKA at each kernel; a measure of the registry takes no kernel: once each
    assert sorted(j.kind for j in grid) == ["cka", "cka", "similarity", "similarity"]
