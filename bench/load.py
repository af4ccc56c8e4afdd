"""Load test: several browser sessions at once against a local app (loopback only).

Each session opens the inversion page for an image and waits until both
reconstructions are shown, again and again, for a bounded time. Half of the
requests ask for a new reconstruction (a fresh seed), half for one already in
the store. Reports throughput, latency percentiles, errors and peak memory.

    python bench/load.py --sessions 6 --seconds 180 --out bench/results/load.json
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_browser import ARGS, CHROMIUM, Server, _rss_peak_mb, settle  # noqa: E402

KEYS = [f"foolbox-{i:02d}" for i in range(20)]


def session(url: str, deadline: float, steps: int, rng: random.Random, out: list, lock):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        warm_seeds: list[tuple[str, int]] = []
        while time.time() < deadline:
            fresh = not warm_seeds or rng.random() < 0.5
            key, seed = (rng.choice(KEYS), rng.randrange(10**6)) if fresh else rng.choice(warm_seeds)
            t0 = time.time()
            ok = True
            try:
                page.goto(f"{url}/inversion?inv_img={key}&inv_steps={steps}&inv_seed={seed}")
                page.get_by_text(re.compile(r"^representation loss [\d.]+ · PSNR")).nth(1).wait_for(timeout=600_000)
                settle(page)
                ok = page.locator("[data-testid='stException']").count() == 0
            except Exception:  # noqa: BLE001 - a failed request is a data point
                ok = False
            with lock:
                out.append({"fresh": fresh, "seconds": time.time() - t0, "ok": ok})
            if fresh and ok:
                warm_seeds.append((key, seed))
        browser.close()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--steps", type=int, default=60, help="inversion steps per request")
    ap.add_argument("--out")
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="rl-load-"))
    srv = Server(cache).start()
    records: list[dict] = []
    lock = threading.Lock()
    deadline = time.time() + args.seconds
    threads = [threading.Thread(target=session, args=(srv.url, deadline, args.steps,
                                                      random.Random(i), records, lock))
               for i in range(args.sessions)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    peak = _rss_peak_mb(srv.proc.pid)
    srv.kill()
    from core.results import ResultStore
    counts = [c for (c,) in ResultStore(cache / "results.sqlite", assets=None)._query(
        "SELECT count FROM computations")]
    ok = [r for r in records if r["ok"]]
    report = {"sessions": args.sessions, "seconds": round(wall, 1), "requests": len(records),
              "errors": len(records) - len(ok),
              "throughput_per_min": round(60 * len(ok) / wall, 2),
              "fresh": {"n": sum(r["fresh"] for r in ok),
                        "p50_s": pct([r["seconds"] for r in ok if r["fresh"]], 0.5),
                        "p95_s": pct([r["seconds"] for r in ok if r["fresh"]], 0.95)},
              "stored": {"n": sum(not r["fresh"] for r in ok),
                         "p50_s": pct([r["seconds"] for r in ok if not r["fresh"]], 0.5),
                         "p95_s": pct([r["seconds"] for r in ok if not r["fresh"]], 0.95)},
              "all_p50_s": statistics.median([r["seconds"] for r in ok]) if ok else None,
              "keys_computed_more_than_once": sum(c > 1 for c in counts),
              "server_peak_rss_mb": round(peak)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
