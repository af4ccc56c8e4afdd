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

from . import data, inversion, probe, runner, zoo
from .errors import RobustLensError
from .jobs import Job
from .probe import Probe, pick_device
from .progress import Event
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


def _loading(spec: str) -> tuple[str, str, bool, str]:
    """What names a loaded model in the caches: spec, device, trust, zoo folder."""
    trusted = spec in st.session_state.get("trusted_specs", set())
    return spec, str(resolved_device()), trusted, str(zoo.PRETRAINED)


def model(spec: str) -> Probe:
    """The Probe for a model spec (shipped name, file path, robustbench:/torchvision:)."""
    return _model(*_loading(spec))


@st.cache_resource(show_spinner=False)
def samples(kind: str = "cifar10") -> list[data.Sample]:
    """The shipped labelled images of a data set kind (see data.samples)."""
    return data.samples(kind)


@st.cache_resource(show_spinner=False)
def photos(size: int = 32) -> list[data.Sample]:
    return data.ood_photos(size)


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
    """The model's label on its card, else its name (a file's stem), else the spec."""
    c = model_card(spec)
    return c.get("label") or c.get("name") or spec


def model_kind(spec: str) -> str:
    """'robust' or 'standard', from the model's card."""
    return "robust" if zoo.is_robust(model_card(spec)) else "standard"


def robust_specs() -> list[str]:
    return [s for s in model_specs() if zoo.is_robust(model_card(s))]


def standard_specs() -> list[str]:
    return [s for s in model_specs() if not zoo.is_robust(model_card(s))]


def seeing_like(specs: list[str], like: str) -> list[str]:
    """The models among `specs` made for the images model `like` is made for (same data
    set, same input size): the ones a comparison with it can join."""
    def images(spec: str) -> tuple[str, int] | None:
        try:
            m = model(spec)
        except RobustLensError:
            return None
        return m.kind, m.input_size
    want = images(like)
    return [s for s in specs if images(s) == want]


# ------------------------------------------------------------------ compute

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


# timed again every 10 minutes: a timing taken while the machine was busy (another
# session's job, other work) would otherwise overstate every estimate until a restart
TIMING_TTL_S = 600


@st.cache_resource(show_spinner="Timing one step of each model...", ttl=TIMING_TTL_S)
def _step_seconds(spec: str, device: str, trust: bool, zoo_dir: str, layer: str | None) -> float:
    # not behind compute_lock: a button's label must not wait for another session's job
    return inversion.seconds_per_step(_model(spec, device, trust, zoo_dir), layer)


def step_seconds(spec: str, layer: str | None = None) -> float:
    """Seconds of one inversion step of a model on this session's device (measured
    per model and device, again after TIMING_TTL_S)."""
    return _step_seconds(*_loading(spec), layer)


@st.cache_resource(show_spinner="Timing a pass of each model...", ttl=TIMING_TTL_S)
def _pass_seconds(spec: str, device: str, trust: bool, zoo_dir: str) -> tuple[float, float]:
    return probe.pass_seconds(_model(spec, device, trust, zoo_dir))


def pass_seconds(spec: str) -> tuple[float, float]:
    """Seconds of one image's forward pass, and of its forward and backward pass,
    through a model on this session's device (measured per model and device, again
    after TIMING_TTL_S)."""
    return _pass_seconds(*_loading(spec))


def stored(job: Job) -> Any | None:
    """The stored result of a core.jobs.Job, without computing anything."""
    return runner.stored(job, store())


def run_job(job: Job) -> Any:
    """The result of a job: from the store, or computed once (core.runner), with a
    status box and a progress bar in the page, one heavy computation per server."""
    value = stored(job)
    if value is not None:
        return value
    with st.status(job.label, expanded=True) as status:
        bar = st.progress(0.0, text="waiting for the compute queue...")
        t0 = time.time()

        def progress(e: Event) -> None:
            text = e.text or (f"loss {e.loss:.4f}" if e.loss is not None else "")
            bar.progress(e.fraction, text=f"{text} ({time.time() - t0:.0f} s)".strip())

        with compute_lock(), _oom_to_cpu():
            value, _ = runner.run(job, progress, store())
        status.update(label=f"{job.label}: done in {time.time() - t0:.1f} s", state="complete",
                      expanded=False)
    return value


def run_live(job_list: list[Job], show: Callable[[int, Event], None]) -> list:
    """Optimisation jobs side by side (core.runner), show(job index, event) drawing
    their frames in the page as they arrive; stored results come back at once."""
    if all(stored(j) is not None for j in job_list):
        return [stored(j) for j in job_list]
    with compute_lock(), _oom_to_cpu():
        return runner.run_side_by_side(job_list, show, store())
