"""Time representation inversion on the CPU: latency, loop overhead, methods.

Measures, for a robust and a standard width-32 ResNet-18 (the shipped zoo when
present, else the models given, else random init - timing only):

1. the first preview frame: seconds from the invert() call to the progress
   callback's step-0 images, on a cold model (its first forward pass in the
   process) and on a warm one;
2. one 32x32 image reconstructed by both models with the fast method at its
   default steps (the target: under 10 s for the two), with PSNR/SSIM;
3. seconds per step of the inversion loop against a bare forward + backward
   loop to the same tap (overhead %), with one intra-op thread and with the
   process's setting, and the hook path (probe.features(grad=True)) for scale;
4. normgrad (the paper's step) vs adam: loss reached at equal steps, and the
   steps normgrad needs to reach adam's loss.

    python bench/inversion.py --out bench-inversion.json
    python bench/inversion.py --robust PATH --standard PATH --quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import archs, data, inversion, zoo  # noqa: E402
from core.probe import Probe  # noqa: E402

SHIPPED = ("resnet18-l2-1.0", "resnet18-standard-s0")


def load_models(args: argparse.Namespace) -> tuple[list[Probe], str]:
    """Robust then standard: as asked, else the shipped zoo, else random init."""
    specs = [args.robust, args.standard]
    if not any(specs) and all(n in zoo.names() for n in SHIPPED):
        specs = list(SHIPPED)
    if all(specs):
        return [zoo.load(s, device="cpu") for s in specs], "loaded: " + ", ".join(specs)
    models = []
    for seed, name in enumerate(("random-robust-slot", "random-standard-slot")):
        torch.manual_seed(seed)
        models.append(Probe(archs.resnet18(width=32), data.MEAN, data.STD, name=name))
    return models, "random init, width 32 (timing only: no quality claims)"


def first_frame(model: Probe, image: torch.Tensor) -> float:
    """Seconds from the call to the step-0 preview (the run is stopped there)."""
    class Seen(Exception):
        pass

    t0 = time.perf_counter()
    seen = []

    def progress(event):
        if event.preview is not None:
            seen.append(time.perf_counter() - t0)
            raise Seen

    try:
        inversion.invert(model, image, progress=progress)
    except Seen:
        pass
    return seen[0]


def reconstruct(models: list[Probe], image: torch.Tensor) -> dict:
    rows, total = [], 0.0
    for m in models:
        t0 = time.perf_counter()
        r = inversion.invert(m, image, method="adam")
        s = time.perf_counter() - t0
        total += s
        rows.append({"model": m.name, "seconds": round(s, 3), "steps": r.settings["steps"],
                     "loss": round(float(r.loss[0]), 4),
                     "psnr_db": round(float(inversion.psnr(r.images, image)[0]), 2),
                     "ssim": round(float(inversion.ssim(r.images, image)[0]), 4)})
    return {"models": rows, "total_s": round(total, 3), "target_s": 10.0}


def bare_steps(model: Probe, image: torch.Tensor, steps: int, tap: str,
               threads: int | None) -> float:
    """Seconds per step of forward + normalised distance + input gradient, nothing
    else (the target's forward pass included, as in the loop)."""
    layer = model.representation_layer
    with inversion.cpu_threads(threads, model.device):
        t0 = time.perf_counter()
        with torch.no_grad():
            target = model.representation(image)
        x = torch.full_like(image, 0.5)
        for _ in range(steps):
            xi = x.detach().requires_grad_()
            f = (model.forward_to(xi, layer) if tap == "forward_to"
                 else model.features(xi, [layer], grad=True)[layer])
            loss = (f.flatten(1) - target).norm(dim=1) / target.norm(dim=1)
            torch.autograd.grad(loss.sum(), xi)
        return (time.perf_counter() - t0) / steps


def loop_steps(model: Probe, image: torch.Tensor, steps: int, threads: int | None) -> float:
    t0 = time.perf_counter()
    inversion.invert(model, image, steps=steps, threads=threads)
    # the loop also runs a last forward (the final loss): counted as overhead
    return (time.perf_counter() - t0) / steps


def optimiser_cost(image: torch.Tensor, steps: int = 2000) -> float:
    """Seconds per step of the step rule and constraint alone (on a fixed gradient)."""
    x, grad = torch.rand_like(image), torch.randn_like(image)
    rule, constrain = inversion.Adam(), inversion.Constraint(x.clone())
    rule.start(x, steps)
    t0 = time.perf_counter()
    for step in range(steps):
        rule(x, grad, step)
        constrain(x)
    return (time.perf_counter() - t0) / steps


def overhead(model: Probe, image: torch.Tensor, steps: int, repeats: int) -> dict:
    """Median seconds per step over repeats that alternate the order of loop and
    bare loop (the CPU may be shared); one thread first, then the process's
    setting, in separate blocks (spinning OpenMP threads of one block must not
    slow the next)."""
    threads = torch.get_num_threads()
    runs: dict[str, list[float]] = {}

    def measure(key: str, fn) -> None:
        runs.setdefault(key, []).append(fn())

    loop_steps(model, image, 5, 1)                      # warm up
    for r in range(repeats):
        pair = [("loop_1_thread", lambda: loop_steps(model, image, steps, 1)),
                ("bare_1_thread", lambda: bare_steps(model, image, steps, "forward_to", 1)),
                ("bare_hooks_1_thread", lambda: bare_steps(model, image, steps, "hooks", 1))]
        for key, fn in (pair if r % 2 == 0 else pair[::-1]):
            measure(key, fn)
    if threads != 1:
        for r in range(repeats):
            pair = [(f"loop_{threads}_threads", lambda: loop_steps(model, image, steps, None)),
                    (f"bare_{threads}_threads",
                     lambda: bare_steps(model, image, steps, "forward_to", None))]
            for key, fn in (pair if r % 2 == 0 else pair[::-1]):
                measure(key, fn)
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {f"{k}_ms": round(v * 1000, 2) for k, v in med.items()}
    out["optimiser_and_constraint_ms"] = round(optimiser_cost(image) * 1000, 3)
    for n in sorted({1, threads}):
        tag = "1_thread" if n == 1 else f"{n}_threads"
        out[f"overhead_{tag}_pct"] = round(100 * (med[f"loop_{tag}"] / med[f"bare_{tag}"] - 1), 1)
    out["steps_per_run"], out["repeats"] = steps, repeats
    return out


def methods(model: Probe, image: torch.Tensor, budgets: list[int], normgrad_steps: int) -> dict:
    """Loss at equal steps, and normgrad steps to reach each adam loss."""
    paper = inversion.invert(model, image, method="normgrad", steps=normgrad_steps)
    curve = paper.loss_curve[:, 0]
    rows = []
    for k in budgets:
        fast = inversion.invert(model, image, method="adam", steps=k)
        reach = (curve <= fast.loss[0]).nonzero()
        rows.append({"steps": k, "adam_loss": round(float(fast.loss[0]), 4),
                     "normgrad_loss": round(float(curve[min(k, normgrad_steps)]), 4),
                     "normgrad_steps_to_adam_loss": int(reach[0]) if len(reach) else
                     f">{normgrad_steps}"})
    return {"model": model.name, "normgrad_step_size": paper.settings["step_size"],
            "normgrad_final_loss": round(float(curve[-1]), 4), "by_budget": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--robust", help="robust model: zoo name or checkpoint path")
    p.add_argument("--standard", help="standard model: zoo name or checkpoint path")
    p.add_argument("--image", type=int, default=0, help="which foolbox CIFAR sample (0-19)")
    p.add_argument("--overhead-steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budgets", default="50,100,150,200,400", help="adam step budgets")
    p.add_argument("--normgrad-steps", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    p.add_argument("--sections", default="first,reconstruct,overhead,methods",
                   help="which measurements to run (comma-separated)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.overhead_steps, args.normgrad_steps = 3, 30, 300
        args.budgets = "50,100,200"

    image = data.cifar_samples()[args.image].tensor()[None]
    t0 = time.perf_counter()
    models, source = load_models(args)
    load_s = time.perf_counter() - t0
    report: dict = {"models": source, "load_s": round(load_s, 2),
                    "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                                "torch": torch.__version__, "python": platform.python_version(),
                                "processor": platform.processor() or platform.machine()}}
    sections = set(args.sections.split(","))
    if "first" in sections:
        report["first_frame_s"] = {"cold": round(first_frame(models[0], image), 3),
                                   "warm": round(first_frame(models[0], image), 3)}
        print(f"first frame: {report['first_frame_s']}", flush=True)
    if "reconstruct" in sections:
        report["reconstruction"] = reconstruct(models, image)
        print(f"reconstruction: {report['reconstruction']}", flush=True)
    if "overhead" in sections:
        report["per_step"] = overhead(models[0], image, args.overhead_steps, args.repeats)
        print(f"per step: {report['per_step']}", flush=True)
    if "methods" in sections:
        budgets = [int(b) for b in args.budgets.split(",")]
        report["methods"] = [methods(m, image, budgets, args.normgrad_steps) for m in models]
        for row in report["methods"]:
            print(f"methods: {row}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
