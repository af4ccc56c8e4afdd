"""The stitching paper's other data sets, read from made-up files in torchvision's
layouts; models trained on them; cross-task stitching between two of them."""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from core import stitching
from core.__main__ import main
from core.data import datasets
from core.errors import DataNotFoundError

TRAIN, TEST = 40, 24


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def _pictures(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Each class a brightness plus noise: a task a tiny model can learn."""
    noise = np.random.default_rng(seed).normal(0, 20, (len(labels), *shape))
    return (labels.reshape(-1, *[1] * len(shape)) * 22 + 20 + noise).clip(0, 255).astype(np.uint8)


def write_svhn(root: Path) -> None:
    from scipy.io import savemat
    root.mkdir(parents=True)
    for split, n in (("train", TRAIN), ("test", TEST)):
        labels = _labels(n, 10, n)
        x = _pictures(labels, (3, 32, 32), n)                   # (N, 3, 32, 32)
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0),   # (32, 32, 3, N)
                                              "y": np.where(labels == 0, 10, labels)[:, None]})


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", TRAIN), ("test", TEST)):
        labels = _labels(n, 100, n)
        x = _pictures(labels % 10, (3, 32, 32), n).reshape(n, -1)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": x, "fine_labels": labels.tolist(),
                         "coarse_labels": (labels // 5).tolist()}, f, protocol=2)


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str, zipped: bool = False) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", TRAIN), ("t10k", TEST)):
        labels = _labels(n, 10, n + 1)
        for part, array in (("images", _pictures(labels, (28, 28), n)), ("labels", labels)):
            name = raw / f"{prefix}-{part}-idx{3 if part == 'images' else 1}-ubyte"
            if zipped:
                with gzip.open(str(name) + ".gz", "wb") as f:
                    f.write(_idx(array))
            else:
                name.write_bytes(_idx(array))


WRITERS = {"svhn": write_svhn, "cifar100": write_cifar100,
           "mnist": lambda r: write_mnist(r, "MNIST"),
           "fashion-mnist": lambda r: write_mnist(r, "FashionMNIST", zipped=True)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("name", list(datasets.DATA_SETS))
def test_each_data_set_reads_from_its_torchvision_layout(cache, name, capsys):
    WRITERS[name](cache / "made-up" / name)
    assert main(["data", "--set", name, "--from", str(cache / "made-up" / name)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found == {"train": {"images": TRAIN, "source": f"{name}:train"},
                     "test": {"images": TEST, "source": f"{name}:test"}}
    test = datasets.load(name, "test")
    channels = datasets.DATA_SETS[name].channels
    assert test.images.shape == (TEST, channels, 32, 32) and test.images.dtype == torch.uint8
    assert int(test.labels.max()) < datasets.classes(name) and int(test.labels.min()) >= 0
    if name == "svhn":    # SVHN's 10 stands for the digit 0
        assert (test.labels == torch.from_numpy(_labels(TEST, 10, TEST))).all()
    if channels == 1:     # 28 px resized to 32: a class's brightness survives the resizing
        bright = test.images.float().mean((1, 2, 3))
        assert np.corrcoef(bright.numpy(), test.labels.numpy())[0, 1] > 0.9
    ident = datasets.identity(name, "test")
    assert ident["data_set"] == name and len(ident["files"]) == 16
    # decoded once: a second read comes from the cached tensors
    assert torch.equal(datasets.load(name, "test").images, test.images)


def test_a_missing_data_set_says_how_to_get_it(cache):
    with pytest.raises(DataNotFoundError, match=r"python -m core data --set svhn --download"):
        datasets.load("svhn", "train")
    with pytest.raises(DataNotFoundError, match="no data set 'imagenet'"):
        datasets.load("imagenet")


def test_a_cifar100_file_that_would_run_code_is_refused(cache):
    class Payload:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(cache / "ran"),))
    folder = datasets.folder("cifar100") / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / split).write_bytes(pickle.dumps({"data": Payload()}))
    with pytest.raises(DataNotFoundError, match="is not data: refused"):
        datasets.load("cifar100", "test")
    assert not (cache / "ran").exists()


def test_downloads_go_through_torchvision_and_fail_offline_in_a_sentence(cache, offline):
    with pytest.raises(DataNotFoundError, match="Could not download MNIST.*--from FOLDER"):
        datasets.fetch("mnist")


def test_a_zoo_model_trains_on_another_data_set(cache):
    from core.training import train
    write_svhn(datasets.folder("svhn"))
    cfg = train.TrainConfig("tiny-svhn", width=4, epochs=1, batch_size=20, eval_images=TEST,
                            amp=False, device="cpu", data_set="svhn")
    probe = train.train(cfg, log=lambda s: None)
    assert probe.num_classes == 10
    assert train.card_fields(cfg)["dataset"] == "svhn" and "SVHN" in train.card_fields(cfg)["label"]
    assert cfg.recipe()["data_set"] == "svhn"
    assert "data_set" not in train.TrainConfig("cifar").recipe()   # old runs resume


def test_cross_task_stitching_on_two_made_up_data_sets(world, capsys):
    """Front and end models, the stitcher trained on MNIST-like digits (one channel: the
    three-channel models see them in all three), scored on both MNIST and SVHN."""
    write_mnist(datasets.folder("mnist"), "MNIST")
    write_svhn(datasets.folder("svhn"))
    args = ["stitch", "--front", "resnet18-linf-8", "--end", "resnet18-standard-s0",
            "--layers", "layer2.0", "--train-set", "mnist", "--test-set", "mnist",
            "--test-set", "svhn", "--train-images", "32", "--device", "cpu"]
    assert main([*args, "--method", "direct"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train_set"] == "mnist" and out["test_sets"] == ["mnist", "svhn"]
    cell = out["pairs"][0]["cells"]["direct/layer2.0"]
    assert set(cell["tests"]) == {"mnist", "svhn"}
    for scored in cell["tests"].values():
        assert scored["n"] == TEST and 0 <= scored["clean_accuracy"] <= 1
        assert 0 <= scored["robust_accuracy"] <= scored["clean_accuracy"] + 1e-9
    assert cell["recipe"]["train_images"] == 32 and 0 <= cell["test_cka"] <= 1
    # an adversarial stitcher across tasks: a few dozen images, one step, one epoch
    assert main([*args, "--method", "task", "--adversarial", "trades"]) == 0
    task = json.loads(capsys.readouterr().out)["pairs"][0]["cells"]["task/layer2.0"]
    assert task["recipe"]["stitcher_attack"].startswith("TRADES beta 1")
    # a set with more classes than the end model's outputs: one sentence
    from core import zoo
    write_cifar100(datasets.folder("cifar100"))
    with pytest.raises(stitching.IncompatibleModelError, match="100 classes"):
        stitching.cross_task_job(zoo.loader("cpu"), "resnet18-linf-8", "resnet18-standard-s0",
                                 "layer2.0", train_set="cifar100", test_sets=["cifar100"])
