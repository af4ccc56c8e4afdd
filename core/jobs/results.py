"""Results store: SQLite in the cache folder, keyed by a hash of every input.

A value is any structure of dicts, lists, numbers, strings and tensors/arrays.
Its plain part is stored as JSON and its arrays as safetensors bytes (no
pickle: reading a store never executes code). Each write is one transaction,
so a process killed mid-computation leaves nothing half-written. A store that
SQLite cannot read is moved aside and rebuilt.

Precomputed results shipped in `assets/results/` are consulted after the
local store, so the app answers at once on a fresh machine.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core import PROJECT
from core.data import cache_dir
from core.errors import StoreError

SCHEMA = 1
ASSETS = PROJECT / "assets" / "results"

_DDL = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    inputs TEXT NOT NULL,
    meta TEXT NOT NULL,
    arrays BLOB,
    created REAL NOT NULL,
    compute_s REAL
)"""
# how often each key was computed here: the check that locks avoid duplicates
_DDL_COUNTS = "CREATE TABLE IF NOT EXISTS computations (key TEXT PRIMARY KEY, count INTEGER NOT NULL)"


def canonical(obj: Any) -> Any:
    """A JSON-able, order-independent form of inputs (floats rounded to 12 digits)."""
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    if hasattr(obj, "to_dict"):
        return canonical(obj.to_dict())
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot key on a {type(obj).__name__}")


def make_key(kind: str, inputs: dict) -> str:
    blob = json.dumps({"schema": SCHEMA, "kind": kind, "inputs": canonical(inputs)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def plain(value: Any, arrays: dict[str, torch.Tensor] | None = None) -> Any:
    """A JSON-able copy of a value made of dicts, lists, numbers, strings, tensors,
    numpy arrays and objects with to_dict(): the one JSON encoder of core.

    Without `arrays` (for people: exports, the CLI, job specs) tensors and arrays
    become nested lists, non-finite floats None (strict JSON) and any other object
    its str(). With `arrays`
    (the store's lossless form, read back by `decode`) each tensor or array moves
    into that dict under a name the copy refers to, and non-finite floats stay.
    """
    storages: set[int] = set()

    def keep(t: torch.Tensor, tag: str) -> dict:
        t = t.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in storages:  # safetensors refuses shared memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        name = f"a{len(arrays)}"
        arrays[name] = t
        return {tag: name}

    def walk(v: Any) -> Any:
        if torch.is_tensor(v):
            return keep(v, "__tensor__") if arrays is not None else walk(v.detach().cpu().numpy())
        if isinstance(v, np.ndarray):
            if arrays is not None:
                # a copy where the array is read-only (one Ray handed over)
                return keep(torch.from_numpy(np.require(v, requirements=["C", "W"])),
                            "__ndarray__")
            return walk(v.tolist())
        if isinstance(v, dict):
            return {str(k): walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, (np.floating, np.integer, np.bool_)):
            return walk(v.item())
        if isinstance(v, float) and not math.isfinite(v):
            return {"__float__": repr(v)} if arrays is not None else None
        if hasattr(v, "to_dict"):
            return walk(v.to_dict())
        if arrays is None and not isinstance(v, (str, int, float, bool, type(None))):
            return str(v)  # e.g. a path, for a person to read
        return v
    return walk(value)


def write_json(value: Any, path: str) -> dict:
    """A result written as plain JSON (what --out gives)."""
    with open(path, "w") as f:
        json.dump(plain(value), f, indent=1)
    return {"written": path}


def encode(value: Any) -> tuple[str, bytes | None]:
    """value -> (JSON text, safetensors bytes or None): the store's form of `plain`."""
    arrays: dict[str, torch.Tensor] = {}
    meta = json.dumps(plain(value, arrays), allow_nan=False)
    return meta, (st_save(arrays) if arrays else None)


def decode(meta: str, blob: bytes | None) -> Any:
    arrays = st_load(blob) if blob else {}

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if "__tensor__" in v:
                return arrays[v["__tensor__"]]
            if "__ndarray__" in v:
                return arrays[v["__ndarray__"]].numpy()
            if "__float__" in v:
                return float(v["__float__"])
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return walk(json.loads(meta))


class ResultStore:
    """get / put / get_or_compute on an SQLite file (default: cache_dir()/results.sqlite)."""

    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, path: str | os.PathLike | None = None,
                 assets: Path | None = ASSETS) -> None:
        self.path = Path(path) if path else cache_dir() / "results.sqlite"
        self.assets = assets
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rebuilt_from: Path | None = None
        self._local = threading.local()
        self._open_checked()

    # ----------------------------------------------------------- connection
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_DDL)
        conn.execute(_DDL_COUNTS)
        return conn

    def _open_checked(self) -> None:
        try:
            conn = self._connect()
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            conn.execute("SELECT count(*) FROM results").fetchone()
            conn.close()
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
        except sqlite3.DatabaseError:
            self._move_aside()

    def _move_aside(self) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                os.replace(p, Path(str(aside) + suffix))
        self.rebuilt_from = aside
        self._local = threading.local()
        conn = self._connect()
        conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self._connect()
        return c

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise StoreError(f"the results store is busy: {e}") from e
            self._move_aside()  # corrupt under us: rebuild, keep the app up
            return self.conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------- access
    def key(self, kind: str, inputs: dict) -> str:
        return make_key(kind, inputs)

    def get(self, kind: str, inputs: dict) -> Any | None:
        key = make_key(kind, inputs)
        rows = self._query("SELECT meta, arrays FROM results WHERE key=?", (key,))
        if rows:
            try:
                return decode(rows[0][0], rows[0][1])
            except (ValueError, KeyError, TypeError, SafetensorError):
                pass   # a damaged row (a disk fault) is computed again and replaced by put
        return self._get_asset(key)

    def has(self, kind: str, inputs: dict) -> bool:
        """Whether `get` finds a value: a damaged row does not count, so that a sweep
        computes it again rather than skip it."""
        return self.get(kind, inputs) is not None

    def put(self, kind: str, inputs: dict, value: Any, compute_s: float | None = None,
            computed: bool = False) -> str:
        """Store a value (one transaction); computed=True also counts a computation."""
        key = make_key(kind, inputs)
        meta, blob = encode(value)
        row = (key, kind, json.dumps(canonical(inputs)), meta, blob, time.time(), compute_s)
        try:
            with self.conn:  # one transaction: the value and its count, or neither
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?)", row)
                if computed:
                    self.conn.execute("INSERT INTO computations VALUES (?, 1) ON CONFLICT(key) "
                                      "DO UPDATE SET count = count + 1", (key,))
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise StoreError(f"the results store is busy: {e}") from e
            self._move_aside()
            self._query("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?)", row)
        return key

    def compute_count(self, kind: str, inputs: dict) -> int:
        """How many times this key was computed (not read) through this store."""
        rows = self._query("SELECT count FROM computations WHERE key=?", (make_key(kind, inputs),))
        return int(rows[0][0]) if rows else 0

    def delete(self, kind: str, inputs: dict) -> None:
        self._query("DELETE FROM results WHERE key=?", (make_key(kind, inputs),))

    def entries(self, kind: str | None = None) -> list[dict]:
        sql = "SELECT key, kind, inputs, created, compute_s FROM results"
        rows = self._query(sql + (" WHERE kind=?" if kind else ""), (kind,) if kind else ())
        return [{"key": r[0], "kind": r[1], "inputs": json.loads(r[2]), "created": r[3],
                 "compute_s": r[4]} for r in rows]

    def get_or_compute(self, kind: str, inputs: dict, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, computed_now). One computation per key at a time, across
        threads (a lock per key) and processes (an advisory file lock)."""
        value = self.get(kind, inputs)
        if value is not None:
            return value, False
        key = make_key(kind, inputs)
        with self._key_lock(key):
            value = self.get(kind, inputs)  # someone else may have finished it
            if value is not None:
                return value, False
            t0 = time.time()
            value = compute()
            self.put(kind, inputs, value, time.time() - t0, computed=True)
            return value, True

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        with ResultStore._locks_guard:
            lock = ResultStore._locks.setdefault(key, threading.Lock())
        lock_dir = self.path.parent / "locks"
        lock_dir.mkdir(exist_ok=True)
        with lock, open(lock_dir / f"{key}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def merge(self, other: str | os.PathLike,
              current: Callable[[str, dict], bool] | None = None) -> dict[str, int]:
        """Bring the results of another store here (a sweep run elsewhere): keys this
        store lacks are added; on a clash the value here stays and a difference is
        counted; rows that `current` refuses (a job kind's older version) or whose key
        does not match their inputs are skipped. Returns the counts."""
        path = Path(other)
        if not path.is_file():
            raise StoreError(f"there is no results store {other}")
        counts = {"added": 0, "same": 0, "different": 0, "skipped": 0}
        try:
            src = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{other} is not a readable results store: {e}") from e
        try:
            rows = src.execute("SELECT key, kind, inputs, meta, arrays, created, compute_s "
                               "FROM results")
            for key, kind, inputs, meta, blob, created, compute_s in rows:
                decoded = json.loads(inputs)
                if make_key(kind, decoded) != key or (current and not current(kind, decoded)):
                    counts["skipped"] += 1
                    continue
                here = self._query("SELECT meta, arrays FROM results WHERE key=?", (key,))
                if here:
                    counts["same" if tuple(here[0]) == (meta, blob) else "different"] += 1
                    continue
                self._query("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?)",
                            (key, kind, inputs, meta, blob, created, compute_s))
                counts["added"] += 1
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{other} is not a readable results store: {e}") from e
        finally:
            src.close()
        return counts

    # -------------------------------------------------------------- assets
    def _get_asset(self, key: str) -> Any | None:
        if self.assets is None:
            return None
        meta = self.assets / f"{key}.json"
        if not meta.exists():
            return None
        arr = self.assets / f"{key}.safetensors"
        return decode(meta.read_text(), arr.read_bytes() if arr.exists() else None)

    def export_asset(self, kind: str, inputs: dict, directory: Path | None = None,
                     scrub: Callable[[Any], Any] | None = None) -> Path:
        """Copy a stored result into assets/results/ (precomputed, shipped).
        `scrub` rewrites the value first (e.g. drops what is made of data-set pixels)."""
        key = make_key(kind, inputs)
        d = directory or self.assets or ASSETS
        rows = self._query("SELECT meta, arrays FROM results WHERE key=?", (key,))
        if not rows and (d / f"{key}.json").exists():
            return d / f"{key}.json"          # shipped already (and served from there)
        if not rows:
            raise StoreError(f"no stored {kind} result for these inputs")
        meta, blob = rows[0]
        if scrub is not None:
            meta, blob = encode(scrub(decode(meta, blob)))
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{key}.json").write_text(meta)
        if blob:
            (d / f"{key}.safetensors").write_bytes(blob)
        # what the result was computed from, so a test can check it against pretrained/
        (d / f"{key}.inputs").write_text(json.dumps({"kind": kind, "inputs": canonical(inputs)}))
        return d / f"{key}.json"


_default: ResultStore | None = None
_default_guard = threading.Lock()


def default_store() -> ResultStore:
    global _default
    with _default_guard:
        if _default is None or _default.path != cache_dir() / "results.sqlite":
            _default = ResultStore()
        return _default
