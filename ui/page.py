"""The frame of an analysis page: header, figure captions, exports, error messages,
and the one action offered where the data set is missing."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import streamlit as st

from core import data, views
from core.errors import RobustLensError

from . import backend, presentation, state


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
        st.caption(note or views.cite(page))
        return
    with st.container(horizontal=True, vertical_alignment="center"):
        st.caption(f"{summary} · {views.cite(page)}", width="stretch")
        with st.container(width="content"):
            with st.popover("About", icon=":material/info:"):
                st.markdown(details)
                st.caption(f"After {views.paper(page)}.")
    if note:
        st.caption(f"Slide note: {note}")


def caption(page: str, text: str) -> None:
    """The line under a figure: what it shows, and the paper (short)."""
    st.caption(f"{text} · {views.cite(page)}")


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


def button(label: str, job_list: list, where=st, **kw: Any) -> bool:
    """A button that names how long `job_list` takes here; on a shared server, a run
    longer than the operator allows visitors is offered disabled, with one sentence."""
    with guard():
        eta = backend.run_seconds(job_list)
    why = backend.over_limit(eta)
    label = f"{label} (about {backend.duration(eta)})" if eta > LONG_RUN_S else label
    clicked = where.button(label, disabled=why is not None, **kw)
    if why:
        where.caption(why)
    return clicked


def compute_button(label: str, todo: list, **kw: Any) -> None:
    """A button that says how long `todo` takes here, computes it when clicked (with
    progress) and shows the page again with the results."""
    if button(label, todo, icon=":material/play_arrow:", **kw):
        with guard():
            for job in todo:
                backend.run_job(job)
        st.rerun()


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
    """The one action where the test set is missing: fetch it (online, where this
    session may download) or say how."""
    if not backend.rights().downloads:
        st.info(f"{what} needs the CIFAR-10 test set, which is not on this server; "
                "downloads are off on this shared server (whoever started it can turn them "
                "on, or add a copy with `python -m core data --from PATH`).",
                icon=":material/cloud_off:")
    elif _online():
        st.info(f"{what} needs the CIFAR-10 test set, which is not on this machine yet.",
                icon=":material/download:")
        if st.button("Fetch CIFAR-10 (163 MB)", key=f"fetch-{key}", icon=":material/download:"):
            _fetch()
    else:
        st.info(f"{what} needs the CIFAR-10 test set, which is not on this machine, and this "
                "machine cannot reach the internet to fetch it; `python -m core data --from "
                "PATH` adds a copy you have.", icon=":material/cloud_off:")
