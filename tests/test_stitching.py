"""Model stitching: identity stitches, least squares, task-loss fits, errors, results."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import colour_task, tiny_probe
from core import attacks, data, results, stitching
from core.errors import RobustLensError, UnknownLayerError
from core.probe import Probe

POINTS = ["relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
          "layer4.0", "layer4.1", "avgpool"]



def random_images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def a() -> Probe:
    return tiny_probe(width=8, seed=0, name="a", input_size=16)


@pytest.fixture(scope="module")
def wide() -> Probe:
    return tiny_probe(width=16, seed=1, name="wide", input_size=16)


def test_stitch_points_are_stem_blocks_and_pool(a):
    assert stitching.stitch_points(a) == POINTS
    assert stitching.common_stitch_points(a, tiny_probe(width=16, seed=2, input_size=16)) \
        == POINTS


@pytest.mark.parametrize("layer", POINTS)
def test_identity_stitch_of_a_model_to_itself_is_the_model(a, layer):
    x = random_images(4, seed=1)
    stitched = stitching.StitchedModel(a, a, layer).identity_init()
    with torch.no_grad():
        assert torch.allclose(stitched(x), a(x), atol=1e-5, rtol=1e-5)
    assert stitched.layer == layer and stitched.front is a and stitched.end is a


def test_least_squares_recovers_a_known_affine_map_and_matches_lstsq():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 6, generator=g) * torch.tensor([1.0, 10, 0.1, 3, 1, 1]) + 2.0
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    target = (a.double() @ w + b).float()
    neq = stitching.NormalEquations(6, 4)
    for s in range(0, 3000, 700):  # uneven batches
        neq.add(a[s:s + 700], target[s:s + 700])
    w_hat, b_hat = neq.solve(ridge=1e-12)
    assert torch.allclose(w_hat, w, atol=1e-4) and torch.allclose(b_hat, b, atol=1e-4)
    assert neq.relative_error(w_hat, b_hat) < 1e-4
    # with noise: the same answer as an independent least-squares solver
    noisy = target + 0.5 * torch.randn(target.shape, generator=g)
    neq = stitching.NormalEquations(6, 4)
    neq.add(a, noisy)
    w_hat, b_hat = neq.solve(ridge=1e-12)
    design = np.hstack([a.double().numpy(), np.ones((3000, 1))])
    ref, *_ = np.linalg.lstsq(design, noisy.double().numpy(), rcond=None)
    assert np.allclose(w_hat.numpy(), ref[:6], atol=1e-6)
    assert np.allclose(b_hat.numpy(), ref[6], atol=1e-6)
    target64 = noisy.double().numpy()
    resid = np.linalg.norm(design @ ref - target64) / np.linalg.norm(target64)
    assert neq.relative_error(w_hat, b_hat) == pytest.approx(resid, rel=1e-6)
    assert 0.01 < resid < 1


def test_direct_matching_finds_the_conv_that_separates_two_models(a):
    # the end model is the front with a known 1x1 conv appended to block layer2.1:
    # its activation there is exactly M a + c, so direct matching must return (M, c)
    torch.manual_seed(5)
    known = nn.Conv2d(16, 16, 1)
    model = copy.deepcopy(a.model)
    model.layer2[1] = nn.Sequential(model.layer2[1], known)
    end = Probe(model, data.MEAN, data.STD, name="a+conv", input_size=16)
    train = data.ImageTensorDataset((random_images(48, seed=2) * 255).to(torch.uint8),
                                    torch.zeros(48, dtype=torch.long))
    stitched, hist = stitching.fit(a, end, "layer2.1", train, "direct", batch_size=16)
    assert hist["dm_error"] < 1e-4 and hist["n_train"] == 48 and hist["rows"] == 48 * 64
    assert torch.allclose(stitched.stitch.weight, known.weight, atol=1e-3)
    assert torch.allclose(stitched.stitch.bias, known.bias, atol=1e-3)
    x = random_images(4, seed=3)
    with torch.no_grad():
        assert torch.allclose(stitched(x), end(x), atol=1e-3)
    # and between two unrelated models it is far from exact
    _, other = stitching.fit(a, tiny_probe(width=8, seed=7, input_size=16), "layer2.1", train,
                             "direct")
    assert other["dm_error"] > 0.1


def test_task_loss_fit_learns_the_task_from_a_random_stitch():
    # a colour-coded task read through a model stitched to itself at its last
    # block: the random stitching layer scrambles the features, training must
    # find a map under which the (random) head separates the colours
    a = tiny_probe(width=8, seed=0, name="a", input_size=8)
    train, test = colour_task(320, seed=0, size=8), colour_task(200, seed=1, size=8)
    before = stitching.StitchedModel(a, a, "layer4.1")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same seeded init fit() starts from
        before.stitch.reset_parameters()
    acc_before = stitching.evaluate(before, test)["clean_accuracy"]
    stitched, hist = stitching.fit(a, a, "layer4.1", train, "task", epochs=6, lr=0.1,
                                   batch_size=32, seed=0)
    acc_after = stitching.evaluate(stitched, test)["clean_accuracy"]
    assert acc_after > max(0.7, acc_before + 0.4), (acc_before, acc_after)
    assert hist["epoch_loss"][-1] < 0.6 * hist["epoch_loss"][0]
    assert hist["curve"]["loss"][-1] < hist["curve"]["loss"][0]
    assert len(hist["curve"]["loss"]) == len(hist["curve"]["step"]) == 60
    assert hist["steps"] == 60 and hist["n_train"] == 320


def test_task_fit_is_deterministic_and_follows_the_schedule(a):
    train = colour_task(64, seed=0)
    runs = [stitching.fit(a, a, "layer4.0", train, "task", epochs=3, batch_size=32,
                          max_batches=1, log_every=1, seed=3) for _ in range(2)]
    (s1, h1), (s2, h2) = runs
    assert torch.equal(s1.stitch.weight, s2.stitch.weight)
    assert h1["curve"]["loss"] == h2["curve"]["loss"]
    assert h1["curve"]["lr"] == pytest.approx([1e-3, 1e-4, 1e-5])
    # the seed also draws the shuffle: same (identity) start, other first batch
    s3, s4 = (stitching.fit(a, a, "layer4.0", train, "task", epochs=1, batch_size=32,
                            max_batches=1, init="identity", seed=seed)[0] for seed in (3, 4))
    assert not torch.equal(s3.stitch.weight, s4.stitch.weight)


def test_task_fit_can_start_from_the_least_squares_fit(a):
    train = colour_task(64, seed=0)
    # lr 0: the weights stay at the direct init, which for a self-stitch is exact
    seen = []
    stitched, hist = stitching.fit(a, a, "layer2.1", train, "task", epochs=1, lr=0.0,
                                   weight_decay=0.0, batch_size=32, init="direct",
                                   init_batches=1,
                                   progress=lambda e: seen.append(e.done / e.total))
    assert hist["init_dm_error"] < 1e-4 and hist["init_images"] == 32 and hist["steps"] == 2
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 3
    x = random_images(4, seed=6)
    with torch.no_grad():
        assert torch.allclose(stitched(x), a(x), atol=1e-3)


def test_stitching_writes_no_mode_of_the_shared_donors(a, monkeypatch):
    """Other sessions read the cached donors meanwhile: fitting (both methods, BatchNorm
    adapted or not) and scoring under attack set no train/eval flag on them."""
    end = tiny_probe(width=8, seed=2, name="end", input_size=16)
    donors = {id(m) for d in (a, end) for m in d.modules()}
    writes = []
    setattr_ = nn.Module.__setattr__

    def recording(module, name, value):
        if name == "training" and id(module) in donors:
            writes.append(type(module).__name__)
        setattr_(module, name, value)
    monkeypatch.setattr(nn.Module, "__setattr__", recording)
    train = colour_task(64, seed=0)
    for method, adapt in (("direct", False), ("task", False), ("task", True)):
        stitched, _ = stitching.fit(a, end, "layer2.0", train, method, epochs=1,
                                    batch_size=32, adapt_bn=adapt)
        stitching.evaluate(stitched, train, attacks.PGD(eps=8 / 255, steps=1), robust_n=8)
        stitching.representation_error(stitched, train, n=32)
    assert not writes, writes
    assert not a.training and not end.training


def test_donors_stay_frozen_and_unchanged(a):
    end = tiny_probe(width=8, seed=2, name="end", input_size=16)
    before = {k: v.clone() for k, v in end.state_dict().items()}
    train = colour_task(64, seed=0)
    stitched, _ = stitching.fit(a, end, "layer2.0", train, "task", epochs=1, batch_size=32,
                                adapt_bn=True)
    assert all(torch.equal(before[k], v) for k, v in end.state_dict().items())
    assert stitched.end is not end and not end.training and not stitched.end.training
    adapted = stitched.end.state_dict()["model.layer3.0.bn1.running_mean"]
    assert not torch.equal(adapted, before["model.layer3.0.bn1.running_mean"])
    stitched, _ = stitching.fit(a, end, "layer2.0", train, "task", epochs=1, batch_size=32)
    assert stitched.end is end
    for p in list(a.parameters()) + list(end.parameters()):
        assert p.requires_grad and p.grad is None
    assert stitched.stitch.weight.grad is not None


def test_stitching_across_widths(a, wide):
    train = colour_task(64, seed=0)
    stitched, hist = stitching.fit(a, wide, "layer2.0", train, "direct")
    assert (stitched.in_channels, stitched.out_channels) == (16, 32)
    assert stitched.stitch.weight.shape == (32, 16, 1, 1) and 0 < hist["dm_error"] < 1
    with torch.no_grad():
        assert stitched(random_images(3)).shape == (3, 10)
    stitched, hist = stitching.fit(wide, a, "avgpool", train, "task", epochs=1, batch_size=32)
    assert stitched.stitch.weight.shape == (64, 128, 1, 1) and hist["steps"] == 2
    with pytest.raises(stitching.StitchingError, match="equal widths"):
        stitched.identity_init()


def test_bad_requests_raise_clear_errors(a):
    with pytest.raises(UnknownLayerError, match="not a stitch point.*layer4.1"):
        stitching.StitchedModel(a, a, "layer9.9")
    with pytest.raises(UnknownLayerError, match="did you mean layer2.1"):
        stitching.StitchedModel(a, a, "layer2.l")
    for not_a_point in ("conv1", "linear", "layer1.0.conv1"):
        with pytest.raises(UnknownLayerError):
            stitching.StitchedModel(a, a, not_a_point)
    deep = tiny_probe(width=8, seed=0, name="deep", arch="resnet34", input_size=16)
    with pytest.raises(UnknownLayerError, match="end model a"):
        stitching.StitchedModel(deep, a, "layer2.3")  # only the front has it
    with pytest.raises(stitching.StitchingError, match="spatial size"):
        stitching.StitchedModel(a, a, "layer2.1", end_layer="layer3.0")
    with pytest.raises(stitching.StitchingError, match="spatial size"):
        stitching.StitchedModel(a, a, "layer1.1", end_layer="avgpool")
    assert issubclass(stitching.StitchingError, RobustLensError)
    x, y = random_images(8), torch.zeros(8, dtype=torch.long)
    with pytest.raises(stitching.StitchingError, match="one-shot"):
        stitching.fit(a, a, "layer4.0", iter([(x, y)]), "task", epochs=1)
    with pytest.raises(ValueError, match="method"):
        stitching.fit(a, a, "layer4.0", [(x, y)], "bogus")


def test_cross_layer_stitch_with_matching_shapes(a):
    stitched = stitching.StitchedModel(a, a, "layer2.0", end_layer="layer2.1").identity_init()
    x = random_images(2)
    with torch.no_grad():  # skipping block layer2.1 changes the output
        assert stitched(x).shape == (2, 10) and not torch.allclose(stitched(x), a(x))


def test_attacks_accept_a_stitched_model(a):
    stitched = stitching.StitchedModel(a, a, "layer3.1").identity_init()
    x, y = random_images(12, seed=4), torch.arange(12) % 10
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    atk = attacks.PGD("linf", 8 / 255, 2 / 255, 3)
    assert attacks.accuracy(stitched, batches) == attacks.accuracy(a, batches)
    assert attacks.accuracy(stitched, batches, atk) == attacks.accuracy(a, batches, atk)
    xa = attacks.pgd(stitched, x, y, "linf", 8 / 255, 2 / 255, 3)
    assert (xa - x).abs().max() <= 8 / 255 + 1e-6


def test_evaluate_counts_and_subsets(a):
    test = colour_task(40, seed=1)
    stitched = stitching.StitchedModel(a, a, "layer4.1").identity_init()
    ev = stitching.evaluate(stitched, test, attacks.PGD("linf", 8 / 255, 2 / 255, 2),
                            robust_n=10)
    assert ev["n"] == 40 and ev["n_robust"] == 10
    assert 0 <= ev["robust_accuracy"] <= 1 and ev["attack"].startswith("PGD-2")
    assert ev["clean_accuracy"] == attacks.accuracy(a, test)
    both = stitching.evaluate_all(stitched, test, test_n=20)
    assert both["front"]["n"] == both["stitched"]["n"] == 20
    assert both["end"]["robust_accuracy"] is None


def test_matrix_cells_and_round_trip(a, wide):
    train, test = colour_task(32, seed=0), colour_task(16, seed=1)
    atk = attacks.PGD("linf", 8 / 255, 2 / 255, 1)
    seen = []
    res = stitching.matrix([(a, wide), (a, a)], layers=["layer1.1", "avgpool"], method="direct",
                           train_loader=train, test_loader=test, attack=atk, robust_n=8,
                           progress=lambda e: seen.append((e.done, e.total)))
    assert res.clean.shape == (2, 2) and res.complete and not np.isnan(res.robust).any()
    assert res.dm_error[0, 0] > 0.01 and (res.dm_error[1] < 1e-3).all()  # self-stitch: exact
    assert res.front_accuracy[0]["clean_accuracy"] == attacks.accuracy(a, test)
    assert seen[-1][0] == seen[-1][1] == 2 * 2 + 2
    assert all(d1 <= d2 for (d1, _), (d2, _) in zip(seen, seen[1:]))
    assert res.pairs[0]["end"] == wide.identity() and res.settings["attack"] == atk.describe()
    assert res.settings["test"] == {"source": "colours", "n": 16, "sha256": test.identity()["sha256"]}

    meta, blob = results.encode(res.to_dict())
    back = stitching.StitchResult.from_dict(results.decode(meta, blob))
    assert back.layers == res.layers and back.pairs == res.pairs and back.method == "direct"
    for name in ("clean", "robust", "dm_error", "repr_error", "seconds"):
        assert np.array_equal(getattr(back, name), getattr(res, name), equal_nan=True)
    assert back.histories == res.histories and back.settings == res.settings
    assert back.end_accuracy == res.end_accuracy

    cell = stitching.stitch_cell(a, a, "avgpool", "direct", train, test, atk, robust_n=8)
    assert cell["clean_accuracy"] == res.clean[1, 1] and cell["dm_error"] < 1e-3
    assert cell["test_representation_error"] == pytest.approx(res.repr_error[1, 1])
    # a self-stitch fitted on 32 x 8 x 8 pixels generalises (avgpool: 32 rows, 65 unknowns, not)
    assert res.repr_error[0, 0] > 0.01 and res.repr_error[1, 0] < 1e-3
    empty = stitching.StitchResult.empty(res.pairs, res.layers, "direct", res.settings)
    assert len(empty.missing()) == 4 and math.isnan(empty.robust[0, 0])
    empty.set_cell(1, "avgpool", cell)
    assert empty.missing() == [(0, 0), (0, 1), (1, 0)]
    key = results.make_key("stitch-cell", stitching.cell_inputs(
        a, a, "avgpool", "direct", train_loader=train, test_loader=test, attack=atk,
        robust_n=8))
    assert key != results.make_key("stitch-cell", stitching.cell_inputs(
        a, a, "avgpool", "direct", train_loader=train, test_loader=test, attack=atk,
        robust_n=9))
    # two subsets of one size from one source are different training data
    other = colour_task(len(train), seed=3)
    assert key != results.make_key("stitch-cell", stitching.cell_inputs(
        a, a, "avgpool", "direct", train_loader=other, test_loader=test, attack=atk,
        robust_n=8))


def test_stitching_jobs_on_an_image_folder_of_imagenet_models(tmp_path):
    """Two ImageNet-class models (64 px here to stay quick) stitched on an image folder:
    the folder's fixed shuffle gives disjoint training and test parts, named by content
    in the keys with their sizes; the cell is stitch_cell's on those parts; a CIFAR-10
    model, or no folder, is one sentence."""
    from helpers import image_folder, imagenet_models
    from core import jobs, runner
    from core.errors import IncompatibleModelError
    image_folder(tmp_path / "val", per_class=6)
    models = imagenet_models(0, 1)
    models["cifar"] = tiny_probe(name="cifar")
    load = models.__getitem__
    folder = str(tmp_path / "val")
    recipe = {**jobs.FOLDER_STITCH_RECIPE, "robust_images": 3, "init_batches": 1,
              "batch_size": 4, "attack": attacks.PGD("linf", 4 / 255, 1 / 255, 2).to_dict()}
    plan = jobs.stitch_matrix(load, [("in0", "in1")], "task", ["layer2.0"], recipe, folder)
    cell = plan.cells[0][0]
    train, test = cell.inputs["train"], cell.inputs["test"]
    assert (train["n"], test["from"], test["n"]) == (6, 6, 6)
    assert train["folder"] == test["folder"] == data.ImageFolder(folder, 64).identity()
    assert cell.inputs["recipe"]["attack"]["eps"] == pytest.approx(4 / 255)
    got = {j.key: runner.compute(j) for j in plan.jobs()}
    result = plan.result(lambda j: got[j.key])
    assert result.clean.shape == (1, 1) and 0 <= result.clean[0, 0] <= 1
    assert got[cell.key]["n_train"] == 6 and got[cell.key]["n_test"] == 6
    assert got[plan.donors["in1"].key]["n"] == 6
    again = jobs.rebuild(json.loads(json.dumps(cell.spec)), load)
    assert again.key == cell.key
    with pytest.raises(IncompatibleModelError, match="takes 64 px"):
        jobs.stitch_cell_job(load, "in0", "cifar", "layer2.0", folder=folder)
    with pytest.raises(IncompatibleModelError, match="Image folder"):
        jobs.stitch_cell_job(load, "in0", "in1", "layer2.0")
    # accuracy needs the folder's classes to be the model's outputs
    image_folder(tmp_path / "pets", ("cat", "dog"), per_class=2)
    with pytest.raises(IncompatibleModelError, match="2 class folders where in0 has 1000"):
        jobs.accuracy_job(load, "in0", folder=str(tmp_path / "pets"))
    from core import archs
    models["nette"] = Probe(archs.build("imagenet_resnet18", num_classes=10), data.MEAN,
                            data.STD, name="nette", input_size=64)
    with pytest.raises(IncompatibleModelError, match="nette has 10 outputs, not ImageNet"):
        jobs.accuracy_job(load, "nette", folder=folder)


def test_a_matrix_reads_a_folder_as_each_job_does_alone(tmp_path):
    """Models that prepare images differently (here one crops bicubic): each cell reads
    the folder through its front's transform, each donor through its own, so every
    job of the matrix has the key it has when rebuilt alone."""
    from helpers import image_folder, imagenet_models
    from core import images, jobs
    image_folder(tmp_path / "val", per_class=4)
    models = imagenet_models(0, 1)
    models["in1"].card["evaluation_transform"] = {"size": 64, "resize": 80,
                                                  "interpolation": "bicubic", "squash": False}
    load = models.__getitem__
    plan = jobs.stitch_matrix(load, [("in0", "in1"), ("in1", "in0")], "direct", ["layer2.0"],
                              folder=str(tmp_path / "val"))
    for job in plan.jobs():
        assert jobs.rebuild(json.loads(json.dumps(job.spec)), load).key == job.key, job.label
    crop = {s: j.inputs["test"]["folder"]["crop"] for s, j in plan.donors.items()}
    assert crop["in1"] == images.Preprocessing(64, 80, "bicubic").describe() != crop["in0"]
    assert plan.cells[1][0].inputs["test"]["folder"]["crop"] == crop["in1"]


def test_stitching_jobs_of_a_resnet18_and_a_resnet50(tmp_path):
    """The app's jobs of a matrix of different depths: a cell names its end layer in
    its key only where it differs from the front's, and computes the stitch there."""
    from helpers import image_folder, imagenet_models
    from core import archs, jobs, runner
    image_folder(tmp_path / "val", per_class=4)
    models = imagenet_models(0)
    torch.manual_seed(0)
    models["r50"] = Probe(archs.build("imagenet_resnet50"), (0.485, 0.456, 0.406),
                          (0.229, 0.224, 0.225), name="r50", input_size=64)
    load = models.__getitem__
    recipe = {**jobs.FOLDER_STITCH_RECIPE, "robust_images": 2, "batch_size": 4,
              "attack": attacks.PGD("linf", 4 / 255, 1 / 255, 1).to_dict()}
    plan = jobs.stitch_matrix(load, [("in0", "r50"), ("in0", "in0")], "direct", None, recipe,
                              str(tmp_path / "val"))
    assert plan.grid.layers == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    cross, own = plan.cells[0][2], plan.cells[1][2]
    assert (cross.inputs["layer"], cross.inputs["end_layer"]) == ("layer2.1", "layer2.3")
    assert own.inputs["layer"] == "layer2.1" and "end_layer" not in own.inputs
    value = runner.compute(cross)
    assert (value["layer"], value["end_layer"]) == ("layer2.1", "layer2.3")
    assert 0 <= value["clean_accuracy"] <= 1 and value["n_train"] == 4
    assert jobs.rebuild(json.loads(json.dumps(cross.spec)), load).key == cross.key


def test_models_of_different_depths_stitch_at_their_stage_boundaries(a):
    """ResNet-18 and ResNet-50 (or WRN-28 and WRN-70) have no block names in common
    that mean the same place: a matrix of both lines up their stage boundaries."""
    deep = tiny_probe(width=4, seed=3, name="deep", arch="resnet50", input_size=16)
    ends_18 = ["relu", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    ends_50 = ["relu", "layer1.2", "layer2.3", "layer3.5", "layer4.2"]
    grid = stitching.Grid.of([(a, deep), (deep, a), (a, a), (deep, deep)])
    assert grid.layers == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert grid.column_labels()[0] == "stem"
    assert grid.points == [list(zip(ends_18, ends_50)), list(zip(ends_50, ends_18)),
                           list(zip(ends_18, ends_18)), list(zip(ends_50, ends_50))]
    result = stitching.matrix([(a, deep), (deep, deep)], layers=None, method="direct",
                              train_loader=colour_task(48, 0), test_loader=colour_task(24, 1),
                              batch_size=16)
    assert result.pairs[0]["points"] == [list(p) for p in zip(ends_18, ends_50)]
    assert "points" not in result.pairs[1]
    # a model stitched to itself at its own boundaries fits its own activation exactly
    assert (result.dm_error[1] < 1e-3).all() and (result.dm_error[0, 1:] > 0.05).all()
    assert np.isfinite(result.clean).all()
    # families whose stages cannot be lined up (4 stages, a WRN's 3 groups) are refused,
    # and so are models whose stages never agree in spatial size: in one sentence
    from core import archs
    wrn = Probe(archs.build("wrn", depth=16, widen_factor=1), data.MEAN, data.STD, name="wrn")
    with pytest.raises(stitching.StitchingError, match="different numbers of stages"):
        stitching.Grid.of([(a, wrn)])
    big = Probe(archs.build("imagenet_resnet18", num_classes=10), data.MEAN, data.STD,
                name="big", input_size=32)
    with pytest.raises(stitching.StitchingError, match="no stitch point of one spatial size"):
        stitching.Grid.of([(a, big)])


def test_wide_resnets_of_two_codebases_line_up_stage_by_stage():
    """RobustBench's WRN-28-10 (block1.layer.N) and its DeepMind WRN-70-16
    (layer.0.block.N) share no names: the stem, the ends of the three groups and the
    final activation are matched."""
    from core import archs
    wrn = Probe(archs.build("wrn", depth=28, widen_factor=1), data.MEAN, data.STD, name="wrn")
    dm = Probe(archs.build("dm_wrn", depth=70, width=1, activation="swish"), data.MEAN,
               data.STD, name="dm")
    grid = stitching.Grid.of([(wrn, dm), (dm, wrn)])
    assert grid.layers == ["conv1", "block1", "block2", "block3", "relu"]
    assert grid.points[0] == [("conv1", "init_conv"), ("block1.layer.3", "layer.0.block.10"),
                              ("block2.layer.3", "layer.1.block.10"),
                              ("block3.layer.3", "layer.2.block.10"), ("relu", "relu")]
    x = random_images(2, size=32)
    with torch.no_grad():
        for row in grid.points:
            for layer, end_layer in row:
                front, end = (wrn, dm) if row is grid.points[0] else (dm, wrn)
                out = stitching.StitchedModel(front, end, layer, end_layer)(x)
                assert out.shape == (2, 10) and torch.isfinite(out).all()
