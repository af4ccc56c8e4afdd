"""Shared fixtures: an isolated cache folder and tiny random-init models."""
from __future__ import annotations

import os
import sys
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


def tiny_probe(width: int = 8, seed: int = 0, name: str = "tiny", arch: str = "resnet18"):
    from core import archs, data
    from core.probe import Probe
    torch.manual_seed(seed)
    model = archs.build(arch, width=width)
    probe = Probe(model, data.MEAN, data.STD, name=name,
                  card={"arch": arch, "width": width, "num_classes": 10})
    return probe.eval()


@pytest.fixture
def probe():
    return tiny_probe()


def shipped(*names: str):
    """Skip unless these shipped models are in pretrained/."""
    from core import zoo
    missing = [n for n in names if n not in zoo.names()]
    return pytest.mark.skipif(bool(missing), reason=f"shipped models absent: {missing}")


def has_test_data() -> bool:
    from core import data
    return data.has_cifar10("test")


needs_data = pytest.mark.skipif(not has_test_data(), reason="CIFAR-10 test set not present "
                                "(python -m core data --from/--download)")
