"""Training: a tiny model for one epoch on a small subset, resume, determinism."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from core import data, train, zoo


@pytest.fixture
def tree(tmp_path):
    """A small CIFAR-like ImageFolder tree: a learnable colour per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 6)):
        for c, cls in enumerate(data.CLASSES):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.normal(25 * c, 20, (32, 32, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}.png")
    return tmp_path


def cfg(tree, **kw):
    base = train.TrainConfig("tiny-test", width=4, epochs=2, batch_size=32, lr=0.05,
                             data_root=str(tree), eval_images=60, device="cpu")
    return dataclasses.replace(base, **kw)


def test_one_epoch_standard_and_adversarial(tree):
    p = train.train(cfg(tree, epochs=1, name="std"), log=lambda s: None)
    hist = p.card["training"]["history"]
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"])
    assert p.card["training"]["complete"]
    adv = train.train(cfg(tree, epochs=1, name="adv", threat="linf", eps=8 / 255,
                          attack_steps=2, attack_step_size=5 / 255), log=lambda s: None)
    assert adv.card["training"]["threat"] == "linf"


def test_resume_equals_unbroken_run(tree):
    a = train.train(cfg(tree, name="unbroken"), log=lambda s: None)
    first = train.train(cfg(tree, name="chunked"), log=lambda s: None, stop_after_epoch=1)
    assert not first.card["training"]["complete"]
    resumed = train.train(cfg(tree, name="chunked"), log=lambda s: None)
    assert resumed.card["training"]["complete"]
    for (k, va), vb in zip(a.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-5), k


def test_resume_refuses_another_recipe(tree):
    train.train(cfg(tree, name="r", epochs=1), log=lambda s: None)
    with pytest.raises(ValueError, match="another recipe"):
        train.train(cfg(tree, name="r", epochs=1, lr=0.3), log=lambda s: None)


def test_export_of_a_run_writes_a_full_card(tree, tmp_path):
    c = cfg(tree, name="exp", epochs=1, threat="l2", eps=0.5, attack_steps=1,
            attack_step_size=0.5)
    train.train(c, log=lambda s: None)
    probe = train.load_run(c)
    zoo.export(probe, "exp", directory=tmp_path / "pre")
    card = zoo.card("exp", tmp_path / "pre")
    assert card["threat_model"] == "l2" and card["eps"] == 0.5 and card["label"] == "L2 0.5"
    assert card["training"]["epochs"] == 1 and card["training"]["hardware"]
    loaded = zoo.load("exp", directory=tmp_path / "pre", device="cpu")
    assert loaded.card["width"] == 4


def test_augment_keeps_content_and_shapes():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8)
    out = train.augment(imgs, g)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    # every augmented image is a shifted (maybe flipped) copy: its centre survives
    for a, b in zip(imgs, out):
        inner = a[:, 8:24, 8:24]
        found = any(torch.equal(inner, cand[:, y:y + 16, x:x + 16])
                    for cand in (b, b.flip(2)) for y in range(4, 13) for x in range(4, 13))
        assert found


def test_one_cycle_schedule():
    lrs = [train.one_cycle(s, 100, 0.2, 0.15) for s in range(100)]
    assert max(lrs) == pytest.approx(0.2) and lrs[0] < 0.05 and lrs[-1] < 1e-3


def test_zoo_recipes_are_coherent():
    for name, c in train.ZOO.items():
        assert c.name == name and c.arch == "resnet18" and c.width == 32
        assert (c.threat is None) == (c.eps == 0)


def test_epochs_fit_the_budget_and_never_exceed_the_recipe():
    c = train.ZOO["resnet18-linf-8"]
    assert train.epochs_within(c, 0.05, 97, budget_s=100) == int(100 / (1.1 * 0.05 * 97))
    assert train.epochs_within(c, 0.001, 97, budget_s=10_000) == c.epochs
    assert train.epochs_within(c, 10.0, 97, budget_s=1) == 1


@pytest.mark.slow
def test_runs_side_by_side_are_timed_fitted_and_trained(tree):
    """Two zoo recipes on a 64-image subset, each in its own process: timed together,
    epochs fitted to the budget, trained to completion (what a GPU run does)."""
    cfgs = [dataclasses.replace(train.ZOO[n], data_root=str(tree), device="cpu", subset=64)
            for n in ("resnet18-standard-s0", "resnet18-l2-0.5")]
    lines: list[str] = []
    epochs = train.train_parallel(cfgs, budget_s=2.0, log=lines.append, timing_steps=3)
    assert set(epochs) == {c.name for c in cfgs} and all(e >= 1 for e in epochs.values())
    assert any("ms a step with 2 runs side by side" in line for line in lines)
    for c in cfgs:
        run = train.load_run(dataclasses.replace(c, epochs=epochs[c.name]))
        assert run.card["training"]["complete"] and run.card["training"]["epochs"] == epochs[c.name]
