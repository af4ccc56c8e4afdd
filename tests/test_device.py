"""The heavy paths on the device the project picks (CUDA where there is one), against
the same computation on the CPU: the same results on every device."""
from __future__ import annotations

import torch

from conftest import tiny_probe
from core import attacks, cka, data, inversion, stitching

GEN = torch.Generator().manual_seed(0)
X = torch.rand(24, 3, 32, 32, generator=GEN)
Y = torch.randint(0, 10, (24,), generator=GEN)


def _pair(device):
    cpu = tiny_probe(width=8, seed=3)
    return cpu, tiny_probe(width=8, seed=3).to(device)


def test_pgd_and_accuracy_agree_across_devices(device):
    cpu, dev = _pair(device)
    for norm, eps, step in (("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)):
        a = attacks.pgd(cpu, X, Y, norm, eps, step, 10, random_start=False)
        b = attacks.pgd(dev, X.to(device), Y.to(device), norm, eps, step, 10, random_start=False)
        assert ((a - b.cpu()).abs() < 1e-3).float().mean() > 0.99
    atk = attacks.PGD("linf", 8 / 255, 2 / 255, 5, random_start=False).for_accuracy()
    ds = data.ImageTensorDataset((X * 255).to(torch.uint8), Y)
    assert abs(attacks.accuracy(cpu, ds, atk) - attacks.accuracy(dev, ds, atk)) <= 1 / 24


def test_cka_agrees_across_devices(device):
    cpu, dev = _pair(device)
    other_cpu, other_dev = tiny_probe(width=8, seed=4), tiny_probe(width=8, seed=4).to(device)
    ds = data.ImageTensorDataset((X * 255).to(torch.uint8), Y)
    a = cka.cka_matrix(cpu, other_cpu, ds, batch_size=12)
    b = cka.cka_matrix(dev, other_dev, ds, batch_size=12)
    assert abs(a.matrix - b.matrix).max() < 1e-4


def test_inversion_agrees_across_devices(device):
    cpu, dev = _pair(device)
    a = inversion.invert(cpu, X[:2], steps=20)
    b = inversion.invert(dev, X[:2].to(device), steps=20)
    assert (a.images - b.images).abs().max() < 2e-2 and b.images.device.type == "cpu"


def test_direct_stitching_agrees_across_devices(device):
    front, end = tiny_probe(width=8, seed=5), tiny_probe(width=8, seed=6)
    ds = data.ImageTensorDataset((X * 255).to(torch.uint8), Y)
    a, _ = stitching.fit(front, end, "layer2.0", ds, "direct", batch_size=12)
    b, _ = stitching.fit(front.to(device), end.to(device), "layer2.0", ds, "direct",
                         batch_size=12)
    wa = [p.detach().cpu() for p in a.stitch.parameters()]
    wb = [p.detach().cpu() for p in b.stitch.parameters()]
    assert all(torch.allclose(x, y, atol=1e-3, rtol=1e-3) for x, y in zip(wa, wb))
