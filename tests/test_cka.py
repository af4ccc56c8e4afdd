"""CKA: HSIC estimators against float64 references written here from the papers'
formulas, kernel invariances, constant layers, and cka_matrix's minibatch
accumulation, forward-pass sharing, attacks and result round trips."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from helpers import image_folder, imagenet_models, tiny_probe
from core import cka, data, results
from core.attacks import PGD
from core.errors import UnknownLayerError
from core.probe import Probe

RNG = np.random.default_rng(0)
N = 32  # images of 16x16 (the CIFAR ResNets pool globally): cheap on busy cores
BATCH = 16
X = RNG.normal(size=(N, 12))
Y = np.tanh(X @ RNG.normal(size=(12, 9))) + 0.5 * RNG.normal(size=(N, 9))
LAYERS = ["relu", "layer1.1", "layer2.0", "layer3.1", "avgpool", "linear"]


# ---------------------------------------------------- references (float64 numpy)

def ref_gram_linear(X: np.ndarray) -> np.ndarray:
    return X @ X.T


def ref_gram_rbf(X: np.ndarray, frac: float) -> np.ndarray:
    """exp(-d^2 / (2 sigma^2)), sigma = frac * median distance of distinct pairs."""
    d2 = np.stack([((X - x) ** 2).sum(1) for x in X])
    sigma = frac * np.median(np.sqrt(d2[np.triu_indices(len(X), 1)]))
    return np.exp(-d2 / (2 * sigma ** 2))


def ref_hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """Kornblith et al. (2019): tr(K H L H) / (n - 1)^2."""
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def ref_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012) eq. 5, as in Nguyen et al. (2021) eq. 3."""
    n = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    ones = np.ones(n)
    value = (np.trace(Kt @ Lt) + (ones @ Kt @ ones) * (ones @ Lt @ ones) / ((n - 1) * (n - 2))
             - 2 / (n - 2) * (ones @ Kt @ Lt @ ones))
    return float(value) / (n * (n - 3))


def ref_cka(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def ref_minibatch(batches: list[tuple[dict, dict]], la: list[str], lb: list[str],
                  unbiased: bool, gram=ref_gram_linear) -> tuple[np.ndarray, np.ndarray]:
    """Minibatch CKA (sum of per-batch HSICs) and the std of per-batch CKA."""
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    ab, aa, bb, per = np.zeros((len(la), len(lb))), np.zeros(len(la)), np.zeros(len(lb)), []
    for fa, fb in batches:
        Ka = [gram(fa[name].flatten(1).double().numpy()) for name in la]
        Kb = [gram(fb[name].flatten(1).double().numpy()) for name in lb]
        cab = np.array([[h(k, m) for m in Kb] for k in Ka])
        caa, cbb = np.array([h(k, k) for k in Ka]), np.array([h(m, m) for m in Kb])
        ab, aa, bb = ab + cab, aa + caa, bb + cbb
        per.append(cab / np.sqrt(np.outer(caa, cbb)))
    return ab / np.sqrt(np.outer(aa, bb)), np.std(per, axis=0, ddof=1) if len(per) > 1 else None


# ------------------------------------------------------------- fixtures, helpers

@pytest.fixture(scope="module")
def models():
    return (tiny_probe(seed=0, name="a", input_size=16),
            tiny_probe(seed=1, name="b", input_size=16))


@pytest.fixture(scope="module")
def images() -> data.ImageTensorDataset:
    g = torch.Generator().manual_seed(0)
    return data.ImageTensorDataset(torch.randint(0, 256, (N, 3, 16, 16), generator=g,
                                                 dtype=torch.uint8),
                                   torch.randint(0, 10, (N,), generator=g))


def features(model, x, layers=LAYERS):
    with torch.no_grad():
        return model.features(x, layers)


@pytest.fixture(scope="module")
def benign_features(models, images) -> list[tuple[dict, dict]]:
    """Per batch: (features of a, features of b), computed directly."""
    a, b = models
    return [(features(a, x), features(b, x)) for x, _ in data.batches(images, BATCH)]


@pytest.fixture(scope="module")
def benign(models, images) -> cka.CKAResult:
    a, b = models
    return cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH)


class ForwardCounter:
    """Counts forward passes of a probe's network (a pre-hook: Probe.features
    may stop a pass early, which skips forward hooks on the root)."""

    def __init__(self, probe):
        self.calls = 0
        self.handle = probe.model.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


# -------------------------------------------------------- HSIC and CKA functions

@pytest.mark.parametrize("unbiased", [False, True])
def test_hsic_matches_reference(unbiased):
    K, L = ref_gram_linear(X), ref_gram_rbf(Y, 0.8)
    ours = (cka.hsic_unbiased if unbiased else cka.hsic_biased)(K, L)
    ref = (ref_hsic_unbiased if unbiased else ref_hsic_biased)(K, L)
    assert ours == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_matches_reference(unbiased):
    ref = ref_cka(ref_gram_linear(X), ref_gram_linear(Y), unbiased)
    assert cka.linear_cka(X, Y, unbiased=unbiased) == pytest.approx(ref, abs=1e-6)
    # tensors (float32, any trailing shape) are flattened and promoted to float64
    t = torch.from_numpy(X).float().reshape(N, 3, 2, 2)
    ref32 = ref_cka(ref_gram_linear(t.double().flatten(1).numpy()), ref_gram_linear(Y),
                    unbiased)
    assert cka.linear_cka(t, torch.from_numpy(Y), unbiased) == pytest.approx(ref32, abs=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("frac", [0.4, 0.8])
def test_rbf_cka_matches_reference(unbiased, frac):
    ref = ref_cka(ref_gram_rbf(X, frac), ref_gram_rbf(Y, frac), unbiased)
    assert cka.rbf_cka(X, Y, sigma_frac=frac, unbiased=unbiased) == pytest.approx(ref, abs=1e-6)
    np.testing.assert_allclose(cka.gram_rbf(X, frac).numpy(), ref_gram_rbf(X, frac), atol=1e-12)


def test_unbiased_and_biased_estimators_differ():
    assert abs(cka.linear_cka(X, Y, unbiased=True) - cka.linear_cka(X, Y)) > 1e-3


@pytest.mark.parametrize("fn", [cka.linear_cka, cka.rbf_cka])
@pytest.mark.parametrize("unbiased", [False, True])
def test_invariant_to_orthogonal_transforms_scaling_and_shifts(fn, unbiased):
    Q, _ = np.linalg.qr(RNG.normal(size=(12, 12)))
    base = fn(X, Y, unbiased=unbiased)
    assert fn(X @ Q, Y, unbiased=unbiased) == pytest.approx(base, abs=1e-10)
    assert fn(3.7 * X, Y, unbiased=unbiased) == pytest.approx(base, abs=1e-10)
    assert fn(X + 5.0, Y, unbiased=unbiased) == pytest.approx(base, abs=1e-10)
    assert fn(Y, X, unbiased=unbiased) == pytest.approx(base, abs=1e-12)


@pytest.mark.parametrize("fn", [cka.linear_cka, cka.rbf_cka])
@pytest.mark.parametrize("unbiased", [False, True])
def test_identical_inputs_give_one(fn, unbiased):
    assert fn(X, X, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
    assert fn(X, 2 * X @ np.linalg.qr(RNG.normal(size=(12, 12)))[0],
              unbiased=unbiased) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("fn", [cka.linear_cka, cka.rbf_cka])
@pytest.mark.parametrize("unbiased", [False, True])
def test_constant_layer_gives_zero_not_nan(fn, unbiased):
    const = np.full((N, 5), 0.3)
    assert fn(const, Y, unbiased=unbiased) == 0.0
    assert fn(Y, const, unbiased=unbiased) == 0.0
    assert fn(const, const, unbiased=unbiased) == 0.0
    # a constant feature among varying ones changes nothing
    with_const = np.hstack([X, np.full((N, 1), 7.0)])
    assert fn(with_const, Y, unbiased=unbiased) == pytest.approx(fn(X, Y, unbiased=unbiased),
                                                                 abs=1e-10)


def test_large_feature_mean_keeps_precision():
    # uncentred float64 Grams of 1e3 + 1e-3 * noise lose ~1e-4 of CKA to rounding
    noise = RNG.normal(size=(N, 12))
    assert cka.linear_cka(1e3 + 1e-3 * noise, Y, unbiased=True) == pytest.approx(
        cka.linear_cka(noise, Y, unbiased=True), abs=1e-8)


def test_too_few_examples_and_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="at least 4"):
        cka.linear_cka(X[:3], Y[:3], unbiased=True)
    with pytest.raises(ValueError, match="same examples"):
        cka.linear_cka(X, Y[:-1])
    with pytest.raises(ValueError, match="sigma_frac"):
        cka.rbf_cka(X, Y, sigma_frac=0)


# --------------------------------------------------------------------- cka_matrix

@pytest.fixture(scope="module")
def itself(models, images) -> tuple[cka.CKAResult, int]:
    """Model a against itself, and how many forward passes that took."""
    a, _ = models
    with ForwardCounter(a) as counter:
        res = cka.cka_matrix(a, a, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH)
    return res, counter.calls


def test_model_against_itself_has_unit_diagonal_in_one_forward_pass(itself):
    res, calls = itself
    assert calls == 2  # one per batch, shared by both sides
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-9)
    np.testing.assert_allclose(res.matrix, res.matrix.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(res.spread), 0.0, atol=1e-9)
    assert (res.n, res.n_batches, res.batch_size) == (N, 2, BATCH)


def test_shared_pass_with_different_layer_lists(models, images, itself):
    a, _ = models
    full, _ = itself
    la, lb = ["layer2.0", "relu", "layer2.0"], ["linear", "layer1.1"]
    with ForwardCounter(a) as counter:
        part = cka.cka_matrix(a, a, images, layers_a=la, layers_b=lb, batch_size=BATCH)
    assert counter.calls == 2
    ia, ib = [LAYERS.index(n) for n in la], [LAYERS.index(n) for n in lb]
    np.testing.assert_allclose(part.matrix, full.matrix[np.ix_(ia, ib)], atol=1e-12)
    assert part.layers_a == la and part.layers_b == lb


def test_two_models_run_once_per_batch_each(models, images):
    a, b = models
    with ForwardCounter(a) as ca, ForwardCounter(b) as cb:
        cka.cka_matrix(a, b, images, layers_a=LAYERS[:2], layers_b=LAYERS[:2], batch_size=BATCH)
    assert (ca.calls, cb.calls) == (2, 2)


@pytest.mark.parametrize("kernel,gram", [
    ("linear", ref_gram_linear), ("rbf", lambda f: ref_gram_rbf(f, 0.8))])
def test_one_batch_biased_equals_full_batch_cka(models, images, benign_features, kernel,
                                                gram):
    a, b = models
    res = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, kernel=kernel,
                         unbiased=False, batch_size=N)
    # eval-mode features are per example: the batches' features, stacked, are the full batch's
    fa, fb = ({k: torch.cat([f[side][k] for f in benign_features]) for k in LAYERS}
              for side in (0, 1))
    ref = np.array([[ref_cka(gram(fa[i].flatten(1).double().numpy()),
                             gram(fb[j].flatten(1).double().numpy()), False)
                     for j in LAYERS] for i in LAYERS])
    # Gram matrices are float32 products of the activations
    np.testing.assert_allclose(res.matrix, ref, atol=2e-6)
    assert np.isnan(res.spread).all() and res.n_batches == 1


@pytest.mark.parametrize("kernel,gram", [
    ("linear", ref_gram_linear), ("rbf", lambda f: ref_gram_rbf(f, 0.5))])
def test_minibatch_unbiased_equals_reference_accumulation(models, images, benign_features,
                                                         kernel, gram):
    a, b = models
    res = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS[::-1], kernel=kernel,
                         sigma_frac=0.5, batch_size=BATCH)
    ref, spread = ref_minibatch(benign_features, LAYERS, LAYERS[::-1], True, gram)
    np.testing.assert_allclose(res.matrix, ref, atol=2e-6)
    np.testing.assert_allclose(res.spread, spread, atol=2e-6)
    # a minibatch value is not the mean of per-batch values, nor a biased estimate
    biased = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS[::-1],
                            kernel=kernel, sigma_frac=0.5, unbiased=False, batch_size=BATCH)
    assert np.abs(biased.matrix - res.matrix).max() > 1e-3


def test_loader_of_batches_equals_dataset(models, images, benign):
    a, b = models
    seen = []
    # a data set is read in seeded random batches; a list of batches as it comes
    res = cka.cka_matrix(a, b, list(data.batches(images, BATCH)), layers_a=LAYERS,
                         layers_b=LAYERS, progress=seen.append)
    np.testing.assert_allclose(res.matrix, benign.matrix, atol=1e-12)
    assert [(e.done, e.total) for e in seen] == [(BATCH, N), (N, N)]
    assert seen[-1].text == f"CKA: {N} of {N} images"
    assert res.batch_size == BATCH
    in_order = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH,
                              shuffle_seed=None)
    assert np.abs(in_order.matrix - benign.matrix).max() > 1e-4  # other batches, other estimate
    first = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH // 2,
                           limit=BATCH)
    subset = cka.cka_matrix(a, b, data.fixed_subset(images, BATCH), layers_a=LAYERS,
                            layers_b=LAYERS, batch_size=BATCH // 2, shuffle_seed=None)
    np.testing.assert_array_equal(first.matrix, subset.matrix)
    assert first.n == BATCH


ATTACK = PGD("linf", eps=16 / 255, step_size=8 / 255, steps=2)


def test_adversarial_inputs_change_the_result(models, images, benign):
    a, b = models
    adv = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH,
                         attack_a=ATTACK, attack_b=ATTACK)
    assert np.abs(adv.matrix - benign.matrix).max() > 1e-3
    assert (adv.attack_a, adv.attack_b) == (ATTACK.describe(), ATTACK.describe())
    assert (benign.attack_a, benign.attack_b) == ("benign", "benign")
    batches = [(features(a, ATTACK(a, x, y)), features(b, ATTACK(b, x, y)))
               for x, y in data.batches(images, BATCH)]
    np.testing.assert_allclose(adv.matrix, ref_minibatch(batches, LAYERS, LAYERS, True)[0],
                               atol=2e-6)


def test_attack_a_against_b_feeds_side_a_only(models, images):
    a, b = models
    res = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH,
                         attack_a=ATTACK, adv_against="b")
    batches = [(features(a, ATTACK(b, x, y)), features(b, x)) for x, y in data.batches(images, BATCH)]
    np.testing.assert_allclose(res.matrix, ref_minibatch(batches, LAYERS, LAYERS, True)[0],
                               atol=2e-6)
    assert res.adv_against == "b" and res.attack_b == "benign"


def test_examples_made_against_a_are_shared_by_both_sides(models, images):
    a, _ = models
    # both sides see the same adversarial examples of a: one model, identical inputs
    res = cka.cka_matrix(a, a, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH,
                         attack_a=ATTACK, attack_b=ATTACK, adv_against="a")
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-9)
    # while benign vs adversarial inputs of the same model differ from 1
    mixed = cka.cka_matrix(a, a, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH,
                           attack_a=ATTACK)
    assert np.diag(mixed.matrix).min() < 1 - 1e-3


def test_taps_before_an_in_place_relu_see_their_own_output(images):
    # torchvision-style: BatchNorm then ReLU(inplace=True), which overwrites the
    # BatchNorm output; hooks that keep that tensor would report CKA(bn, relu) = 1
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(inplace=True), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 16 * 16, 10))
    probe = Probe(net, data.MEAN, data.STD, name="inplace", input_size=16).eval()
    res = cka.cka_matrix(probe, probe, images, layers_a=["1"], layers_b=["2"], batch_size=BATCH)
    ref = ref_minibatch([(features(probe, x, ["1", "2"]),) * 2 for x, _ in data.batches(images, BATCH)],
                        ["1"], ["2"], True)[0]
    np.testing.assert_allclose(res.matrix, ref, atol=2e-6)
    assert res.matrix[0, 0] < 0.99


def test_constant_layer_rows_are_zero(models, images):
    dead = tiny_probe(seed=2, name="dead", input_size=16)
    with torch.no_grad():
        dead.model.conv1.weight.zero_()
        dead.model.bn1.bias.fill_(0.5)  # every image now maps to the same nonzero output
    _, b = models
    for kernel in ("linear", "rbf"):
        for unbiased in (False, True):
            res = cka.cka_matrix(dead, b, images, layers_a=["bn1", "relu", "layer1.0"],
                                 layers_b=LAYERS, kernel=kernel, unbiased=unbiased,
                                 batch_size=BATCH)
            assert np.isfinite(res.matrix).all() and (res.matrix == 0).all()


def test_unknown_layers_raise_before_any_work(models, images):
    a, b = models
    calls = []
    with ForwardCounter(a) as counter:
        with pytest.raises(UnknownLayerError, match="layer1.9"):
            cka.cka_matrix(a, b, images, layers_a=["relu", "layer1.9"],
                           progress=lambda *args: calls.append(args))
        with pytest.raises(UnknownLayerError):
            cka.cka_matrix(a, b, images, layers_b=["nope"])
    assert counter.calls == 0 and calls == []


def test_bad_arguments_raise(models, images):
    a, b = models
    with pytest.raises(ValueError, match="kernel"):
        cka.cka_matrix(a, b, images, kernel="cosine")
    with pytest.raises(ValueError, match="adv_against"):
        cka.cka_matrix(a, b, images, adv_against="both")
    with pytest.raises(ValueError, match="leave a batch of 2"):
        cka.cka_matrix(a, b, images.subset(range(BATCH + 2)), batch_size=BATCH)
    with pytest.raises(ValueError, match="at least 4 images per batch, not 3"):
        cka.cka_matrix(a, b, images, batch_size=3)


def test_result_round_trips_and_exports(models, images):
    a, b = models
    res = cka.cka_matrix(a, b, images, layers_a=LAYERS[:2], layers_b=LAYERS[:3], kernel="rbf",
                         batch_size=BATCH)
    assert res.model_a == a.identity() and res.sigma_frac == 0.8
    back = cka.CKAResult.from_dict(results.decode(*results.encode(res.to_dict())))
    np.testing.assert_array_equal(back.matrix, res.matrix)
    np.testing.assert_array_equal(back.spread, res.spread)
    assert {k: v for k, v in back.to_dict().items() if k not in ("matrix", "spread")} == {
        k: v for k, v in res.to_dict().items() if k not in ("matrix", "spread")}
    as_lists = {**res.to_dict(), "matrix": res.matrix.tolist(), "spread": res.spread.tolist()}
    np.testing.assert_array_equal(cka.CKAResult.from_dict(as_lists).matrix, res.matrix)
    rows = list(csv.DictReader(io.StringIO(res.to_csv())))
    assert len(rows) == 6 and rows[5]["layer_a"] == LAYERS[1] and rows[5]["layer_b"] == LAYERS[2]
    assert float(rows[5]["cka"]) == res.matrix[1, 2]
    assert float(rows[5]["spread"]) == res.spread[1, 2]
    with pytest.raises(ValueError, match="layers_a x layers_b"):
        cka.CKAResult.from_dict({**res.to_dict(), "layers_b": LAYERS})


def test_adversarial_examples_made_beforehand_stand_for_the_attack(models, images,
                                                                  monkeypatch):
    """The paper view attacks each model in two panels: core.jobs makes the examples
    once (attacks.examples, through the results store) and hands them over."""
    from core import attacks
    a, b = models
    direct = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH,
                            attack_a=ATTACK, attack_b=ATTACK)
    ex_a, ex_b = (attacks.examples(m, images, ATTACK, BATCH) for m in (a, b))
    assert ex_a.shape == (N, 3, 16, 16) and ex_a.device.type == "cpu"
    calls = []
    real = attacks.pgd
    monkeypatch.setattr(attacks, "pgd", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    reused = cka.cka_matrix(a, b, images, layers_a=LAYERS, layers_b=LAYERS, batch_size=BATCH,
                            attack_a=ATTACK, attack_b=ATTACK, examples_a=ex_a, examples_b=ex_b)
    assert calls == []
    np.testing.assert_array_equal(reused.matrix, direct.matrix)
    assert reused.attack_a == ATTACK.describe()
    with pytest.raises(ValueError, match="examples_a holds 5 images for 32"):
        cka.cka_matrix(a, b, images, batch_size=BATCH, attack_a=ATTACK, examples_a=ex_a[:5])


def test_paper_view_panels_share_the_first_panels_layer_labels():
    from core import figures
    layers = ["relu", "layer1.0", "layer2.0"]
    panel = {"matrix": np.eye(3), "layers_a": layers, "layers_b": layers, "name_a": "A",
             "name_b": "B", "title": "t"}
    fig = figures.cka_panels([panel, panel, {**panel, "layers_a": ["relu", "linear"],
                                             "matrix": np.ones((2, 3))}])
    assert list(fig.layout.yaxis.ticktext) == ["stem", "1.0", "2.0"]
    assert fig.layout.yaxis2.showticklabels is False and not fig.layout.yaxis2.title.text
    assert fig.layout.yaxis3.showticklabels is not False  # other rows keep their own labels


def test_cka_job_on_an_image_folder_of_imagenet_models(tmp_path):
    """Two ImageNet-class models (1,000 outputs, 64 px here to stay quick) compared on an
    image folder read at their input size: the job's matrix is cka_matrix's on that
    folder, its key names the folder by content; adversarial inputs are made as it is
    read; mismatched sizes and a missing folder are one sentence each."""
    from core import data, jobs, runner
    from core.errors import IncompatibleModelError
    image_folder(tmp_path / "val", per_class=6)
    models = imagenet_models(0, 1)
    models["cifar"] = tiny_probe(name="cifar")
    load = models.__getitem__
    folder = str(tmp_path / "val")
    job = jobs.cka_job(load, "in0", "in1", folder=folder, n=10_000, batch_size=6)
    assert job.inputs["images"]["n"] == 12 and job.inputs["images"]["folder"]["size"] == 64
    got = runner.compute(job)
    want = cka.cka_matrix(models["in0"], models["in1"], data.ImageFolder(folder, 64),
                          batch_size=6, limit=12)
    assert np.allclose(np.asarray(got["matrix"]), want.matrix, atol=1e-6)
    with pytest.raises(IncompatibleModelError, match="Image folder"):
        jobs.cka_job(load, "in0", "in1")
    with pytest.raises(IncompatibleModelError, match="takes 64 px"):
        jobs.cka_job(load, "in0", "cifar", folder=folder)
    # adversarial inputs on a folder: attacked batch by batch as CKA reads them
    adv = jobs.cka_job(load, "in0", "in1", inputs_a="linf", folder=folder, batch_size=6)
    assert not adv.needs and adv.inputs["inputs_a"] == jobs.INPUT_CHOICES["linf"].to_dict()
    want = cka.cka_matrix(models["in0"], models["in1"], data.ImageFolder(folder, 64),
                          attack_a=jobs.INPUT_CHOICES["linf"], batch_size=6, limit=12)
    assert np.allclose(np.asarray(runner.compute(adv)["matrix"]), want.matrix, atol=1e-6)
    with pytest.raises(data.DataNotFoundError):
        jobs.cka_job(load, "in0", "in1", folder=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("layers, stages", [
    (["conv1", "relu", "layer1.0.conv1", "layer1.1", "layer4.1", "avgpool", "fc"],
     ["stem", "stem", "layer1", "layer1", "layer4", "head", "head"]),
    (["conv1", "block1.layer.0.bn1", "block3.layer.3", "bn1", "relu", "avgpool", "fc"],
     ["stem", "block1", "block3", "head", "head", "head", "head"]),
    (["init_conv", "layer.0.block.0.conv_0", "layer.2.block.9", "batchnorm", "logits"],
     ["stem", "layer.0", "layer.2", "head", "head"]),
    (["features.0", "features.3.conv.1", "classifier.1"], ["features", "features", "classifier"]),
])
def test_axis_stages_of_each_architecture_family(layers, stages):
    """A CKA axis with many taps is labelled by stage: a WRN's final bn and relu are its
    head, not its stem; DeepMind's groups are layer.0..2."""
    from core import figures
    assert figures._stages(layers) == stages


def test_dataset_passes_rebatch_the_same_images(models, images, benign):
    """The paper's dataset passes: pass 0 as before, pass 1 the same images in the next
    seeded batching, the HSICs summed over the batches of both (checked against the
    reference minibatch CKA of those batches)."""
    a, b = models
    two = cka.cka_matrix(a, b, images, LAYERS, LAYERS, batch_size=BATCH, passes=2)
    assert two.n == N and two.n_batches == 2 * benign.n_batches and two.passes == 2
    subset = data.fixed_subset(images, N)
    second = data.shuffled_order(N, 0, epoch=1)
    batches = [(features(a, x), features(b, x)) for x, _ in data.batches(images, BATCH)]
    for s in range(0, N, BATCH):
        x, _ = next(data.batches(subset.subset(second[s:s + BATCH].tolist()), BATCH, "cpu", None))
        batches.append((features(a, x), features(b, x)))
    expected, _ = ref_minibatch(batches, LAYERS, LAYERS, True)
    assert np.allclose(two.matrix, expected, atol=1e-5)
    assert not np.allclose(two.matrix, benign.matrix, atol=1e-6)
    with pytest.raises(ValueError, match="passes"):
        cka.cka_matrix(a, b, images, LAYERS, LAYERS, batch_size=BATCH, passes=0)


def test_pooled_feature_maps_enter_averaged_over_space(models, images):
    a, b = models
    pooled = cka.cka_matrix(a, b, images, ["layer2.0"], ["layer3.1"], batch_size=N,
                            unbiased=False, maps="pool")
    x, _ = next(data.batches(images, N))
    fa, fb = (features(m, x, [layer])[layer] for m, layer in ((a, "layer2.0"), (b, "layer3.1")))
    assert pooled.matrix[0, 0] == pytest.approx(
        cka.linear_cka(fa.mean((2, 3)), fb.mean((2, 3))), abs=1e-6)
    assert pooled.maps == "pool"


def test_passes_and_pooling_enter_the_key_only_when_asked(world):
    from core.models import zoo
    load = zoo.loader("cpu")
    plain = cka.cka_job(load, "resnet18-linf-8", "resnet18-standard-s0", n=40)
    assert "passes" not in plain.inputs and "maps" not in plain.inputs
    both = cka.cka_job(load, "resnet18-linf-8", "resnet18-standard-s0", n=40, passes=3,
                       maps="pool")
    assert both.inputs["passes"] == 3 and both.inputs["maps"] == "pool"
    # auto: a 32 px model's maps enter CKA whole, the other measures' pooled
    job, _ = cka.cka_request(load, "resnet18-linf-8", "resnet18-standard-s0", "blocks", n=40)
    assert job.key == plain.key
    other, _ = cka.cka_request(load, "resnet18-linf-8", "resnet18-standard-s0", "blocks", n=40,
                               measure="svcca")
    assert other.inputs["maps"] == "pool"


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("n, d1, d2", [(300, 10, 8), (40, 3, 90), (200, 64, 32)])
def test_linear_cka_through_features_equals_the_kernel_form(n, d1, d2, unbiased):
    """Narrow features take the X^T Y route (no n x n kernel): the same value as the
    kernels', a large mean and a constant side included."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d1, generator=g, dtype=torch.float64) * 3 + 50
    y = torch.tanh(x[:, :min(d1, d2)] @ torch.randn(min(d1, d2), d2, generator=g,
                                                      dtype=torch.float64) / 50)
    y = y + 0.3 * torch.randn(n, d2, generator=g, dtype=torch.float64)
    kernels = cka._pair_cka(cka.gram_linear(x), cka.gram_linear(y), unbiased)
    assert cka.linear_cka(x, y, unbiased) == pytest.approx(kernels, abs=1e-10)
    assert cka.linear_cka(x, torch.full((n, d2), 7.0), unbiased) == 0.0
