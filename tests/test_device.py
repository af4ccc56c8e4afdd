"""The heavy paths on the device the project picks (CUDA where there is one), against
the same computation on the CPU: the same results on every device."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from helpers import tiny_probe
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


def _cuda(device):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA GPU")
    return tiny_probe(width=8, seed=3).to(device)


def _count_replays(monkeypatch) -> list[int]:
    replays = [0]
    replay = torch.cuda.CUDAGraph.replay

    def counted(graph):
        replays[0] += 1
        return replay(graph)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    return replays


def test_graphed_optimisation_steps_agree_with_eager_ones(device, monkeypatch):
    model = _cuda(device)
    replays = _count_replays(monkeypatch)
    runs = {"inversion": lambda **o: inversion.invert(model, X[:2], steps=20, **o),
            # a tap inside a block: reached through a hook that ends the pass
            "hooked tap": lambda **o: inversion.invert(model, X[:2], steps=20,
                                                       layer="layer2.0.conv1", **o),
            "visualisation": lambda **o: inversion.visualize_feature(model, [1, 2], steps=20, **o),
            "addition": lambda **o: inversion.add_feature(model, X[:2], 3, steps=20, **o)}
    for name, run in runs.items():
        before = replays[0]
        graphed = run()
        assert replays[0] == before + 20, name     # one replay a step
        eager = run(cuda_graph=False)
        assert replays[0] == before + 20, name
        assert (graphed.images - eager.images).abs().max() < 2e-2, name
        assert torch.allclose(graphed.loss_curve, eager.loss_curve, rtol=1e-3, atol=1e-4), name
        assert len(graphed.frames) == len(eager.frames), name


def test_a_model_that_cannot_be_captured_runs_eagerly(device, monkeypatch):
    model = _cuda(device)
    replays = _count_replays(monkeypatch)
    eager = inversion.invert(model, X[:2], steps=10, cuda_graph=False)
    def read_on_the_cpu(module, inputs) -> None:   # no capture can hold this
        float(inputs[0].detach().sum())
    hook = model.model.conv1.register_forward_pre_hook(read_on_the_cpu)
    try:
        syncing = inversion.invert(model, X[:2], steps=10)
    finally:
        hook.remove()
    assert replays[0] == 0 and (syncing.images - eager.images).abs().max() < 2e-2
    after = inversion.invert(model, X[:2], steps=10)    # and the GPU is fit for graphs again
    assert replays[0] == 10 and (after.images - eager.images).abs().max() < 2e-2


def test_sessions_side_by_side_on_one_gpu_get_their_own_results(device):
    model, other = _cuda(device), tiny_probe(width=8, seed=4).to(device)
    ds = data.ImageTensorDataset((X * 255).to(torch.uint8), Y)
    eager = [inversion.invert(m, X[:2], steps=30, cuda_graph=False) for m in (model, other)]
    alone = cka.cka_matrix(model, other, ds, batch_size=12).matrix
    # two inversions capture their graphs while a third session's CKA reads its results back
    work = [lambda: inversion.invert(model, X[:2], steps=30),
            lambda: inversion.invert(other, X[:2], steps=30),
            lambda: [cka.cka_matrix(model, other, ds, batch_size=12).matrix for _ in range(5)]]
    for _ in range(3):
        with ThreadPoolExecutor(3) as pool:
            first, second, matrices = [f.result() for f in [pool.submit(w) for w in work]]
        for graphed, then in zip((first, second), eager):
            assert (graphed.images - then.images).abs().max() < 2e-2
        assert all(abs(m - alone).max() < 1e-5 for m in matrices)
