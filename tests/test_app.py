"""The app and every page run under Streamlit's AppTest without an exception."""
from __future__ import annotations

import pytest
from helpers import run_app

from core import views

PAGES = list(views.pages().values())     # every page of the app


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
