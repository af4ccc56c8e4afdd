"""Shared fixtures: an isolated cache folder, tiny models and a tiny world, the network
blocked, a Streamlit server and a browser (the helpers they use: helpers.py)."""
from __future__ import annotations

import os

# busy-waiting OpenMP threads make small ops 40-100x slower on a loaded 2-core box
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import shutil
from pathlib import Path

import pytest
import torch

import helpers  # noqa: E402 - puts the checkout on sys.path, finds the shared data set first
from helpers import tiny_probe

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


def pytest_unconfigure(config):
    for d in helpers.EXTRACTED:
        shutil.rmtree(d, ignore_errors=True)



@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny ops: with OpenMP's default active
    waiting, two threads on two cores busy with other work make them up to 50x slower."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture
def probe():
    return tiny_probe()


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


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory):
    """A Streamlit server of this checkout as a fresh machine has it: no data set."""
    srv = helpers.Server(tmp_path_factory.mktemp("offline"), offline=True).start()
    try:
        yield srv
    finally:
        srv.kill()
    srv.assert_no_traceback()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, driven by Playwright."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=helpers.CHROMIUM, args=helpers.ARGS)
        yield b
        b.close()
