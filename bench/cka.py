"""Benchmark core.cka.cka_matrix against the peer libraries pytorch-cka and torch-cka.

Every method sees the same two models, the same taps (the models' default block
layers) and the same DataLoader, and computes unbiased minibatch linear CKA.
Each method runs in a fresh subprocess, so its peak memory is its own:
CPU peak is the resident-set high-water mark over the run minus the resident
set just before it (the mark is reset through /proc/self/clear_refs where the
kernel allows, else ru_maxrss is used); on CUDA, torch.cuda.max_memory_allocated.

Methods:
  robustlens      core.cka.cka_matrix
  pytorch-cka     cka.compute_cka (PyPI pytorch-cka)
  torch-cka       torch_cka.CKA(...).compare (PyPI torch-cka), run as shipped
  forward+gram    the floor: the forward passes and one float32 Gram product
                  per tap and batch, taken in forward hooks, nothing else
  forward         the plain forward passes, for context
  float64         a float64 reference (float64 Grams, HSIC through the public
                  core.cka functions); all matrices are compared with it

Install the peers with `pip install --no-deps pytorch-cka torch-cka` (both also
import tqdm and matplotlib). Prints a markdown table; --out writes JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# this file is bench/cka.py: its folder must not shadow pytorch-cka's `cka` package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

from core import cka, data, zoo  # noqa: E402
from core.archs import resnet18  # noqa: E402
from core.errors import DataNotFoundError  # noqa: E402
from core.probe import Probe, pick_device  # noqa: E402

METHODS = ("robustlens", "pytorch-cka", "torch-cka", "forward+gram", "forward", "float64")


# ----------------------------------------------------------------------- setup

def load_models(device: torch.device, random_models: bool, width: int) -> tuple[Probe, Probe, str]:
    """A robust and a standard model of the shipped zoo, else two random-init ResNet-18s."""
    names = [] if random_models else zoo.names()
    if names:
        robust = [n for n in names if zoo.is_robust(zoo.card(n))]
        standard = [n for n in names if n not in robust]
        a = robust[0] if robust else names[0]
        b = standard[0] if standard else names[-1]
        return zoo.load(a, device=device), zoo.load(b, device=device), f"zoo: {a} vs {b}"
    probes = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        probes.append(Probe(resnet18(width=width), data.MEAN, data.STD,
                            name=f"random-resnet18-w{width}-s{seed}").to(device).eval())
    return probes[0], probes[1], f"random-init resnet18(width={width}) x2"


def load_data(n: int, batch: int) -> tuple[torch.utils.data.DataLoader, str]:
    try:
        ds = data.fixed_subset(data.cifar10("test"), n)
        source = f"CIFAR-10 test, fixed subset of {len(ds)}"
    except DataNotFoundError:
        g = torch.Generator().manual_seed(0)
        ds = data.ImageTensorDataset(torch.randint(0, 256, (n, 3, 32, 32), generator=g,
                                                   dtype=torch.uint8),
                                     torch.randint(0, 10, (n,), generator=g))
        source = f"random images ({n}; CIFAR-10 not found)"
    tensors = torch.utils.data.TensorDataset(ds.images.float() / 255, ds.labels)
    return torch.utils.data.DataLoader(tensors, batch_size=batch, shuffle=False), source


# --------------------------------------------------------------------- methods

def run_robustlens(a: Probe, b: Probe, loader, layers: list[str], device) -> np.ndarray:
    return cka.cka_matrix(a, b, loader, layers_a=layers, layers_b=layers).matrix


def run_pytorch_cka(a: Probe, b: Probe, loader, layers: list[str], device) -> np.ndarray:
    from cka import compute_cka
    taps = [f"model.{name}" for name in layers]  # peers hook the Probe's own module paths
    out = compute_cka(a, b, loader, layers=taps, model2_layers=taps, device=device,
                      progress=False)
    return out[0].double().cpu().numpy()


def run_torch_cka(a: Probe, b: Probe, loader, layers: list[str], device) -> np.ndarray:
    import warnings

    from torch_cka import CKA
    taps = [f"model.{name}" for name in layers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no second dataloader" and the like
        peer = CKA(a, b, model1_name="a", model2_name="b", model1_layers=taps,
                   model2_layers=taps, device=str(device))
        peer.compare(loader)
    # its rows follow the order in which hooks fired; put them in ours
    order_a = [taps.index(k) for k in peer.model1_features]
    order_b = [taps.index(k) for k in peer.model2_features]
    m = np.empty((len(taps), len(taps)))
    m[np.ix_(order_a, order_b)] = peer.hsic_matrix.double().cpu().numpy()
    return m


def run_floor(a: Probe, b: Probe, loader, layers: list[str], device) -> None:
    """Forward passes with one Gram product per tap, taken in a forward hook (no
    copies, nothing kept): the work no CKA can avoid."""
    def gram(_module, _inputs, out: torch.Tensor) -> None:
        X = out.flatten(1)
        X @ X.T
    handles = [m.model.get_submodule(name).register_forward_hook(gram)
               for m in (a, b) for name in layers]
    try:
        run_forward(a, b, loader, layers, device)
    finally:
        for h in handles:
            h.remove()


def run_forward(a: Probe, b: Probe, loader, layers: list[str], device) -> None:
    with torch.no_grad():
        for x, _ in loader:
            a(x.to(device))
            b(x.to(device))


def run_float64(a: Probe, b: Probe, loader, layers: list[str], device) -> np.ndarray:
    L = len(layers)
    ab, aa, bb = np.zeros((L, L)), np.zeros(L), np.zeros(L)
    with torch.no_grad():
        for x, _ in loader:
            fa, fb = a.features(x.to(device), layers), b.features(x.to(device), layers)
            Ka = [cka.gram_linear(fa[n].double()) for n in layers]
            Kb = [cka.gram_linear(fb[n].double()) for n in layers]
            ab += np.array([[cka.hsic_unbiased(k, m) for m in Kb] for k in Ka])
            aa += np.array([cka.hsic_unbiased(k, k) for k in Ka])
            bb += np.array([cka.hsic_unbiased(m, m) for m in Kb])
    return ab / np.sqrt(np.outer(aa, bb))


RUNNERS: dict[str, Callable] = {
    "robustlens": run_robustlens, "pytorch-cka": run_pytorch_cka, "torch-cka": run_torch_cka,
    "forward+gram": run_floor, "forward": run_forward, "float64": run_float64}


# ---------------------------------------------------------------------- memory

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------- child

def child(args: argparse.Namespace) -> dict:
    """Run one method on freshly loaded models and data; time and peak memory."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    a, b, models = load_models(device, args.random_models, args.width)
    loader, source = load_data(args.n, args.batch)
    layers = a.layers
    with torch.no_grad():  # first-call costs (allocator, kernels) outside the timing
        x = next(iter(loader))[0][:8].to(device)
        a(x), b(x)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    base_rss, reset = _rss_mb(), _reset_peak_rss()
    start, start_cpu = time.perf_counter(), time.process_time()
    matrix = RUNNERS[args.child](a, b, loader, layers, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    out = {"seconds": seconds, "cpu_seconds": cpu_seconds,
           "peak_rss_mb": _peak_rss_mb(reset) - base_rss,
           "rss_peak_source": "VmHWM after clear_refs" if reset else "ru_maxrss",
           "matrix": None if matrix is None else np.asarray(matrix).tolist(),
           "models": models, "data": source, "layers": layers, "device": str(device),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return out


# ---------------------------------------------------------------------- parent

def run_method(method: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", method, "--child-out", str(result),
               "--n", str(args.n), "--batch", str(args.batch), "--device", args.device,
               "--width", str(args.width), "--threads", str(args.threads)] + (
                   ["--random-models"] if args.random_models else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": tail[0]}
        return json.loads(result.read_text())


def summarize(runs: list[dict]) -> dict:
    """Median times and the largest peak over repeated runs of one method."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for key in ("seconds", "cpu_seconds"):
        out[key] = float(np.median([r[key] for r in ok]))
        out[f"{key}_runs"] = [r[key] for r in ok]
    for key in ("peak_rss_mb", "peak_gpu_mb"):
        if key in out:
            out[key] = max(r[key] for r in ok)
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    parser.add_argument("--batch", type=int, default=500, help="batch size (default 500)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    parser.add_argument("--width", type=int, default=32,
                        help="width of the random-init ResNet-18s (default 32)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own choice); on a busy "
                             "machine 1 gives the steadiest comparison")
    parser.add_argument("--random-models", action="store_true",
                        help="random-init models even if the zoo has some")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per method, interleaved; times are medians (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.child_out.write_text(json.dumps(child(args)))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(args.repeat):  # interleaved, so that a busy spell hits every method
        for method in methods:
            print(f"run {rep + 1}/{args.repeat}: {method} ...", file=sys.stderr, flush=True)
            runs[method].append(run_method(method, args))
    results = {m: summarize(r) for m, r in runs.items()}

    mats = {m: np.array(r["matrix"]) for m, r in results.items() if r.get("matrix")}
    floor = results.get("forward+gram", {})
    for m, r in results.items():
        for key in ("seconds", "cpu_seconds"):
            r[f"{key}_over_floor"] = r[key] / floor[key] if key in floor and key in r else None
        for ref in ("robustlens", "float64"):
            r[f"max_abs_diff_vs_{ref}"] = (float(np.abs(mats[m] - mats[ref]).max())
                                           if m in mats and ref in mats and m != ref else None)
    info = next((r for r in results.values() if "models" in r), {})
    gpu = str(info.get("device", "")).startswith("cuda")
    print(f"\n{info.get('models', '?')}; {info.get('data', '?')}; batch {args.batch}; "
          f"{len(info.get('layers', []))} x {len(info.get('layers', []))} layers; "
          f"device {info.get('device', '?')}, {info.get('threads', '?')} threads; "
          f"median of {args.repeat} run(s)\n")
    print("| method | wall (s) | x floor | CPU (s) | x floor | peak " + ("GPU" if gpu else "RSS")
          + " (MB) | max abs diff vs robustlens | max abs diff vs float64 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, r in results.items():
        if "error" in r:
            print(f"| {m} | failed: {r['error']} | | | | | | |")
            continue
        peak = r.get("peak_gpu_mb") if gpu else r["peak_rss_mb"]
        print(f"| {m} | {r['seconds']:.1f} | {fmt(r['seconds_over_floor'], '.2f')} | "
              f"{r['cpu_seconds']:.1f} | {fmt(r['cpu_seconds_over_floor'], '.2f')} | "
              f"{fmt(peak, '.0f')} | {fmt(r['max_abs_diff_vs_robustlens'], '.1e')} | "
              f"{fmt(r['max_abs_diff_vs_float64'], '.1e')} |")
    if args.out:
        summary = {"config": {"n": args.n, "batch": args.batch, "repeat": args.repeat,
                              "models": info.get("models"),
                              "data": info.get("data"), "layers": info.get("layers"),
                              "device": info.get("device"), "threads": info.get("threads"),
                              "load_average": os.getloadavg(),
                              "python": platform.python_version(), "torch": torch.__version__,
                              "kernel": "linear", "unbiased": True},
                   "results": {m: {k: v for k, v in r.items()
                                   if k not in ("matrix", "models", "data", "layers")}
                               for m, r in results.items()}}
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
