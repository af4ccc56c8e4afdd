"""The first lines of every page script: a cold server's deep link hands over to app.py.

Kept free of heavy imports (no torch, no core), so that the hand-over happens before a
page's imports take seconds on a cold server.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

import streamlit as st

PRESENT_CSS = Path(__file__).resolve().parent / "static" / "present.css"
_RUN = threading.local()


def present_in_url() -> bool:
    """Whether the link asks for presentation mode (?present=1)."""
    return st.query_params.get("present") in ("1", "true", "True")


@contextlib.contextmanager
def app_run() -> Iterator[None]:
    """app.py runs the chosen page inside this: setup() can then tell a page run by
    app.py from one Streamlit started on its own."""
    _RUN.in_app = True
    try:
        yield
    finally:
        _RUN.in_app = False


def setup() -> None:
    """A cold server whose first visitor follows a link to /cka runs pages/cka.py as a
    legacy "pages directory" page, without app.py (no sidebar, no models): switch
    Streamlit to the st.navigation mode of app.py and rerun, so the link opens the full
    app. Decided per script run (a thread-local set by app.py), not by the shared
    PagesManager flag, which another session may already have flipped. A ?present=1
    link keeps the legacy page list hidden meanwhile."""
    if getattr(_RUN, "in_app", False):
        return
    from streamlit.runtime.pages_manager import PagesManager
    if present_in_url():
        st.set_page_config(initial_sidebar_state="collapsed")
        st.html(f"<style>{PRESENT_CSS.read_text()}</style>")
    PagesManager.uses_pages_directory = False
    st.rerun()
