"""Benchmark the similarity measures of core.analyses.similarity against the peer
libraries on the measures they share, in one run, on the same features.

Features: the CKA page's default pair (models A and B of the sidebar), its block
outputs pooled over space, on the first --n CIFAR-10 test images of the fixed shuffle.
For every measure: the time of the whole layer x layer matrix and of one cell; for
the measures a peer also computes, the peer's time on the same features and the
largest difference from ours:
  linear CKA, debiased   pytorch-cka's cka_from_features (its unbiased HSIC)
  RSA (Pearson, Spearman) rsatoolbox: calc_rdm(correlation) and compare(corr/spearman)
Also: one cell's calibration (permutation null and interval, 100 draws each), and the
time the CKA page takes to open the shipped default view at a clicked cell (the store,
no data set, no computation).

Install pytorch-cka with `pip install --no-deps pytorch-cka` (rsatoolbox is in the test
environment). anatome and netrep (SVCCA, PWCCA, Procrustes) are not on the package
registry this was run against: those measures are checked in tests/test_similarity.py
against re-derivations. Prints a markdown table; --out writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
# this file's folder holds bench/cka.py, which must not shadow pytorch-cka's `cka` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from core import data, jobs, views  # noqa: E402
from core.analyses import similarity  # noqa: E402
from core.models import zoo  # noqa: E402


def features(n: int) -> tuple[dict, dict]:
    load = zoo.loader("cpu")
    a, b = load(views.DEFAULT_A), load(views.DEFAULT_B)
    images = data.fixed_subset(data.cifar10("test"), n)
    la, lb = jobs.layer_list(a, "blocks"), jobs.layer_list(b, "blocks")
    out = ({k: [] for k in la}, {k: [] for k in lb})
    with torch.no_grad():
        for x, _ in data.batches(images, 500, "cpu", None):
            for side, probe, names in ((0, a, la), (1, b, lb)):
                for k, h in probe.features(x, names).items():
                    out[side][k].append(similarity.rows(h, "pool"))
    return tuple({k: torch.cat(v) for k, v in side.items()} for side in out)


def timed(fn, repeat: int = 1):
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return value, best


def peers(fa: dict, fb: dict) -> dict:
    out = {}
    try:
        from cka import cka_from_features   # pytorch-cka
        grid = lambda: np.array([[float(cka_from_features(x, y)) for y in fb.values()]  # noqa: E731
                                 for x in fa.values()])
        out["linear_cka_debiased"] = ("pytorch-cka", *timed(grid))
    except ImportError:
        pass
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm
    from rsatoolbox.rdm import compare as rsa_compare
    for name, method in (("rsa_pearson", "corr"), ("rsa_spearman", "spearman")):
        def grid(method=method):
            ra = [calc_rdm(Dataset(x.numpy()), method="correlation") for x in fa.values()]
            rb = [calc_rdm(Dataset(y.numpy()), method="correlation") for y in fb.values()]
            return np.array([[float(rsa_compare(p, q, method=method)[0, 0]) for q in rb]
                             for p in ra])
        out[name] = ("rsatoolbox", *timed(grid))
    return out


def page_click_seconds() -> float | None:
    """Opening the CKA page's shipped default view at a clicked cell, from the store."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from helpers import run_app
    except ImportError:
        return None
    run_app("pages/cka.py")   # a warm server: imports and the zoo loaded once
    start = time.perf_counter()
    at = run_app("pages/cka.py", {"cka_cell": "[5, 7]"})
    seconds = time.perf_counter() - start
    return None if at.exception else seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=2000, help="test images")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    fa, fb = features(args.n)
    theirs = peers(fa, fb)
    rows = []
    for name in similarity.MEASURES:
        matrix, seconds = timed(lambda name=name: similarity.matrix(fa, fb, name))
        _, cell = timed(lambda name=name: similarity.compare(fa["layer3.1"], fb["layer3.1"],
                                                             name), repeat=3)
        row = {"measure": name, "matrix_s": round(seconds, 3), "cell_s": round(cell, 4)}
        if name in theirs:
            peer, value, peer_s = theirs[name]
            row.update(peer=peer, peer_matrix_s=round(peer_s, 3),
                       max_difference=float(np.abs(matrix - value).max()))
        rows.append(row)
    _, calibration = timed(lambda: similarity.calibrate(fa["layer3.1"], fb["layer3.1"],
                                                        "linear_cka_debiased"))
    result = {"n": args.n, "layers": [len(fa), len(fb)], "threads": torch.get_num_threads(),
              "measures": rows, "calibration_one_cell_s": round(calibration, 2),
              "page_click_s": page_click_seconds()}
    print(f"{args.n} images, {len(fa)} x {len(fb)} block layers pooled, "
          f"{result['threads']} threads\n")
    print("| measure | matrix (s) | one cell (s) | peer | peer matrix (s) | max difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['measure']} | {r['matrix_s']} | {r['cell_s']} | {r.get('peer', '')} | "
              f"{r.get('peer_matrix_s', '')} | {r.get('max_difference', ''):.2g} |"
              if "peer" in r else
              f"| {r['measure']} | {r['matrix_s']} | {r['cell_s']} | | | |")
    print(f"\nOne cell's calibration (100 permutations, 100 resamples): "
          f"{result['calibration_one_cell_s']} s; the page at a clicked shipped cell: "
          f"{result['page_click_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
