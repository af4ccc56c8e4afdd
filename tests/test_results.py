"""The results store: round trips, one computation per key, crashes and corruption."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.results import ResultStore, make_key

ROOT = Path(__file__).resolve().parent.parent


def test_round_trip_of_nested_values(tmp_path):
    s = ResultStore(tmp_path / "r.sqlite", assets=None)
    value = {"m": np.arange(6, dtype=np.float64).reshape(2, 3), "t": torch.ones(2, dtype=torch.float16),
             "layers": ["a", "b"], "n": 3, "nan": float("nan"), "nested": [{"x": 1.5}]}
    s.put("kind", {"model": "m", "n": 3}, value, compute_s=1.0)
    got = s.get("kind", {"n": 3, "model": "m"})  # key order does not matter
    assert np.array_equal(got["m"], value["m"]) and got["m"].dtype == np.float64
    assert torch.equal(got["t"], value["t"]) and got["layers"] == ["a", "b"]
    assert np.isnan(got["nan"]) and got["nested"][0]["x"] == 1.5
    assert s.get("kind", {"model": "m", "n": 4}) is None
    assert s.has("kind", {"model": "m", "n": 3})
    assert s.entries("kind")[0]["inputs"] == {"model": "m", "n": 3}


def test_keys_depend_on_every_input():
    base = {"a": 1, "b": [1, 2], "c": 0.1}
    assert make_key("k", base) == make_key("k", dict(reversed(list(base.items()))))
    assert make_key("k", base) != make_key("k", {**base, "c": 0.2})
    assert make_key("k", base) != make_key("other", base)
    with pytest.raises(TypeError):
        make_key("k", {"t": object()})


def test_one_computation_per_key_across_processes(tmp_path):
    """Four processes ask for the same key at once: one computes, three read."""
    db = tmp_path / "r.sqlite"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from core.results import ResultStore
        s = ResultStore({str(db)!r}, assets=None)
        def compute():
            time.sleep(1.0)
            return {{"v": 1}}
        print(s.get_or_compute("shared", {{"k": 1}}, compute)[1])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    fresh = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(fresh) == ["False", "False", "False", "True"]
    assert ResultStore(db, assets=None).compute_count("shared", {"k": 1}) == 1


def test_one_computation_per_key_across_threads(tmp_path):
    s = ResultStore(tmp_path / "r.sqlite", assets=None)
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"v": len(calls)}
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        s.get_or_compute("slow", {"k": 1}, compute))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and s.compute_count("slow", {"k": 1}) == 1
    assert sum(1 for _, fresh in results if fresh) == 1
    assert all(v == {"v": 1} for v, _ in results)


def test_killed_computation_leaves_nothing_half_written(tmp_path):
    db = tmp_path / "r.sqlite"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from core.results import ResultStore
        s = ResultStore({str(db)!r}, assets=None)
        s.put("done", {{"i": 0}}, {{"ok": True}})
        def compute():
            print("computing", flush=True)
            time.sleep(60)
            return {{"never": True}}
        s.get_or_compute("slow", {{"i": 1}}, compute)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "computing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = ResultStore(db, assets=None)
    assert s.get("done", {"i": 0}) == {"ok": True}   # earlier results survive
    assert s.get("slow", {"i": 1}) is None            # nothing half-written
    value, fresh = s.get_or_compute("slow", {"i": 1}, lambda: {"again": 1})
    assert fresh and value == {"again": 1}            # and the lock was released


def test_corrupt_store_is_moved_aside_and_rebuilt(tmp_path):
    db = tmp_path / "r.sqlite"
    db.write_bytes(os.urandom(8192))
    s = ResultStore(db, assets=None)
    assert s.rebuilt_from is not None and s.rebuilt_from.exists()
    s.put("k", {"a": 1}, {"v": 2})
    assert s.get("k", {"a": 1}) == {"v": 2}


def test_store_corrupted_while_open_keeps_working(tmp_path):
    db = tmp_path / "r.sqlite"
    s = ResultStore(db, assets=None)
    s.put("k", {"a": 1}, {"v": 1})
    s.conn.close()
    s._local.conn = None
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(db) + suffix)
        if p.exists():
            p.write_bytes(os.urandom(4096))
    assert s.get("k", {"a": 1}) is None   # lost with the file, but no crash
    s.put("k", {"a": 1}, {"v": 3})
    assert s.get("k", {"a": 1}) == {"v": 3}


def test_shipped_assets_are_consulted(tmp_path):
    live = ResultStore(tmp_path / "a.sqlite", assets=None)
    live.put("cka", {"m": 1}, {"matrix": np.eye(2)})
    live.export_asset("cka", {"m": 1}, tmp_path / "assets")
    fresh = ResultStore(tmp_path / "b.sqlite", assets=tmp_path / "assets")
    assert np.array_equal(fresh.get("cka", {"m": 1})["matrix"], np.eye(2))
    assert fresh.has("cka", {"m": 1})


def test_tensors_sharing_memory_are_stored(tmp_path):
    """A result may hold a tensor and a view of it (explain: the image and the
    InversionResult it comes from); safetensors refuses shared memory."""
    s = ResultStore(tmp_path / "r.sqlite", assets=None)
    images = torch.rand(2, 3, 4, 4)
    s.put("explain", {"i": 1}, {"image": images[0], "result": {"images": images}})
    got = s.get("explain", {"i": 1})
    assert torch.equal(got["image"], images[0]) and torch.equal(got["result"]["images"], images)


def test_one_json_encoder_for_the_store_and_for_people():
    from core import exports
    from core.attacks import PGD
    from core.results import encode, plain
    value = {"t": torch.tensor([1.0, float("nan")]), "a": np.arange(2), "x": np.float32(0.5),
             "inf": float("inf"), "attack": PGD("l2", 0.5, 0.1, 3), 3: (1, 2)}
    assert plain(value) == {"t": [1.0, None], "a": [0, 1], "x": 0.5, "inf": None,
                            "attack": PGD("l2", 0.5, 0.1, 3).to_dict(), "3": [1, 2]}
    meta, blob = encode(value)
    assert '"inf": {"__float__": "inf"}' in meta and blob is not None
    assert exports.plain is plain
