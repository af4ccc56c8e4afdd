"""Views: settings declared once, validated links, canonical CKA sides, stitching rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core import cka, inversion, jobs, stitching, views


def test_every_setting_is_declared_once_with_a_valid_default():
    seen = set()
    for page in views.PAGES:
        for key, s in views.page_settings(page).items():
            assert key == s.key
            if s.options is not None:
                assert s.default in s.options, key
            if page and s not in views.COMMON:
                assert key not in seen, f"{key} declared twice"
                seen.add(key)


def test_url_values_are_parsed_and_bad_ones_refused():
    cka = views.page_settings("cka")
    assert cka["cka_n"].parse("2000") == 2000
    assert cka["cka_cell"].parse("3,4") == [3, 4]
    for bad in ("7", "abc"):
        with pytest.raises(ValueError):
            cka["cka_n"].parse(bad)
    with pytest.raises(ValueError):
        cka["cka_cell"].parse("1,-2")
    assert views.settings("inversion", {"inv_steps": "40"})["inv_steps"] == 40
    with pytest.raises(ValueError, match="no setting"):
        views.settings("cka", {"inv_steps": "40"})


def test_inversion_steps_follow_the_optimiser_until_set():
    from core import inversion
    s = views.settings("inversion", {"inv_method": "normgrad"})
    assert inversion.inversion_steps(s) == inversion.DEFAULTS["invert"]["normgrad"][0]
    assert inversion.inversion_steps({**s, "inv_steps": 40}) == 40


def test_b_vs_a_is_a_vs_b_transposed(world):
    from core import runner, zoo
    load = lambda s: zoo.load(s, device="cpu")  # noqa: E731
    x, y = "resnet18-linf-8", "resnet18-standard-s0"
    ab, t_ab = cka.cka_request(load, x, y, "blocks", n=1000)
    ba, t_ba = cka.cka_request(load, y, x, "blocks", n=1000)
    assert ab.inputs == ba.inputs and t_ab != t_ba           # one job, two views of it
    value = runner.compute(ab)
    seen = cka.transposed_cka(value)
    np.testing.assert_array_equal(seen["matrix"], np.asarray(value["matrix"]).T)
    assert seen["layers_a"] == value["layers_b"] and seen["model_a"] == value["model_b"]
    # with adversarial inputs on one side, the sides swap their inputs and target too
    j1, _ = cka.cka_request(load, x, y, "blocks", "linf", "benign", "a", n=1000)
    j2, _ = cka.cka_request(load, y, x, "blocks", "benign", "linf", "b", n=1000)
    assert j1.inputs == j2.inputs


def test_stitching_rows_follow_a_chosen_robust_model():
    robust = ["resnet18-l2-0.5", "resnet18-l2-1.0", "resnet18-linf-8"]
    standard = ["resnet18-standard-s0", "resnet18-standard-s1"]
    s = views.settings("stitching", {})
    default = stitching.stitch_rows(s, robust, standard, chosen_a=False)
    assert default[0] == ("resnet18-linf-8", "resnet18-standard-s0")
    assert default[3] == ("resnet18-linf-8", "resnet18-l2-1.0")
    s = views.settings("stitching", {"a": "resnet18-l2-0.5"})
    rows = stitching.stitch_rows(s, robust, standard, chosen_a=True)
    assert rows[0] == ("resnet18-l2-0.5", "resnet18-standard-s0")
    assert rows[1] == ("resnet18-standard-s0", "resnet18-l2-0.5")
    assert rows[3] == ("resnet18-linf-8", "resnet18-l2-1.0")      # the reference pair
    s = views.settings("stitching", {"a": "resnet18-l2-0.5", "st_r": "resnet18-l2-1.0",
                                     "st_r2": "resnet18-l2-0.5"})
    rows = stitching.stitch_rows(s, robust, standard, chosen_a=True)
    assert rows[0][0] == "resnet18-l2-1.0" and rows[3] == ("resnet18-l2-1.0", "resnet18-l2-0.5")


def test_deck_values_are_checked(tmp_path):
    (tmp_path / "d.yaml").write_text("views: [{page: cka, params: {cka_n: 7}}]")
    with pytest.raises(ValueError, match="cka_n must be one of"):
        views.load_deck(tmp_path / "d.yaml")


def test_a_feature_index_goes_only_to_models_that_have_it():
    """Features are numbered in model A's representation; a narrower B is left out."""
    from helpers import tiny_probe
    models = {"wide": tiny_probe(width=16, name="wide"), "narrow": tiny_probe(width=4, name="narrow")}
    s = {"a": "wide", "b": "narrow"}
    assert models["wide"].representation_size == 128 and models["narrow"].representation_size == 32
    assert inversion.with_component(models.__getitem__, s, 100) == ["wide"]
    assert inversion.with_component(models.__getitem__, s, 5) == ["wide", "narrow"]


def passes(job: jobs.Job) -> dict:
    """What a job's kind says it costs: images through each model's forward pass, and
    through its forward and backward pass."""
    return jobs.kinds()[job.kind].cost(job).passes


def test_stitching_and_accuracy_passes_count_each_model(world):
    """What a stitching button's time estimate multiplies: forward passes (training's
    start, the clean test) and forward-backward ones (the attack, training), half of a
    stitched pass per donor."""
    from core import attacks, zoo
    load = lambda s: zoo.load(s, device="cpu")  # noqa: E731
    recipe = {**stitching.STITCH_RECIPE, "train_images": 40, "robust_images": 8, "epochs": 2,
              "init_batches": 1, "batch_size": 16, "attack": attacks.PGD("linf", 8 / 255, 2 / 255, 5)}
    r, s = "resnet18-linf-8", "resnet18-standard-s0"
    acc = stitching.accuracy_job(load, s, recipe)
    test = acc.inputs["test"]["n"]
    # the clean test, the attack's last forward; a forward and backward a step
    assert passes(acc) == {s: (test + 8, 8 * 5)}
    task = stitching.stitch_cell_job(load, r, s, "layer2", "task", recipe)
    # plus the least-squares start, the stitched representation check, 2 epochs of 40
    # (the front trains without gradients)
    assert passes(task) == {r: ((16 + test + 8 + 8 + 2 * 40) / 2, 8 * 5 / 2),
                                        s: ((16 + test + 8 + 8) / 2, (8 * 5 + 2 * 40) / 2)}
    direct = stitching.stitch_cell_job(load, r, r, "layer2", "direct", recipe)
    assert passes(direct) == {r: (40 + test + 8 + 8, 8 * 5)}
    assert passes(inversion.inversion_job(load, r, torch.rand(3, 32, 32), steps=3)) == {}


def test_cka_passes_count_both_models_and_the_attacks(world, tmp_path):
    """A CKA button's estimate: n images through each model; on CIFAR-10 the attack is
    its own (needed) job, on a folder it runs inside CKA against the chosen model."""
    from helpers import image_folder, imagenet_models
    from core import zoo
    load = lambda s: zoo.load(s, device="cpu")  # noqa: E731
    r, s = "resnet18-linf-8", "resnet18-standard-s0"
    job = cka.cka_job(load, r, s, inputs_a="linf", n=100)
    assert passes(job) == {r: (100, 0), s: (100, 0)}
    (need,) = job.needs.values()
    steps = need.inputs["attack"]["steps"]
    assert passes(need) == {r: (100, 100 * steps)}
    models = imagenet_models(0, 1)
    folder = str(image_folder(tmp_path / "val", per_class=3))
    job = cka.cka_job(models.__getitem__, "in0", "in1", inputs_b="linf", adv_against="a",
                       n=100, folder=folder)
    assert not job.needs and job.inputs["images"]["n"] == 6
    assert passes(job) == {"in0": (6, 6 * steps), "in1": (6, 0)}
    quality = inversion.quality_job(load, r, steps=4)
    assert jobs.kinds()[quality.kind].cost(quality).steps == 4 * len(quality.inputs["images"])
