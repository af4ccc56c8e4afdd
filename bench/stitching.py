"""Time model stitching per cell, both methods, on CIFAR-10 (CPU by default).

For each stitch point: task-loss matching (Adam on the clean task loss) and
direct matching (least squares), then clean accuracy and PGD robust accuracy
of the stitched model; where the time goes (front forward, end forward and
backward, optimiser, DM accumulation and solve, clean evaluation, attack) and
what a full pairs x layers matrix costs at this budget and at the papers'.
`--convergence` also trains a few layers longer to show what more epochs buy.

    python bench/stitching.py --out bench-stitching.json
    python bench/stitching.py --front PATH_OR_NAME --end PATH_OR_NAME --convergence layer2.1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting are pathological on a shared, busy CPU
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import archs, attacks, data, stitching, zoo  # noqa: E402
from core.probe import Probe, pick_device  # noqa: E402

PAPER = {"epochs": 30, "train": 50_000, "test": 10_000, "robust": 10_000}


def load_models(args: argparse.Namespace, device: torch.device) -> tuple[Probe, Probe, str]:
    """The front and end donors: as asked, else the shipped zoo, else random init."""
    specs = [args.front, args.end]
    shipped = zoo.names()
    if not any(specs) and len(shipped) >= 2:
        specs = shipped[:2]
    if all(specs):
        return (zoo.load(specs[0], device=device), zoo.load(specs[1], device=device),
                "loaded: " + ", ".join(specs))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = archs.build("resnet18", width=args.width)
        name = f"random-w{args.width}-s{seed}"
        models.append(Probe(m, data.MEAN, data.STD, name=name).to(device))
    return models[0], models[1], f"random init, width {args.width} (timing only)"


def cell(front: Probe, end: Probe, layer: str, method: str, train, test,
         attack: attacks.PGD, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    stitched, hist = stitching.fit(front, end, layer, train, method, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, init=args.init,
                                   init_batches=args.init_batches, profile=True, seed=0)
    fit_s = time.perf_counter() - t0
    ev = stitching.evaluate(stitched, test, attack, robust_n=args.robust)
    row = {"layer": layer, "method": method, "fit_s": round(fit_s, 2),
           "breakdown_s": hist["timing"], "clean_eval_s": ev["seconds"]["clean"],
           "attack_s": ev["seconds"]["robust"], "clean_accuracy": ev["clean_accuracy"],
           "robust_accuracy": ev["robust_accuracy"],
           "dm_error": hist.get("dm_error"), "steps": hist.get("steps")}
    row["total_s"] = round(fit_s + ev["seconds"]["clean"] + ev["seconds"]["robust"], 2)
    return row


def convergence(front: Probe, end: Probe, layers: list[str], variants: list[str],
                train, test, args: argparse.Namespace) -> list[dict]:
    """Clean test accuracy of task matching for variants "EPOCHS:LR:INIT", and of
    direct matching, at each layer: what a longer or different fit buys."""
    rows = []
    for layer in layers:
        for spec in variants:
            ep, lr, init, *bs = spec.split(":")
            batch_size = int(bs[0]) if bs else args.batch_size
            t0 = time.perf_counter()
            stitched, hist = stitching.fit(front, end, layer, train, "task", epochs=int(ep),
                                           lr=float(lr), init=init, batch_size=batch_size,
                                           seed=0)
            acc = stitching.evaluate(stitched, test)["clean_accuracy"]
            rows.append({"layer": layer, "method": "task", "epochs": int(ep), "lr": float(lr),
                         "init": init, "batch_size": batch_size, "steps": hist["steps"],
                         "clean_accuracy": acc,
                         "final_train_loss": hist["epoch_loss"][-1],
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(f"  {layer:9s} task {spec:16s} ({hist['steps']:4d} steps): clean {acc:.3f}, "
                  f"train loss {hist['epoch_loss'][-1]:.3f} ({rows[-1]['seconds']:.0f} s)",
                  flush=True)
        stitched, _ = stitching.fit(front, end, layer, train, "direct", batch_size=args.batch_size)
        acc = stitching.evaluate(stitched, test)["clean_accuracy"]
        rows.append({"layer": layer, "method": "direct", "clean_accuracy": acc})
        print(f"  {layer:9s} direct matching: clean {acc:.3f}", flush=True)
    return rows


def project(rows: list[dict], method: str, pairs: int, layers: int, models: int,
            ref_eval_s: float, scale_fit: float = 1.0, scale_clean: float = 1.0,
            scale_attack: float = 1.0) -> float:
    """Seconds for a pairs x layers matrix from the mean measured cell."""
    mine = [r for r in rows if r["method"] == method]
    per_cell = sum(r["fit_s"] * scale_fit + r["clean_eval_s"] * scale_clean
                   + r["attack_s"] * scale_attack for r in mine) / len(mine)
    return pairs * layers * per_cell + models * ref_eval_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--front", help="front model: zoo name or checkpoint path")
    p.add_argument("--end", help="end model: zoo name or checkpoint path")
    p.add_argument("--width", type=int, default=32, help="width of random-init models")
    p.add_argument("--train", type=int, default=5000, help="training images per epoch")
    p.add_argument("--test", type=int, default=1000, help="test images (clean accuracy)")
    p.add_argument("--robust", type=int, default=200, help="test images attacked")
    p.add_argument("--epochs", type=int, default=1, help="task-loss epochs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="task matching: Adam learning rate")
    p.add_argument("--init", default="random", choices=stitching.INITS,
                   help="task matching: initial stitching layer")
    p.add_argument("--init-batches", type=int, default=None,
                   help="task matching with --init direct: batches for the least squares")
    p.add_argument("--pgd-steps", type=int, default=10, help="Linf 8/255 PGD steps (step 2/255)")
    p.add_argument("--layers", nargs="*", help="stitch points (default: all)")
    p.add_argument("--methods", nargs="*", default=["task", "direct"], choices=stitching.METHODS)
    p.add_argument("--pairs", type=int, default=4, help="pairs in the projected matrix")
    p.add_argument("--matrix-layers", type=int, default=10, help="layers in that matrix")
    p.add_argument("--models", type=int, default=4, help="distinct models in that matrix")
    p.add_argument("--convergence", nargs="*", default=[], metavar="LAYER",
                   help="also fit these layers with each of --variants")
    p.add_argument("--variants", nargs="*", default=["1:1e-3:random", "3:1e-3:random"],
                   metavar="EPOCHS:LR:INIT[:BATCH]",
                   help="task-matching variants for --convergence")
    p.add_argument("--skip-cells", action="store_true", help="only run --convergence")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    front, end, origin = load_models(args, device)
    train = data.fixed_subset(data.cifar10("train"), args.train, seed=1)
    test = data.fixed_subset(data.cifar10("test"), args.test, seed=0)
    attack = attacks.PGD("linf", 8 / 255, 2 / 255, args.pgd_steps)
    layers = args.layers or stitching.common_stitch_points(front, end)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    print(f"{origin}; {device}, {torch.get_num_threads()} threads, load {load}; "
          f"{args.train} train x {args.epochs} epoch(s), {args.test} test, "
          f"{args.robust} attacked with {attack.describe()}", flush=True)

    t0 = time.perf_counter()
    ref = stitching.evaluate(end, test, attack, robust_n=args.robust)
    ref_eval_s = time.perf_counter() - t0
    print(f"end model alone: clean {ref['clean_accuracy']:.3f}, robust "
          f"{ref['robust_accuracy']:.3f} ({ref_eval_s:.1f} s)", flush=True)

    rows = []
    for layer in ([] if args.skip_cells else layers):
        for method in args.methods:
            r = cell(front, end, layer, method, train, test, attack, args)
            rows.append(r)
            b = r["breakdown_s"]
            parts = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in b.items())
            extra = f" DM err {r['dm_error']:.3f}" if r["dm_error"] is not None else ""
            print(f"{layer:9s} {method:6s} fit {r['fit_s']:6.1f} s ({parts}); clean eval "
                  f"{r['clean_eval_s']:.1f} s; attack {r['attack_s']:.1f} s; total "
                  f"{r['total_s']:.1f} s | clean {r['clean_accuracy']:.3f} robust "
                  f"{r['robust_accuracy']:.3f}{extra}", flush=True)

    summary: dict = {}
    n_layers = args.matrix_layers
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        recipe_s = project(rows, method, args.pairs, n_layers, args.models, ref_eval_s)
        paper_s = project(rows, method, args.pairs, n_layers, args.models,
                          ref_eval_s * PAPER["test"] / args.test,
                          scale_fit=(PAPER["epochs"] * PAPER["train"]) / (args.epochs * args.train)
                          if method == "task" else PAPER["train"] / args.train,
                          scale_clean=PAPER["test"] / args.test,
                          scale_attack=PAPER["robust"] / args.robust)
        summary[method] = {
            "mean_cell_s": round(sum(r["total_s"] for r in mine) / len(mine), 1),
            "mean_fit_s": round(sum(r["fit_s"] for r in mine) / len(mine), 1),
            "mean_attack_s": round(sum(r["attack_s"] for r in mine) / len(mine), 1),
            f"matrix_{args.pairs}x{n_layers}_this_budget_min": round(recipe_s / 60, 1),
            f"matrix_{args.pairs}x{n_layers}_paper_budget_h": round(paper_s / 3600, 1),
        }
        print(f"{method}: {summary[method]}", flush=True)

    conv = []
    if args.convergence:
        conv = convergence(front, end, args.convergence, args.variants, train, test, args)

    result = {"bench": "stitching", "models": origin, "front": front.identity(),
              "end": end.identity(), "device": str(device), "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "loadavg_start": load,
              "torch": torch.__version__,
              "budget": {"train": args.train, "epochs": args.epochs, "test": args.test,
                         "robust": args.robust, "attack": attack.describe(),
                         "batch_size": args.batch_size, "lr": args.lr, "init": args.init,
                         "init_batches": args.init_batches},
              "end_reference": {"clean": ref["clean_accuracy"], "robust": ref["robust_accuracy"],
                                "seconds": round(ref_eval_s, 2)},
              "cells": rows, "summary": summary, "convergence": conv,
              "wall_s": round(time.perf_counter() - t0, 1)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
