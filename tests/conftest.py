"""Shared fixtures: an isolated cache folder and tiny random-init models."""
from __future__ import annotations

import os

# busy-waiting OpenMP threads make small ops 40-100x slower on a loaded 2-core box
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Every test session writes its results store and decoded tensors to a fresh
    folder; the real data set is still found in ~/.cache/robustlens/data."""
    old = os.environ.get("ROBUSTLENS_CACHE")
    os.environ["ROBUSTLENS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["ROBUSTLENS_CACHE"])
    if old is None:
        os.environ.pop("ROBUSTLENS_CACHE", None)
    else:
        os.environ["ROBUSTLENS_CACHE"] = old


@pytest.fixture
def offline(monkeypatch):
    """This test runs as on a machine without the network (loopback still works)."""
    import offline as network
    for (owner, name), replacement in network.blocked_functions().items():
        monkeypatch.setattr(owner, name, replacement)


SHARED_TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


_EXTRACTED: list[str] = []


def _use_shared_data() -> None:
    """Where the user cache holds no CIFAR-10 but the checkout sits next to the team's
    shared/data tarball (the dev and CI machines), the data tests use it: extracted
    once per run into a temporary folder named by ROBUSTLENS_DATA (inherited by the app
    servers the browser tests start). Runs when this file is imported, so that the
    `needs_data` marks below, evaluated at import, already see it."""
    from core import data
    if os.environ.get("ROBUSTLENS_DATA") or data.has_cifar10("test") or not SHARED_TARBALL.is_file():
        return
    dest = Path(tempfile.mkdtemp(prefix="rl-cifar10-"))
    data.extract_archive(SHARED_TARBALL, dest)
    os.environ["ROBUSTLENS_DATA"] = str(dest)
    _EXTRACTED.append(str(dest))


_use_shared_data()


def pytest_unconfigure(config):
    for d in _EXTRACTED:
        shutil.rmtree(d, ignore_errors=True)


def tiny_probe(width: int = 8, seed: int = 0, name: str = "tiny", arch: str = "resnet18",
               input_size: int = 32):
    from core import archs, data
    from core.probe import Probe
    torch.manual_seed(seed)
    model = archs.build(arch, width=width)
    probe = Probe(model, data.MEAN, data.STD, name=name,
                  card={"arch": arch, "width": width, "num_classes": 10}, input_size=input_size)
    return probe.eval()


@pytest.fixture
def probe():
    return tiny_probe()


def shipped(*names: str):
    """Skip unless these shipped models are in pretrained/."""
    from core import zoo
    missing = [n for n in names if n not in zoo.names()]
    return pytest.mark.skipif(bool(missing), reason=f"shipped models absent: {missing}")


def asks_for_data(texts: list[str]) -> list[str]:
    """The messages among `texts` that ask for the CIFAR-10 test set, except the
    top-activating images' (data-set images: only their indices ship)."""
    return [t for t in texts if "needs the CIFAR-10 test set" in t
            and not t.startswith("Showing the top-activating test images")]


def has_test_data() -> bool:
    from core import data
    return data.has_cifar10("test")


needs_data = pytest.mark.skipif(not has_test_data(), reason="CIFAR-10 test set not present "
                                "(python -m core data --from/--download)")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A complete small world for page tests: the zoo's five models at width 4
    (cards as shipped) and a small CIFAR-like data set (12 + 8 images a class)."""
    import numpy as np
    from PIL import Image

    from core import data, train, zoo
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 8)):
        for c, cls in enumerate(data.CLASSES):
            d = root / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.normal(25 * c, 30, (32, 32, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}.png")
    for k, name in enumerate(train.ZOO):  # the shipped zoo's names and cards, tiny weights
        probe = tiny_probe(width=4, seed=k, name=name)
        probe.card.update(train.card_fields(train.ZOO[name]))
        probe.card["width"] = 4
        zoo.export(probe, name, directory=root / "zoo")
    return {"zoo": root / "zoo", "data": root / "data"}


@pytest.fixture
def world(tiny_world, monkeypatch, tmp_path):
    """Point the app at the tiny world, with a fresh results store."""
    from core import zoo
    monkeypatch.setattr(zoo, "PRETRAINED", tiny_world["zoo"])
    monkeypatch.setenv("ROBUSTLENS_DATA", str(tiny_world["data"]))
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path / "cache"))
    return tiny_world


@pytest.fixture(scope="session")
def device():
    """Where the tests compute: the project's own choice (CUDA where there is one)."""
    from core.probe import pick_device
    return pick_device()


def imagenet_models(*seeds: int, size: int = 64) -> dict:
    """ImageNet-class models ("in0", "in1", ...: torchvision's ResNet-18 layout, 1,000
    outputs, random weights, ImageNet statistics) at `size` px, small to stay quick."""
    from core import archs
    from core.probe import Probe
    models = {}
    for seed in seeds:
        torch.manual_seed(seed)
        models[f"in{seed}"] = Probe(archs.build("imagenet_resnet18"), (0.485, 0.456, 0.406),
                                    (0.229, 0.224, 0.225), name=f"in{seed}", input_size=size)
    return models


def image_folder(root: Path, classes: tuple[str, ...] = ("n01440764", "n15075141"),
                 per_class: int = 4,
                 seed: int = 0) -> Path:
    """An ImageFolder tree (ROOT/CLASS/IMAGE.png) of made-up photos: random pixels at
    odd sizes, never data-set images."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(80, 300)), int(rng.integers(80, 300))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / cls / f"img{i}.png")
    return root
