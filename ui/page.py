"""The frame of an analysis page: header, figure captions, exports, error messages,
and the one action offered where the data set is missing."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import streamlit as st

from core import backend, data, views
from core.errors import RobustLensError

from . import presentation, state


def header(page: str, title: str, summary: str, details: str) -> None:
    """Title and link on one line, a one-line summary with the paper, the rest in a popover
    (on a projector: the title and the short citation only)."""
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.title(title, width="stretch")
        with st.container(key="share", width="content"):
            state.share_link()
        with st.container(width="content"):
            presentation.exit_button()
    note = presentation.slide_note()
    if presentation.presenting():
        st.caption(note or views.CITES[page])
        return
    with st.container(horizontal=True, vertical_alignment="center"):
        st.caption(f"{summary} · {views.CITES[page]}", width="stretch")
        with st.container(width="content"):
            with st.popover("About", icon=":material/info:"):
                st.markdown(details)
                st.caption(f"After {views.PAPERS[page]}.")
    if note:
        st.caption(f"Slide note: {note}")


def caption(page: str, text: str) -> None:
    """The line under a figure: what it shows, and the paper (short)."""
    st.caption(f"{text} · {views.CITES[page]}")


def export_menu(stem: str, files: list[tuple[str, Callable[[], Any], str, str]]) -> None:
    """An 'Export' popover of download buttons; each file is made only when clicked.
    files: (label, make_bytes_or_text, file name suffix, mime type)."""
    with st.popover("Export", icon=":material/download:"):
        for label, make, suffix, mime in files:
            st.download_button(label, make, f"{stem}{suffix}", mime, key=f"dl-{stem}-{suffix}",
                               on_click="ignore", width="stretch")


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show core's errors as one sentence; stop the page instead of a traceback."""
    try:
        yield
    except RobustLensError as e:
        st.warning(str(e), icon=":material/error:")
        st.stop()


LONG_RUN_S = 20   # a run estimated longer than this says so and waits for a click


def run_seconds(job_list: list) -> float:
    """How long jobs take here, with the needs not stored yet: an optimisation job's
    steps x images x the measured seconds of one step of its model, any other job's
    forward (and forward-backward) passes through each model x the measured seconds
    of one."""
    total = 0.0
    for job in job_list:
        steps = views.image_steps(job)
        if steps:
            total += backend.step_seconds(job.models[0]) * steps
        for spec, (forward, gradient) in views.model_passes(job).items():
            forward_s, gradient_s = backend.pass_seconds(spec)
            total += forward * forward_s + gradient * gradient_s
        total += run_seconds([need for need in job.needs.values() if backend.stored(need) is None])
    return total


def with_time(label: str, job_list: list) -> str:
    """A button's label, with how long its run takes where that is more than a moment."""
    eta = run_seconds(job_list)
    return f"{label} (about {duration(eta)})" if eta > LONG_RUN_S else label


def compute_button(label: str, todo: list, **button: Any) -> None:
    """A button that says how long `todo` takes here, computes it when clicked (with
    progress) and shows the page again with the results."""
    with guard():
        label = with_time(label, todo)
    if st.button(label, icon=":material/play_arrow:", **button):
        with guard():
            for job in todo:
                backend.run_job(job)
        st.rerun()


def duration(seconds: float) -> str:
    """'40 s', '3 min', '1.5 h': a time estimate as a person says it."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@st.cache_data(ttl=300, show_spinner=False)
def _online() -> bool:
    return data.can_download()


def _fetch() -> None:
    bar = st.progress(0.0, text="Downloading CIFAR-10 (163 MB)...")

    def progress(done: int, total: int) -> None:
        if total:
            bar.progress(min(1.0, done / total),
                         text=f"Downloading CIFAR-10: {done / 2**20:.0f} of {total / 2**20:.0f} MB")
    with guard():
        data.download_cifar10(progress=progress)
    bar.progress(1.0, text="Unpacking and decoding...")
    backend.forget_test_set()
    with guard():
        data.cifar10("test")
    st.rerun()


def need_data(what: str, key: str) -> None:
    """The one action where the test set is missing: fetch it (online) or say how."""
    if _online():
        st.info(f"{what} needs the CIFAR-10 test set, which is not on this machine yet.",
                icon=":material/download:")
        if st.button("Fetch CIFAR-10 (163 MB)", key=f"fetch-{key}", icon=":material/download:"):
            _fetch()
    else:
        st.info(f"{what} needs the CIFAR-10 test set, which is not on this machine, and this "
                "machine cannot reach the internet to fetch it; `python -m core data --from "
                "PATH` adds a copy you have.", icon=":material/cloud_off:")
