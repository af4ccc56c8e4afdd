"""The Streamlit side of the cached backend: the only core module that imports
streamlit (the widgets live in ui/).

- models: st.cache_resource keyed by (spec, device, trust), never by tensors;
- results: the SQLite store, one computation per key (locks), progress in the page;
- heavy compute runs under one lock per process so memory stays bounded;
- a CUDA out-of-memory error moves the session to the CPU, with a message.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, Iterator

import streamlit as st
import torch

from . import data, zoo
from .errors import RobustLensError
from .probe import Probe, pick_device
from .results import ResultStore

# ----------------------------------------------------------------- resources

@st.cache_resource(show_spinner=False)
def _store(path: str) -> ResultStore:
    return ResultStore(path)


def store() -> ResultStore:
    return _store(str(data.cache_dir() / "results.sqlite"))


@st.cache_resource(show_spinner=False)
def compute_lock() -> threading.Lock:
    """One heavy computation at a time per server: bounded memory, fair queue."""
    return threading.Lock()


@st.cache_resource(show_spinner="Loading model...", max_entries=16)
def _model(spec: str, device: str, trust: bool, zoo_dir: str) -> Probe:
    return zoo.load(spec, device=device, trust=trust)


def device() -> str:
    return st.session_state.get("device", "auto")


def resolved_device() -> torch.device:
    return pick_device(device())


def model(spec: str) -> Probe:
    """The Probe for a model spec (shipped name, file path, robustbench:/torchvision:)."""
    trusted = spec in st.session_state.get("trusted_specs", set())
    return _model(spec, str(resolved_device()), trusted, str(zoo.PRETRAINED))


@st.cache_resource(show_spinner=False)
def samples() -> list[data.Sample]:
    return data.cifar_samples()


@st.cache_resource(show_spinner=False)
def photos() -> list[data.Sample]:
    return data.ood_photos()


@st.cache_resource(show_spinner="Reading CIFAR-10...", ttl=600)
def _dataset(split: str, where: str) -> data.ImageTensorDataset | None:
    try:
        return data.cifar10(split)
    except data.DataNotFoundError:
        return None


def _data_key() -> str:
    return f"{os.environ.get('ROBUSTLENS_DATA', '')}|{data.cache_dir()}"


def test_set() -> data.ImageTensorDataset | None:
    """The CIFAR-10 test set, or None on a machine without it."""
    return _dataset("test", _data_key())


def forget_test_set() -> None:
    """After a download: look for the data set again."""
    _dataset.clear()


# --------------------------------------------------------------- model lists

def model_specs() -> list[str]:
    """Shipped models, then the ones added in this session."""
    return zoo.names() + [s for s in st.session_state.get("custom_specs", [])
                          if s not in zoo.names()]


def model_card(spec: str) -> dict:
    if spec in zoo.names():
        return zoo.card(spec)
    try:
        return model(spec).card
    except RobustLensError:
        return {"name": spec}


def label(spec: str) -> str:
    c = model_card(spec)
    return f"{zoo.short_label(c)}" if c.get("label") else spec


def model_kind(spec: str) -> str:
    """'robust' or 'standard', from the model's card."""
    return "robust" if zoo.is_robust(model_card(spec)) else "standard"


def robust_specs() -> list[str]:
    return [s for s in model_specs() if zoo.is_robust(model_card(s))]


def standard_specs() -> list[str]:
    return [s for s in model_specs() if not zoo.is_robust(model_card(s))]


# ------------------------------------------------------------------ compute

def run_cached(kind: str, inputs: dict, compute: Callable[[Callable], Any],
               label: str) -> Any:
    """The stored result for (kind, inputs), computing it once with progress.

    compute(progress) receives progress(done, total, message=""). A CUDA out-of-
    memory error retries on the CPU with a message.
    """
    st_store = store()
    value = st_store.get(kind, inputs)
    if value is not None:
        return value
    with st.status(label, expanded=True) as status:
        bar = st.progress(0.0, text="waiting for the compute queue...")
        t0 = time.time()

        def progress(done: float, total: float, message: object = "", *_: object) -> None:
            frac = 0.0 if not total else min(1.0, done / total)
            text = f"loss {message:.4f}" if isinstance(message, float) else str(message)
            bar.progress(frac, text=f"{text} ({time.time() - t0:.0f} s)".strip())

        with compute_lock(), _oom_to_cpu():
            value, _ = st_store.get_or_compute(kind, inputs, lambda: compute(progress))
        status.update(label=f"{label}: done in {time.time() - t0:.1f} s", state="complete",
                      expanded=False)
    return value


@contextlib.contextmanager
def _oom_to_cpu() -> Iterator[None]:
    """Out of GPU memory: free it, switch this session to the CPU and run the page
    again, so its jobs are rebuilt with CPU models (nothing half-stored: a failed
    computation writes nothing)."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        st.session_state["device_next"] = "cpu"  # applied before the widget is made
        st.session_state["notice"] = ("The GPU ran out of memory, so this session now "
                                      "computes on the CPU (same results, more time).")
        st.rerun()


def notices() -> None:
    """Messages carried over a rerun (e.g. the out-of-memory fallback)."""
    note = st.session_state.pop("notice", None)
    if note:
        st.warning(note, icon=":material/memory:")


def stored(job) -> Any | None:
    """The stored result of a core.jobs.Job, without computing anything."""
    return store().get(job.kind, job.inputs)


def run_job(job) -> Any:
    """The result of a core.jobs.Job: from the store, or computed once with progress."""
    return run_cached(job.kind, job.inputs, job.compute, job.label)


def run_live(job_list: list, show: Callable[[int, int, int, float, Any], None]) -> list:
    """Run optimisation jobs side by side (a thread each), calling
    show(job_index, step, steps, loss, images_or_None) from this script thread
    as frames arrive. Stored results come back at once; one computation per key."""
    import queue
    st_store = store()
    results = [st_store.get(j.kind, j.inputs) for j in job_list]
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    events: queue.Queue = queue.Queue()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        job = job_list[i]
        try:
            value, _ = st_store.get_or_compute(
                job.kind, job.inputs,
                lambda: job.compute(lambda step, steps, loss, images=None:
                                    events.put((i, step, steps, loss, images))))
            results[i] = value
        except BaseException as e:  # reported in the script thread below
            errors.append(e)
    with compute_lock(), _oom_to_cpu():
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in todo]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) or not events.empty():
            try:
                i, step, steps, loss, images = events.get(timeout=0.1)
            except queue.Empty:
                continue
            show(i, step, steps, loss, images)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    return results


