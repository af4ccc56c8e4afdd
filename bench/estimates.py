"""How close the pages' time estimates come to the real run (CPU by default).

A stitching or accuracy button says "up to X" before it starts: the job's forward
and forward-backward passes per model (its kind's cost, core.jobs.seconds) times each
model's measured seconds of each (core.probe.pass_seconds). This runs such jobs on the shipped
CIFAR-10 zoo and compares: the estimate should be above the run (an accuracy attack
stops early on images it has already broken) and within a small factor of it.

    python bench/estimates.py --out bench/results/estimates-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import jobs, runner, stitching, zoo  # noqa: E402
from core.probe import pass_seconds, pick_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--robust-images", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = pick_device(args.device)
    models: dict = {}

    def load(spec: str):
        if spec not in models:
            models[spec] = zoo.load(spec, device=device)
        return models[spec]
    recipe = {**stitching.STITCH_RECIPE, "train_images": args.train_images,
              "robust_images": args.robust_images}
    r, s = "resnet18-linf-8", "resnet18-standard-s0"
    cases = {"accuracy, robust model": stitching.accuracy_job(load, r, recipe),
             "accuracy, standard model": stitching.accuracy_job(load, s, recipe),
             "stitch cell, direct, layer3.0": stitching.stitch_cell_job(
                 load, r, s, "layer3.0", "direct", recipe),
             "stitch cell, task, layer3.0": stitching.stitch_cell_job(
                 load, r, s, "layer3.0", "task", recipe)}
    seconds = {m: pass_seconds(load(m)) for m in (r, s)}
    rows = []
    for name, job in cases.items():
        estimate = jobs.seconds([job], seconds.__getitem__, lambda m: 0.0, lambda j: None)
        start = time.perf_counter()
        runner.compute(job)
        measured = time.perf_counter() - start
        rows.append({"job": name, "estimate_s": round(estimate, 1),
                     "measured_s": round(measured, 1), "ratio": round(estimate / measured, 2)})
        print(f"{name:32s} estimate {estimate:7.1f} s, measured {measured:7.1f} s, "
              f"ratio {estimate / measured:.2f}", flush=True)
    record = {"device": str(device), "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(),
              "pass_seconds": seconds, "recipe": {k: v for k, v in recipe.items()
                                                       if k != "attack"},
              "attack": recipe["attack"].describe(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
