"""The app and every page run under Streamlit's AppTest without an exception."""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["pages/home.py", "pages/cka.py", "pages/stitching.py", "pages/inversion.py",
         "pages/manipulation.py"]


class _WarmServerPages(PagesManager):
    """AppTest resets Streamlit's legacy "pages directory" flag before every run,
    as if each run were the first on a cold server. A served app leaves that mode
    on its first visit (backend.page_setup); these tests run the warm path."""

    def __init__(self, *args, **kwargs) -> None:
        PagesManager.uses_pages_directory = False
        super().__init__(*args, **kwargs)


app_test_module.PagesManager = _WarmServerPages


def run_app(page: str | None = None, params: dict | None = None, timeout: float = 120) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    for k, v in (params or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_without_exception(page):
    at = run_app(page)
    assert not at.exception, [e.value for e in at.exception]


def test_sidebar_has_device_and_model_pickers():
    at = run_app()
    labels = [s.label for s in at.sidebar.selectbox]
    assert "Device" in labels


@pytest.mark.parametrize("page, key", [("pages/cka.py", "cka_folder"),
                                       ("pages/stitching.py", "st_folder"),
                                       ("pages/manipulation.py", "mf_folder")])
def test_a_link_with_an_image_folder_shows_its_field_at_once(page, key, tmp_path):
    """A shared link naming an image folder shows the folder's field on its first run,
    where the person can read and change it (it was hidden until the next click, while
    the page already read the folder)."""
    missing = str(tmp_path / "no-such-folder")
    at = run_app(page, {key: missing})
    fields = [t for t in at.text_input if t.key == key]
    assert fields and fields[0].value == missing, [t.key for t in at.text_input]


def test_a_link_to_a_model_this_server_lacks_says_so():
    at = run_app(params={"a": "/elsewhere/my model#1.safetensors"})
    assert not at.exception, [e.value for e in at.exception]
    notes = [i.value for i in at.info]
    assert any("names model A as '/elsewhere/my model#1.safetensors'" in n
               and "showing L2 1.0 (robust) instead" in n for n in notes), notes
    at.run()   # said once, not on every click
    assert not any("names model A" in i.value for i in at.info)
