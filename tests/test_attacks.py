"""PGD under L2 and Linf, checked against foolbox (an independent implementation)."""
from __future__ import annotations

import pytest
import torch

from helpers import needs_data, shipped, tiny_probe
from core import attacks, data, zoo

import foolbox as fb

GEN = torch.Generator().manual_seed(0)
X = torch.rand(16, 3, 32, 32, generator=GEN)
Y = torch.randint(0, 10, (16,), generator=GEN)


def _foolbox(model, norm, eps, step, steps, random_start):
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=model.device)
    cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    atk = cls(abs_stepsize=step, steps=steps, random_start=random_start)
    return lambda m, x, y: atk(fmodel, x, y, epsilons=eps)[1]


@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
def test_perturbation_stays_in_the_ball_and_the_image(probe, norm, eps, step):
    xa = attacks.pgd(probe, X, Y, norm, eps, step, steps=7)
    d = (xa - X).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all() and xa.min() >= 0 and xa.max() <= 1
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(probe(xa), Y) > loss(probe(X), Y)


@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
def test_same_iterates_as_foolbox_without_random_start(probe, norm, eps, step):
    ours = attacks.pgd(probe, X, Y, norm, eps, step, steps=10, random_start=False)
    theirs = _foolbox(probe, norm, eps, step, 10, random_start=False)(probe, X, Y)
    close = (ours - theirs).abs() < 1e-4
    assert close.float().mean() > 0.999, f"{(~close).sum()} pixels differ"


def test_targeted_and_best_iterate(probe):
    target = (Y + 1) % 10
    xa = attacks.pgd(probe, X, target, "linf", 16 / 255, 4 / 255, 20, targeted=True)
    with torch.no_grad():
        hit = (probe(xa).argmax(1) == target).float().mean()
        base = (probe(X).argmax(1) == target).float().mean()
    assert hit > base
    best = attacks.pgd(probe, X, Y, "linf", 8 / 255, 2 / 255, 10, best=True,
                       generator=torch.Generator().manual_seed(1))
    last = attacks.pgd(probe, X, Y, "linf", 8 / 255, 2 / 255, 10,
                       generator=torch.Generator().manual_seed(1))
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        lb = ce(probe(best), Y, reduction="none")
        ll = ce(probe(last), Y, reduction="none")
    fooled_best = probe(best).argmax(1) != Y
    assert ((lb >= ll - 1e-4) | fooled_best).all()


def test_pgd_value_and_accuracy(probe):
    atk = attacks.PGD("l2", 0.5, 0.1, 5)
    assert atk.describe() == "PGD-5 L2 eps 0.5 step 0.1"
    assert attacks.PGD.paper("linf").describe() == "PGD-20 LINF eps 8/255 step 2/255"
    batches = [(X[:8], Y[:8]), (X[8:], Y[8:])]
    clean = attacks.accuracy(probe, batches)
    robust = attacks.accuracy(probe, batches, attack=atk)
    assert 0 <= robust <= clean <= 1
    assert torch.equal(atk(probe, X, Y), atk(probe, X, Y))  # seeded: deterministic
    with pytest.raises(ValueError):
        attacks.PGD("l3")
    with pytest.raises(ValueError):
        attacks.accuracy(probe, [])


def test_accuracy_on_a_dataset_and_zero_eps():
    p = tiny_probe(seed=3)
    ds = data.ImageTensorDataset((X * 255).to(torch.uint8), Y)
    clean = attacks.accuracy(p, ds)
    assert attacks.accuracy(p, ds, attack=attacks.PGD("linf", 0.0, 0.0, 5)) == clean


@needs_data
@shipped("resnet18-linf-8", "resnet18-l2-1.0")
@pytest.mark.slow
@pytest.mark.parametrize("name,norm,eps,step", [("resnet18-linf-8", "linf", 8 / 255, 2 / 255),
                                                ("resnet18-l2-1.0", "l2", 1.0, 0.25)])
def test_robust_accuracy_matches_foolbox(name, norm, eps, step):
    """Same robust model, same 300 test images, PGD-10 with random starts: within 2
    points (10 steps, not the cards' 20: the same check in half the time)."""
    model = zoo.load(name, device="cpu")
    test = data.fixed_subset(data.cifar10("test"), 300)
    ours = attacks.accuracy(model, test, attack=attacks.PGD(norm, eps, step, 10))
    torch.manual_seed(0)
    theirs = attacks.accuracy(model, test, attack=_foolbox(model, norm, eps, step, 10, True))
    assert 0.2 < ours < 0.9
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


@needs_data
@shipped("resnet18-linf-8")
def test_early_stop_scores_the_same_as_the_best_iterate_in_less_work():
    """early_stop drops an image at its first success: same accuracy as best=True
    (each image's trajectory is its own), fewer forward passes."""
    model = zoo.load("resnet18-linf-8", device="cpu")
    test = data.fixed_subset(data.cifar10("test"), 96)
    calls = {"n": 0}

    def counted(x):
        calls["n"] += len(x)
        return model(x)
    counted.parameters = model.parameters
    full = attacks.PGD("linf", 8 / 255, 2 / 255, 8, best=True)
    fast = full.for_accuracy()
    assert fast.early_stop and "first success" in fast.describe()
    assert "early_stop" not in attacks.PGD.paper("linf").to_dict()  # old keys stay valid
    a_full = attacks.accuracy(counted, test, attack=full, device="cpu")
    n_full, calls["n"] = calls["n"], 0
    a_fast = attacks.accuracy(counted, test, attack=fast, device="cpu")
    assert abs(a_full - a_fast) <= 1 / 96, (a_full, a_fast)  # batch-size rounding only
    assert calls["n"] < 0.9 * n_full
    with pytest.raises(ValueError, match="best=True"):
        attacks.pgd(model, X, Y, early_stop=True)
