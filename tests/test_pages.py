"""Page flows under AppTest on a tiny world (four width-4 models, 180 images):
each page computes what a click asks for, shows it, and stores it for the next visit."""
from __future__ import annotations

import re

from helpers import run_app


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + \
            [m.value for m in at.metric] + [e.value for e in at.error] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def click(at, label_start: str):
    for b in at.button:
        if b.label.startswith(label_start):
            b.click().run()
            return at
    raise AssertionError(f"no button {label_start!r}; have {[b.label for b in at.button]}")


def test_sidebar_lists_the_zoo_with_cards(world):
    at = run_app()
    assert not at.exception
    a, b = at.sidebar.selectbox[0], at.sidebar.selectbox[1]
    assert a.value == "resnet18-l2-1.0" and b.value == "resnet18-standard-s0"
    assert len(a.options) == 5


def test_cka_compute_then_from_store(world):
    at = run_app("pages/cka.py", {"cka_n": "1000"})
    assert not at.exception
    click(at, "Compute")
    assert not at.exception, [e.value for e in at.exception]
    assert "Layer pair" in texts(at) and any(m.label == "CKA" for m in at.metric)
    # a new session finds the result in the store: no compute button
    again = run_app("pages/cka.py", {"cka_n": "1000"})
    assert not any(b.label.startswith("Compute") for b in again.button)
    assert any(m.label == "CKA" for m in again.metric)


def test_cka_paper_view_and_bad_url_values(world):
    at = run_app("pages/cka.py", {"cka_view": "Paper view", "cka_n": "1000",
                                  "cka_layers": "nonsense", "cka_in_a": "l7"})
    assert not at.exception
    # unknown URL values fall back to defaults instead of failing
    assert at.selectbox(key="cka_layers").value == "blocks"
    assert at.selectbox(key="cka_in_a").value == "benign"
    while any(b.label.startswith("Compute") for b in at.button):
        click(at, "Compute")
        assert not at.exception, [e.value for e in at.exception]
    assert "Mean off-diagonal CKA, robust" in [m.label for m in at.metric]


def test_cka_paper_view_takes_its_roles_from_the_models(world):
    # model A standard, B robust: the robust panel is B's, whatever the order
    swapped = run_app("pages/cka.py", {"cka_view": "Paper view", "cka_n": "1000",
                                       "a": "resnet18-standard-s0", "b": "resnet18-linf-8"})
    assert not swapped.exception
    assert "**Robust:** Linf 8/255 · **Standard:** standard (seed 0)" in texts(swapped)
    # two standard models have no roles: the page says so and names the models
    same = run_app("pages/cka.py", {"cka_view": "Paper view", "cka_n": "1000",
                                    "a": "resnet18-standard-s0", "b": "resnet18-standard-s1"})
    assert not same.exception
    assert "are both standard" in texts(same) and "**Robust:**" not in texts(same)


def test_cka_on_the_unforeseen_attacks_inputs(world):
    """Snow examples on one side, JPEG on the other: computed, named, no traceback."""
    at = run_app("pages/cka.py", {"cka_n": "1000", "cka_in_a": "snow", "cka_in_b": "jpeg"})
    assert not at.exception, [e.value for e in at.exception]
    # a few samples under each attack, against the model each side's examples are made for
    assert "What the attacked inputs look like" in [e.label for e in at.expander]
    while any(b.label.startswith("Show ") for b in at.button):   # opening computes nothing
        click(at, "Show ")
        assert not at.exception, [e.value for e in at.exception]
    assert "Snow (unforeseen) on 8 samples against resnet18-l2-1.0" in texts(at)
    assert "JPEG (unforeseen) on 8 samples against resnet18-standard-s0" in texts(at)
    while any(b.label.startswith("Compute") for b in at.button):
        click(at, "Compute")
        assert not at.exception, [e.value for e in at.exception]
    assert any(m.label == "CKA" for m in at.metric)


def test_cka_page_under_another_measure_with_each_cell_calibrated(world):
    """A measure of the registry from the selector: its matrix, its name on the metric, the
    clicked cell's permutation null and interval, two standard seeds' value beside it."""
    baseline = run_app("pages/cka.py", {"cka_n": "1000", "cka_measure": "rsa_spearman",
                                        "a": "resnet18-standard-s0", "b": "resnet18-standard-s1"})
    click(baseline, "Compute")
    at = run_app("pages/cka.py", {"cka_n": "1000", "cka_measure": "rsa_spearman",
                                  "cka_cell": "[3, 2]"})
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="cka_kernel").disabled   # a measure of the registry takes no kernel
    click(at, "Compute")
    assert not at.exception, [e.value for e in at.exception]
    assert [m.label for m in at.metric] == ["RSA (Spearman)"]
    click(at, "Calibrate this cell")   # a cell opened from a link: calibrated on request
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at)
    assert "Calibrated on the first 80 images as RSA (Spearman)" in shown
    assert "95% interval" in shown and "p = " in shown
    assert re.search(r"differ only in their seed .*: -?\d\.\d{3} \(the natural baseline\)", shown)
    assert "invariant to isotropic scaling, permutation" in shown
    # the paper view under a distance: its panels and metrics name it
    paper = run_app("pages/cka.py", {"cka_n": "1000", "cka_measure": "procrustes",
                                     "cka_view": "Paper view"})
    while any(b.label.startswith("Compute") for b in paper.button):
        click(paper, "Compute")
        assert not paper.exception, [e.value for e in paper.exception]
    assert "Mean off-diagonal Procrustes distance, robust" in [m.label for m in paper.metric]


def test_stitching_robust_accuracy_under_an_unforeseen_attack(world):
    at = run_app("pages/stitching.py", {"st_attack": "gabor", "st_train": "1000",
                                        "st_metric": "robust"})
    assert not at.exception, [e.value for e in at.exception]
    assert "robust accuracy under Gabor (10 steps of 0.05, strength 75/255)" in texts(at)
    click(at, "Compute this cell")
    assert not at.exception, [e.value for e in at.exception]
    assert "robust accuracy (Gabor)" in texts(at)
    assert "Stitched, robust" in [m.label for m in at.metric]


def test_stitching_cell_on_demand(world):
    at = run_app("pages/stitching.py", {"st_method": "direct"})
    assert not at.exception
    assert "not computed yet" in texts(at)
    # the button says how long the cell and its donors' accuracy may take here
    assert any(re.fullmatch(r"Compute this cell \(about \d+ (s|min)\)", b.label)
               for b in at.button), [b.label for b in at.button]
    click(at, "Compute this cell")
    assert not at.exception, [e.value for e in at.exception]
    labels = [m.label for m in at.metric]
    assert "Stitched, clean" in labels and "Direct-matching error ‖AW−B‖/‖B‖" in labels


def test_stitching_advanced_recipe_runs_a_low_rank_adversarial_stitcher(world):
    """The advanced recipe from a link: the panel opens, the caption names the recipe, a
    cell trains a rank-4 stitcher on Madry examples and shows its similarity and spectrum."""
    at = run_app("pages/stitching.py", {"st_adv": "madry", "st_alpha": "0.5", "st_rank": "4",
                                        "st_train": "1000", "st_metric": "effective_rank"})
    assert not at.exception, [e.value for e in at.exception]
    assert at.expander[0].label == "Advanced recipe"
    assert "rank-4 stitch from a least-squares start" in texts(at)
    assert "adversarially: Madry: PGD-10 LINF eps 8/255 step 2/255 on 50% of each batch" \
        in texts(at)
    click(at, "Compute this cell")
    assert not at.exception, [e.value for e in at.exception]
    assert {"CKA", "Relative L2", "Effective rank"} <= {m.label for m in at.metric}
    assert "stitcher trained adversarially, Madry" in texts(at) and "rank 4." in texts(at)
    rank = next(m.value for m in at.metric if m.label == "Effective rank")
    assert 1 <= float(rank) <= 4
    # a start that cannot be low rank: one sentence, no traceback
    bad = run_app("pages/stitching.py", {"st_init": "identity", "st_rank": "4"})
    assert not bad.exception
    assert "an identity start has full rank" in " ".join(w.value for w in bad.warning)


def test_inversion_reconstructs_with_both_models(world):
    at = run_app("pages/inversion.py", {"inv_steps": "12"})
    assert not at.exception, [e.value for e in at.exception]
    assert texts(at).count("PSNR") >= 2
    # second visit: the same reconstructions come from the store
    from ui import backend
    assert backend.store().entries("inversion")


def test_inversion_bad_upload_is_a_message(world):
    at = run_app("pages/inversion.py", {"inv_source": "upload", "inv_steps": "12"})
    assert not at.exception


def test_manipulation_feature_browser(world):
    at = run_app("pages/manipulation.py")
    assert not at.exception
    click(at, "Visualise")
    assert not at.exception, [e.value for e in at.exception]
    assert "Feature" in texts(at)


def test_manipulation_tabs_from_the_url(world):
    for tab in ("Feature addition", "Interpolation", "Misclassification"):
        at = run_app("pages/manipulation.py", {"mf_tab": tab})
        assert not at.exception, (tab, [e.value for e in at.exception])
    at = run_app("pages/manipulation.py", {"mf_tab": "Interpolation"})
    click(at, "Interpolate")
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.label == "Frame" for s in at.slider)


def test_gpu_out_of_memory_falls_back_to_the_cpu(world, monkeypatch):
    """A CUDA OOM during a computation: a message, the session moves to the CPU,
    the result is computed there, nothing half-stored."""
    import torch

    from core import cka
    real = cka.cka_matrix
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)
    monkeypatch.setattr(cka, "cka_matrix", flaky)
    at = run_app("pages/cka.py", {"cka_n": "1000"})
    click(at, "Compute")
    assert not at.exception, [e.value for e in at.exception]
    assert any("ran out of memory" in w.value for w in at.warning)
    assert at.session_state["device"] == "cpu"
    if any(b.label.startswith("Compute") for b in at.button):  # the rerun offers it again
        click(at, "Compute")
    assert calls["n"] == 2 and any(m.label == "CKA" for m in at.metric)


def test_stitching_page_on_an_image_folder_of_imagenet_models(world, tmp_path):
    """Model A an ImageNet-class model (a file with a sidecar card: a robust ResNet-50,
    64 px): the rows join the ImageNet models only (a standard ResNet-18), the page asks
    for an image folder in one sentence, the columns are the two depths' stage
    boundaries, and a cell computes on the folder's two parts."""
    import json

    import torch
    import torchvision
    from streamlit.testing.v1 import AppTest

    from helpers import image_folder
    from helpers import ROOT
    specs = []
    for seed, card, make in ((0, {"threat_model": "Linf", "eps": 4 / 255}, torchvision.models.resnet50),
                             (1, {}, torchvision.models.resnet18)):
        torch.manual_seed(seed)
        path = tmp_path / f"imagenet-{seed}.pt"
        torch.save(make().state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps({**card, "input_size": 64}))
        specs.append(str(path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["custom_specs"] = specs
    at.query_params["a"] = specs[0]
    at.query_params["st_method"] = "direct"
    at.query_params["st_cell"] = "0,2"
    at.run()
    at.switch_page("pages/stitching.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("name an image folder" in w.value for w in at.warning), [w.value for w in at.warning]
    # each picker offers 'auto' and the one ImageNet model of its kind, no CIFAR-10 model
    assert [len(at.selectbox(key=k).options) for k in ("st_r", "st_s")] == [2, 2]
    at.text_input(key="st_folder").input(str(image_folder(tmp_path / "val", per_class=6))).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning, [w.value for w in at.warning]
    assert "on 6 training images; clean accuracy on 6 test images" in texts(at)
    assert "val (the first 6 of its fixed shuffle for training, the next 6 for testing)" \
        in texts(at)
    # robust ResNet-50 -> standard ResNet-18 at the end of the second stage
    assert "**robust → standard** at **layer2**" in texts(at)
    assert "imagenet-0 [..layer2.3] → 1x1 conv → imagenet-1 [layer2.1..]" in texts(at)
    click(at, "Compute this cell")
    assert not at.exception, [e.value for e in at.exception]
    assert "Stitched, clean" in [m.label for m in at.metric]
