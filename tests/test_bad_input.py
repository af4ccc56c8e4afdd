"""Bad input to core's public functions ends in one clear exception (a core error, or
ValueError / TypeError naming the argument), raised before any long computation, and
never in a silently wrong answer."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_probe
from core import attacks, cka, data, images, inversion, results, stitching
from core.errors import (BadImageError, ComponentError, DataNotFoundError, DeviceError,
                         UnlabelledDataError)
from core.probe import pick_device

X = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
LABELLED = data.ImageTensorDataset((X * 255).to(torch.uint8), torch.arange(8) % 10, "random")


@pytest.fixture(scope="module")
def model():
    return tiny_probe(width=4)


def test_unlabelled_images_are_refused_where_labels_are_needed(model):
    # a tensor of images reads with the label -1: accuracy 0 and attacks on class -1
    # were the answers before
    with pytest.raises(UnlabelledDataError, match="needs each image's label"):
        attacks.accuracy(model, X)
    with pytest.raises(UnlabelledDataError):
        stitching.evaluate(model, X)
    with pytest.raises(UnlabelledDataError):
        cka.cka_matrix(model, model, X, ["layer1.0"], ["layer1.0"], batch_size=8,
                       attack=attacks.PGD("linf", 8 / 255, 2 / 255, 1))
    with pytest.raises(UnlabelledDataError):
        stitching.fit(model, model, "layer1.0", X, "task", epochs=1)
    assert cka.cka_matrix(model, model, X, ["layer1.0"], ["layer1.0"], batch_size=8).matrix[0, 0] \
        == pytest.approx(1.0)   # benign CKA needs no labels


def test_images_of_another_size_than_the_models_are_refused(model):
    # a ResNet pools any size away: ImageNet-sized images gave a CIFAR model's
    # accuracy, CKA and stitching as if they were its own
    large = data.ImageTensorDataset(torch.zeros(8, 3, 64, 64, dtype=torch.uint8),
                                    torch.arange(8) % 10, "64 px")
    pgd = attacks.PGD("linf", 8 / 255, 2 / 255, 1)
    for name, call in {
            "accuracy": lambda: attacks.accuracy(model, large),
            "examples": lambda: attacks.examples(model, large, pgd, 8),
            "cka": lambda: cka.cka_matrix(model, model, large, ["relu"], ["relu"], batch_size=8),
            "representations": lambda: inversion.representations(model, large),
            "direct stitching": lambda: stitching.fit(model, model, "layer1.0", large, "direct"),
            "task stitching": lambda: stitching.fit(model, model, "layer1.0", large, "task"),
    }.items():
        with pytest.raises(BadImageError, match="takes 32x32 images, not 64x64"):
            call()
            pytest.fail(name)


def test_impossible_settings_are_refused_when_made(model):
    with pytest.raises(ValueError, match="non-negative"):
        attacks.PGD("linf", -1.0)
    with pytest.raises(ValueError, match="positive"):
        inversion.Settings(eps=-2.0)
    with pytest.raises(ValueError, match="positive"):
        inversion.invert(model, X[:1], steps=2, step_size=-1.0)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        attacks.accuracy(model, LABELLED, batch_size=0)
    with pytest.raises(ValueError, match="k must be positive"):
        inversion.top_activating(torch.rand(5, 3), 1, k=-1)
    with pytest.raises(ComponentError, match="at least one component"):
        inversion.visualize_feature(model, [], steps=1)


def test_cka_of_no_examples_or_of_nan_says_so():
    with pytest.raises(ValueError, match="at least 2"):
        cka.linear_cka(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        cka.linear_cka(torch.full((4, 3), float("nan")), torch.rand(4, 3))


def test_one_layer_name_is_one_layer(model):
    # a string was read letter by letter: "no layer 'l'"
    out = model.features(X[:2], "layer1.0")
    assert list(out) == ["layer1.0"]
    res = cka.cka_matrix(model, model, X, "layer1.0", "avgpool", batch_size=8)
    assert res.layers_a == ["layer1.0"] and res.layers_b == ["avgpool"]


def test_pixels_in_the_wrong_form_are_refused(model):
    with pytest.raises(BadImageError, match=r"float images in \[0, 1\]"):
        model((X * 255).to(torch.uint8))
    with pytest.raises(BadImageError, match="0..255"):
        images.to_uint8(np.full((4, 4, 3), 300))


def test_a_device_this_machine_lacks_is_named(monkeypatch):
    with pytest.raises(DeviceError, match="no device 'gpu'"):
        pick_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        pick_device("cuda")


def test_a_stitching_matrix_refuses_an_unknown_option_before_any_work(model, monkeypatch):
    scored = []
    monkeypatch.setattr(stitching, "evaluate", lambda *a, **k: scored.append(1))
    with pytest.raises(TypeError, match="colour"):
        stitching.matrix(model, model, ["layer1.0"], method="direct", train_loader=LABELLED,
                         test_loader=LABELLED, colour=1)
    assert not scored


def test_a_folder_with_a_broken_or_no_image_names_it(tmp_path):
    for split_root, what in ((tmp_path / "broken", "broken"), (tmp_path / "empty", "empty")):
        for cls in data.CLASSES:
            (split_root / "test" / cls).mkdir(parents=True)
        if what == "broken":
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(split_root / "test/cat/0.png")
            (split_root / "test/dog/1.jpg").write_text("not an image")
    with pytest.raises(BadImageError, match=r"dog/1\.jpg is not a readable image"):
        data.cifar10("test", tmp_path / "broken")
    with pytest.raises(DataNotFoundError, match="holds no images"):
        data.cifar10("test", tmp_path / "empty")
    folder = data.ImageFolder(tmp_path / "broken" / "test", 32)
    assert folder[0][0].shape == (3, 32, 32)
    with pytest.raises(BadImageError, match=r"1\.jpg"):
        folder[1]


def test_a_damaged_stored_row_is_computed_again(tmp_path):
    store = results.ResultStore(tmp_path / "results.sqlite")
    store.put("k", {"a": 1}, {"x": torch.arange(3)})
    assert store.get("k", {"a": 1})["x"].tolist() == [0, 1, 2]
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        conn.execute("UPDATE results SET arrays = ?", (b"\x00damaged",))
    assert store.get("k", {"a": 1}) is None     # read as missing, not a traceback
    assert not store.has("k", {"a": 1})         # so a sweep computes it again
    store.put("k", {"a": 1}, {"x": torch.arange(2)})
    assert store.get("k", {"a": 1})["x"].tolist() == [0, 1]
