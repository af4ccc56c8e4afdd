"""Benchmark a sweep (core.sweep) in this process against the same sweep on Ray.

The grid: the shipped zoo's five models, linear CKA of every pair (self-pairs
included: 15 jobs) on the first N test images, and the reconstruction of two
shipped samples under each model (10 jobs). Each engine fills its own empty store
(no shipped results), so both compute every job. Ray runs on this machine ('local',
one task per CPU) or on a cluster (--ray ADDRESS). Prints the seconds and jobs a
minute of each; --out writes JSON.

    python bench/sweep.py -n 1000 --out bench/results/sweep-cpu.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import sweep, zoo  # noqa: E402
from core.results import ResultStore  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1000, help="test images per CKA job")
    p.add_argument("--steps", type=int, default=150, help="inversion steps")
    p.add_argument("--ray", default="local", help="local, or a cluster address")
    p.add_argument("--out")
    args = p.parse_args()
    spec = {"models": zoo.names(), "cka": {"pairs": "all", "n": args.n},
            "inversion": {"images": ["foolbox-00", "foolbox-01"], "steps": args.steps}}
    load = functools.lru_cache(maxsize=None)(lambda s: zoo.load(s, device="cpu"))
    planned = sweep.expand(spec, load)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in (None, args.ray):
            store = ResultStore(Path(tmp) / f"{engine or 'here'}.sqlite", assets=None)
            t0 = time.perf_counter()
            if engine:
                sweep.start_ray(engine)
            start = time.perf_counter() - t0
            done = sweep.execute(planned, load, engine, store)
            seconds = time.perf_counter() - t0
            assert not done.failed, done.failed
            rows["in process" if engine is None else f"ray {engine}"] = {
                "seconds": round(seconds, 1), "start_seconds": round(start, 1),
                "jobs": done.computed, "jobs_per_minute": round(60 * done.computed / seconds, 1)}
    out = {"grid": spec, "jobs": len(planned), "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "results": rows}
    for name, r in rows.items():
        print(f"| {name} | {r['jobs']} jobs | {r['seconds']} s (Ray start {r['start_seconds']} s) "
              f"| {r['jobs_per_minute']} jobs/min |")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
