"""The Streamlit side of the cached backend (the widgets live in the other ui/ modules;
core/ imports no Streamlit).

- models: st.cache_resource keyed by (spec, device, trust, downloads), never by tensors;
- results: the SQLite store, one computation per key (locks), progress in the page;
- heavy compute waits for its lane of the server's compute queue (core.compute_queue),
  so memory stays bounded and no visitor's job delays the operator;
- each session's rights (core.access): what the operator allows it;
- a CUDA out-of-memory error moves the session to the CPU, with a message.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import time
from typing import Any, Callable, Iterator

import streamlit as st
import torch

from core import data, jobs
from core.analyses import inversion
from core.errors import RobustLensError
from core.jobs import Job, runner
from core.jobs.results import ResultStore
from core.models import probe, zoo
from core.models.probe import Probe, pick_device
from core.progress import Event
from core.server import access
from core.server.compute_queue import ComputeQueue

# ----------------------------------------------------------------- resources

@st.cache_resource(show_spinner=False)
def _store(path: str) -> ResultStore:
    return ResultStore(path)


def store() -> ResultStore:
    return _store(str(data.cache_dir() / "results.sqlite"))


@st.cache_resource(show_spinner=False)
def _server(address: str | None, settings: tuple[tuple[str, str], ...]) -> access.Server:
    return access.Server.started(address, dict(settings))


def server() -> access.Server:
    """How this server was started (its address) and what its operator allows (the
    ROBUSTLENS_ settings of its environment)."""
    return _server(st.get_option("server.address"),
                   tuple(sorted((k, v) for k, v in os.environ.items()
                                if k.startswith("ROBUSTLENS_"))))


@st.cache_resource(show_spinner=False)
def _queue(visitor_jobs: int, visitor_queue: int) -> ComputeQueue:
    return ComputeQueue(visitor_jobs, visitor_queue)


def compute_queue() -> ComputeQueue:
    return _queue(server().visitor_jobs, server().visitor_queue)


def claim_operator() -> None:
    """A session opened with the operator link (?operator=KEY) is the operator's; the
    key leaves the URL at once, so no shared link or screenshot carries it."""
    given = st.query_params.get(access.OPERATOR_PARAM)
    if given is not None:
        del st.query_params[access.OPERATOR_PARAM]
        if server().shared and access.is_operator_key(given):
            st.session_state["_operator"] = True


def rights() -> access.Rights:
    """What this session may do: everything on a local server or in the operator's
    session, what the operator allows visitors on a shared one."""
    return server().rights(operator=st.session_state.get("_operator", False))


@st.cache_resource(show_spinner=False)
def download_ledger() -> access.DownloadLedger:
    return access.DownloadLedger()


@st.cache_resource(show_spinner="Loading model...", max_entries=16)
def _model(spec: str, device: str, trust: bool, zoo_dir: str, download: bool) -> Probe:
    return zoo.load(spec, device=device, trust=trust, download=download)


def device() -> str:
    return st.session_state.get("device", "auto")


def resolved_device() -> torch.device:
    return pick_device(device())


def _loading(spec: str) -> tuple[str, str, bool, str, bool]:
    """What names a loaded model in the caches: spec, device, trust, zoo folder, and
    whether a hub name may download."""
    session = rights()
    trusted = session.pickles and spec in st.session_state.get("trusted_specs", set())
    return spec, str(resolved_device()), trusted, str(zoo.PRETRAINED), session.downloads


def model(spec: str) -> Probe:
    """The Probe for a model spec (shipped name, file path, robustbench:/torchvision:);
    a visitor's download counts against the server's download budget."""
    session = rights()
    fresh = session.visitor and spec.partition(":")[0] in zoo.HUBS and \
        zoo.cached_weights(spec) is None
    if fresh:
        download_ledger().check_room(session)
    loaded = _model(*_loading(spec))
    if fresh and (file := zoo.cached_weights(spec)) is not None:
        download_ledger().record(spec, file.stat().st_size)
    return loaded


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
def _step_seconds(spec: str, device: str, trust: bool, zoo_dir: str, download: bool,
                  layer: str | None) -> float:
    # not in the compute queue: a button's label must not wait for another session's job
    return inversion.seconds_per_step(_model(spec, device, trust, zoo_dir, download), layer)


def step_seconds(spec: str, layer: str | None = None) -> float:
    """Seconds of one inversion step of a model on this session's device (measured
    per model and device, again after TIMING_TTL_S)."""
    return _step_seconds(*_loading(spec), layer)


@st.cache_resource(show_spinner="Timing a pass of each model...", ttl=TIMING_TTL_S)
def _pass_seconds(spec: str, device: str, trust: bool, zoo_dir: str,
                  download: bool) -> tuple[float, float]:
    return probe.pass_seconds(_model(spec, device, trust, zoo_dir, download))


def pass_seconds(spec: str) -> tuple[float, float]:
    """Seconds of one image's forward pass, and of its forward and backward pass,
    through a model on this session's device (measured per model and device, again
    after TIMING_TTL_S)."""
    return _pass_seconds(*_loading(spec))


def run_seconds(job_list: list[Job]) -> float:
    """How long jobs take on this session's device (core.jobs.seconds: each kind's cost
    x the measured speed of its models here), with the needs not stored yet."""
    return jobs.seconds(job_list, pass_seconds, step_seconds, stored)


def over_limit(seconds: float) -> str | None:
    """Why this session may not start a run of `seconds` (a visitor's run above the
    operator's limit), or None."""
    limit = rights().run_limit_s
    if seconds <= limit:
        return None
    return (f"This run would take about {duration(seconds)} here, more than the "
            f"{duration(limit)} this shared server allows a visitor's run; whoever started "
            "it can raise ROBUSTLENS_VISITOR_RUN_S.")


def duration(seconds: float) -> str:
    """'40 s', '3 min', '1.5 h': a time estimate as a person says it."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def _computing(job_list: list[Job], waiting: Callable[[int], None] | None = None
               ) -> Iterator[None]:
    """A place in this session's lane of the compute queue (a visitor's run over the
    operator's time limit is refused first), and the out-of-memory fallback."""
    session = rights()
    if session.visitor:
        why = over_limit(run_seconds(job_list))
        if why:
            raise access.AccessError(why)
    name = st.session_state.setdefault("_session_id", secrets.token_hex(8))
    with compute_queue().slot(name, session.visitor, waiting), _oom_to_cpu():
        yield


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

        def waiting(ahead: int) -> None:
            bar.progress(0.0, text=f"waiting for {ahead} other run{'s' * (ahead > 1)} "
                                   "on this server...")

        with _computing([job], waiting):
            value, _ = runner.run(job, progress, store())
        status.update(label=f"{job.label}: done in {time.time() - t0:.1f} s", state="complete",
                      expanded=False)
    return value


def run_live(job_list: list[Job], show: Callable[[int, Event], None]) -> list:
    """Optimisation jobs side by side (core.runner), show(job index, event) drawing
    their frames in the page as they arrive; stored results come back at once."""
    if all(stored(j) is not None for j in job_list):
        return [stored(j) for j in job_list]
    with _computing(job_list):
        return runner.run_side_by_side(job_list, show, store())
