"""GPU (or any device) timings of the heavy paths, each beside a peer where one exists.

Sections (run in this order; a section's failure is recorded, the rest go on):
  pgd        PGD-20 Linf 8/255 accuracy of the Linf model on the whole test set:
             RobustLens (accuracy mode: best iterate, an image leaves the attack at
             its first success; and plain last-iterate PGD) vs torchattacks.PGD
  inversion  one image inverted by the robust and the standard model (150 Adam
             steps, the app's default), and a batch of 64 images
  cka        linear CKA of the Linf model vs standard seed 0 over all 10,000 test
             images and all 58 taps (the paper view), batches of 1,024

Every timing synchronises the device before reading the clock; the first call of
each path is a warm-up that is not counted.

    python bench/gpu.py --out bench-gpu.json [--sections pgd,inversion,cka]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import attacks, cka, data, inversion, zoo  # noqa: E402
from core.probe import pick_device  # noqa: E402

ROBUST, STANDARD, LINF = "resnet18-l2-1.0", "resnet18-standard-s0", "resnet18-linf-8"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def bench_pgd(device: torch.device) -> dict:
    import torchattacks
    model = zoo.load(LINF, device=device)
    test = data.cifar10("test")
    batch = 1000
    atk = attacks.PGD("linf", 8 / 255, 2 / 255, 20)

    def ours(attack):  # the same batches as the peer's: the test set in its order
        return attacks.accuracy(model, test, attack, device, batch_size=batch, shuffle_seed=None)
    ta = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=20, random_start=True)

    def peer():
        correct = 0
        for x, y in data.batches(test, batch, device, shuffle_seed=None):
            xa = ta(x, y)
            with torch.no_grad():
                correct += int((model(xa).argmax(1) == y).sum())
        return correct / len(test)
    ours(atk)  # warm-up (cuDNN autotuning, allocator)
    acc_fast, t_fast = timed(device, lambda: ours(atk.for_accuracy()))
    acc_last, t_last = timed(device, lambda: ours(atk))
    acc_peer, t_peer = timed(device, peer)
    return {"images": len(test), "batch": batch,
            "robustlens_accuracy_mode": {"seconds": t_fast, "accuracy": acc_fast},
            "robustlens_last_iterate": {"seconds": t_last, "accuracy": acc_last},
            "torchattacks_pgd": {"seconds": t_peer, "accuracy": acc_peer}}


def bench_inversion(device: torch.device) -> dict:
    models = [zoo.load(n, device=device) for n in (ROBUST, STANDARD)]
    test = data.cifar10("test")
    one = (test.images[:1].float() / 255).to(device)
    many = (data.fixed_subset(test, 64).images.float() / 255).to(device)
    inversion.invert(models[0], one, steps=5, threads=None)  # warm-up
    out = {}
    _, out["one_image_both_models_s"] = timed(device, lambda: [
        inversion.invert(m, one, steps=150, threads=None) for m in models])
    _, out["batch_64_both_models_s"] = timed(device, lambda: [
        inversion.invert(m, many, steps=150, threads=None) for m in models])
    out["steps"] = 150
    return out


def bench_cka(device: torch.device) -> dict:
    a, b = zoo.load(LINF, device=device), zoo.load(STANDARD, device=device)
    test = data.cifar10("test")  # read in seeded random batches, not class-sorted ones
    layers_a, layers_b = a.all_layers, b.all_layers
    cka.cka_matrix(a, b, test, layers_a, layers_b, limit=1024)  # warm-up
    res, secs = timed(device, lambda: cka.cka_matrix(a, b, test, layers_a, layers_b,
                                                     batch_size=1024))
    return {"images": len(test), "taps": [len(layers_a), len(layers_b)], "batch": 1024,
            "seconds": secs, "mean_same_layer_cka": float(torch.as_tensor(
                res.matrix).diagonal().float().mean())}


SECTIONS = {"pgd": bench_pgd, "inversion": bench_inversion, "cka": bench_cka}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--device", default=None)
    p.add_argument("--out")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                 else platform.processor() or "cpu", "torch": torch.__version__}
    for name in args.sections.split(","):
        t0 = time.time()
        try:
            out[name] = SECTIONS[name](device)
        except Exception as e:  # noqa: BLE001 - a benchmark section's failure is a result
            out[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        print(name, round(time.time() - t0, 1), "s:", json.dumps(out[name])[:600], flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
