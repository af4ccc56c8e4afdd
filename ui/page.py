"""The frame of an analysis page: header, figure captions, exports, error messages,
and the one action offered where the data set is missing."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import streamlit as st

from core import data, exports, figures, views
from core.errors import RobustLensError

from . import backend, presentation, state


def header(page: str) -> None:
    """The page's title (its analysis declares it, core.analyses.Page) and link on one
    line, its one-line summary with the paper, the rest in a popover (on a projector:
    the title and the short citation only)."""
    about = views.page(page)
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.title(about.title, width="stretch")
        with st.container(key="share", width="content"):
            state.share_link()
        with st.container(width="content"):
            presentation.exit_button()
    note = presentation.slide_note()
    if presentation.presenting():
        st.caption(note or about.cite)
        return
    with st.container(horizontal=True, vertical_alignment="center"):
        st.caption(f"{about.summary} · {about.cite}", width="stretch")
        with st.container(width="content"):
            with st.popover("About", icon=":material/info:"):
                st.markdown(about.about)
                st.caption(f"After {about.paper}.")
    if note:
        st.caption(f"Slide note: {note}")


def caption(page: str, text: str) -> None:
    """The line under a figure: what it shows, and the paper (short)."""
    st.caption(f"{text} · {views.page(page).cite}")


def export_menu(stem: str, files: list[tuple[str, Callable[[], Any], str, str]]) -> None:
    """An 'Export' popover of download buttons; each file is made only when clicked.
    files: (label, make_bytes_or_text, file name suffix, mime type)."""
    with st.popover("Export", icon=":material/download:"):
        for label, make, suffix, mime in files:
            st.download_button(label, make, f"{stem}{suffix}", mime, key=f"dl-{stem}-{suffix}",
                               on_click="ignore", width="stretch")


def figure_files(make: Callable[[str], bytes]) -> list[tuple[str, Callable[[], Any], str, str]]:
    """A figure's two exports for export_menu: make("png") at 300 dpi, make("svg")."""
    return [("Figure, PNG (300 dpi)", lambda: make("png"), ".png", "image/png"),
            ("Figure, SVG", lambda: make("svg"), ".svg", "image/svg+xml")]


def optimisation_files(inputs: dict, strips: dict[str, tuple[list, int, list | None]],
                       gifs: dict[str, list] | None = None) -> list:
    """Exports of optimisations for export_menu: PNG strips {label: (images, upscale,
    their names)} and GIFs {label: frames}, each file naming `inputs` (and its label)."""
    files = [(label, lambda s=strip: exports.image_strip(s[0], inputs, s[1], s[2]),
              f"-{k}.png", "image/png") for k, (label, strip) in enumerate(strips.items())]
    return files + [(label, lambda f=frames, n=label: exports.gif(f, {**inputs, "file": n}),
                     f"-{k}.gif", "image/gif") for k, (label, frames) in enumerate(
                         (gifs or {}).items())]


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


def results(job_list: list, label: str, key: str, where=st, *, what: str = "This view",
            icon: str = ":material/play_arrow:", auto: bool = False,
            live: Callable[[], tuple[list, int, int]] | None = None, **kw: Any) -> list | None:
    """The stored results of `job_list`, or the one action that gets them: where they
    read CIFAR-10's test set and it is not here, how to get it; else a button naming
    their time which, clicked, computes them (with progress; optimisation jobs side by
    side with their frames where live() gives (columns, upscale, width)) and shows the
    page again from the store. None until every one is stored: nothing runs unasked,
    but with auto=True a run estimated under a moment (LONG_RUN_S) starts at once."""
    with guard():
        got = [backend.stored(j) for j in job_list]
        if all(v is not None for v in got):
            return got
        todo = [j for j, v in zip(job_list, got) if v is None]
        if backend.test_set() is None and any(
                "test" in j.splits for job in todo for j in (job, *job.needs.values())):
            need_data(what, key)
            return None
    with guard():
        at_once = auto and backend.run_seconds(todo) <= LONG_RUN_S
    if at_once or button(label, todo, where, key=key, icon=icon, **kw):
        if live is not None:
            live_frames(todo, *live())
        else:
            with guard():
                for job in todo:
                    backend.run_job(job)
        st.rerun()
    return None


def result(job: Any, label: str, key: str, where=st, **kw: Any) -> Any | None:
    """One job's stored result, or the one action that gets it (see results)."""
    got = results([job], label, key, where, **kw)
    return None if got is None else got[0]


def live_frames(job_list: list, columns: list, scale: int, width: int, every: int = 20) -> list:
    """Optimisation jobs computed side by side, each one's frames drawn in its column as
    they arrive, with its step (and loss) every `every` steps; stored results come back
    at once. The frames are cleared at the end: the caller draws the results there."""
    slots = [c.empty() for c in columns]
    notes = [c.empty() for c in columns]

    def show(i: int, e: Any) -> None:
        if e.preview is not None:
            slots[i].image(figures.upscale(e.preview[0], scale), width=width)
        if e.preview is not None or int(e.done) % every == 0:
            loss = f" · loss {e.loss:.3f}" if e.loss is not None else ""
            notes[i].caption(f"step {int(e.done)}/{int(e.total)}{loss}")
    with guard():
        out = backend.run_live(job_list, show)
    for slot, note in zip(slots, notes):
        slot.empty()
        note.empty()
    return out


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
