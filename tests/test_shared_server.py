"""A server bound to anything but loopback is shared: there a visitor runs no code, reads
no server path and starts no run over the operator's limits, and the UI says so in one
sentence; the operator's link gives back every right. Under AppTest (the app's own
runs, server.address set as a flag would set it) and in a real browser against
`streamlit run app.py --server.address 0.0.0.0`."""
from __future__ import annotations

import io
import os
import pickle
import re
import time

import pytest
from streamlit import config

from core import access
from helpers import (Server, assert_clean, both_reconstructions, open_page, run_app, settle,
                     shot)


@pytest.fixture
def shared(world, monkeypatch):
    """The app as a server started with --server.address 0.0.0.0 would run it."""
    for name in list(os.environ):
        if name.startswith("ROBUSTLENS_") and name not in ("ROBUSTLENS_CACHE", "ROBUSTLENS_DATA"):
            monkeypatch.delenv(name)
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    yield monkeypatch
    config.set_option("server.address", before)


def sidebar_text(at) -> str:
    return "\n".join(str(x.value) for x in [*at.sidebar.caption, *at.sidebar.warning,
                                             *at.sidebar.markdown])


def add_model(at, typed: str):
    at.sidebar.text_input(key="ckpt_spec").input(typed)
    next(b for b in at.sidebar.button if b.label == "Add").click().run()
    return at


def test_a_visitor_is_offered_no_code_running_load_and_no_server_path(shared, tmp_path):
    at = run_app()
    assert not at.exception
    assert not [c for c in at.sidebar.checkbox if c.key == "ckpt_trust"]
    said = sidebar_text(at)
    assert "loading pickles that can run code, reading files by path, downloads are off" in said
    assert at.sidebar.text_input(key="ckpt_spec").label == "...or a name"
    secret = tmp_path / "model.pt"
    secret.write_bytes(b"x")
    for typed in (str(secret), "/etc/passwd", "../../etc/passwd", "~/.bashrc", "file:///etc/passwd",
                  "x" * 3000, "timm:../../etc/passwd", "madrylab:a/../../b"):
        add_model(at, typed)
        assert not at.exception
        warning = at.sidebar.warning[0].value
        assert "reads no files by path" in warning or "is not a model name" in warning or \
            "is not a path" in warning, (typed, warning)
        assert "Traceback" not in warning and "Error" not in warning
    add_model(at, "timm:resnet18.a1_in1k")     # a hub name not cached: no download for visitors
    assert "Downloads are off" in at.sidebar.warning[0].value


def test_an_image_folder_of_a_link_is_refused_for_a_visitor(shared, tmp_path):
    at = run_app("pages/cka.py", {"cka_folder": str(tmp_path)})
    assert not at.exception
    assert any("reads no files by path" in w.value for w in at.warning)
    assert not any(b.label.startswith("Compute") and "folder" in b.label for b in at.button)


def test_the_operators_folders_are_readable_and_nothing_else(shared, tmp_path):
    (tmp_path / "models").mkdir()
    shared.setenv("ROBUSTLENS_SERVER_FOLDERS", str(tmp_path / "models"))
    at = run_app()
    assert at.sidebar.text_input(key="ckpt_spec").label == "...or a path / name"
    add_model(at, str(tmp_path / "models" / "absent.pt"))
    assert "no checkpoint file" in at.sidebar.warning[0].value or \
        "neither a shipped model" in at.sidebar.warning[0].value
    add_model(at, str(tmp_path / "models" / ".." / "outside.pt"))
    assert "only files in the folders its operator allows" in at.sidebar.warning[0].value


def test_a_visitors_run_over_the_operators_limit_is_not_offered(shared):
    shared.setenv("ROBUSTLENS_VISITOR_RUN_S", "0.001")
    at = run_app("pages/cka.py", {"cka_n": "1000"})
    assert not at.exception
    compute = [b for b in at.button if b.label.startswith("Compute")]
    assert compute and all(b.disabled for b in compute)
    assert any("more than the 1 s this shared server allows a visitor's run" in c.value
               for c in at.caption)


def test_the_operator_link_gives_every_right_and_leaves_the_url(shared):
    at = run_app(None, {access.OPERATOR_PARAM: access.operator_key()})
    assert not at.exception
    assert [c for c in at.sidebar.checkbox if c.key == "ckpt_trust"]
    assert access.OPERATOR_PARAM not in at.query_params
    wrong = run_app(None, {access.OPERATOR_PARAM: "guess"})
    assert not [c for c in wrong.sidebar.checkbox if c.key == "ckpt_trust"]


# ------------------------------------------------------------------ in a browser

class Payload:
    """A pickle whose loading writes a file: what a visitor must never get to run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_running_pickle(marker) -> bytes:
    buf = io.BytesIO()
    pickle.dump({"state_dict": Payload(str(marker))}, buf)
    return buf.getvalue()


@pytest.mark.browser
@pytest.mark.slow
def test_a_pickle_uploaded_to_a_shared_server_runs_nothing(browser, tmp_path):
    srv = Server(tmp_path, offline=True, address="0.0.0.0").start()
    marker = tmp_path / "ran"
    try:
        page = open_page(browser, srv, "inversion")
        sidebar = page.locator("section[data-testid='stSidebar']")
        sidebar.get_by_text("Add a model").click()
        assert sidebar.get_by_text("Trust this file").count() == 0
        sidebar.get_by_text(re.compile("This is a shared server: loading pickles")).wait_for()
        sidebar.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(
            files=[{"name": "evil.pt", "mimeType": "application/octet-stream",
                    "buffer": _code_running_pickle(marker)}])
        settle(page)
        sidebar.get_by_role("button", name="Add", exact=True).click()
        sidebar.get_by_text(re.compile("this shared server loads none")).wait_for(timeout=60_000)
        page.context.close()
        page = open_page(browser, srv, "inversion")       # a new visit: no file in the uploader
        sidebar = page.locator("section[data-testid='stSidebar']")
        sidebar.get_by_text("Add a model").click()
        for typed in ("/etc/passwd", str(tmp_path / "server.log"), "../../etc/shadow"):
            box = sidebar.get_by_label("...or a name")
            box.fill(typed)
            box.press("Enter")
            settle(page)
            sidebar.get_by_role("button", name="Add", exact=True).click()
            sidebar.get_by_text(re.compile("reads no files by path")).wait_for(timeout=60_000)
        shot(page, "shared-server-refusals")
        assert_clean(page)
        assert not marker.exists()
    finally:
        srv.kill()
    srv.assert_no_traceback()


@pytest.mark.browser
@pytest.mark.slow
def test_three_visitors_at_once_stay_within_the_budgets_and_the_operator_waits_for_none(
        browser, tmp_path):
    """One visitor's run computes, one waits behind it, the third is told the server is
    busy; the operator's run, started last, finishes while the first still runs."""
    key = "a-key-only-the-operator-knows"
    srv = Server(tmp_path, offline=True, address="0.0.0.0",
                 env={"ROBUSTLENS_VISITOR_JOBS": "1", "ROBUSTLENS_VISITOR_QUEUE": "1",
                      "ROBUSTLENS_VISITOR_RUN_S": "3600",    # a loaded machine estimates more
                      "ROBUSTLENS_OPERATOR_KEY": key}).start()
    try:
        visitors = [open_page(browser, srv, f"inversion?inv_img=foolbox-1{k}&inv_steps=3000")
                    for k in range(3)]
        buttons = [v.get_by_role("button", name=re.compile(r"^Reconstruct \(about")) for v in visitors]
        buttons[0].click()
        visitors[0].get_by_text(re.compile(r"^step \d+/3000")).first.wait_for(timeout=120_000)
        buttons[1].click()
        time.sleep(2)
        buttons[2].click()
        visitors[2].get_by_text(re.compile("This shared server is busy")).wait_for(timeout=60_000)
        assert visitors[1].get_by_text(re.compile(r"^step \d+/3000")).count() == 0
        operator = open_page(browser, srv, f"inversion?inv_img=foolbox-05&inv_steps=20&"
                                           f"{access.OPERATOR_PARAM}={key}")
        both_reconstructions(operator, timeout=120)
        assert access.OPERATOR_PARAM not in operator.url
        assert visitors[0].get_by_text(re.compile(r"^representation loss")).count() == 0
        for page in visitors + [operator]:
            assert_clean(page)
        shot(visitors[2], "shared-server-busy")
    finally:
        srv.kill()
    srv.assert_no_traceback()


def _pickled_model(path) -> str:
    """A whole pickled model (loading it runs pickle's code path, not just tensors)."""
    import torch
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, 10)), path)
    return str(path)


def _add_trusted(at, typed: str):
    at.sidebar.text_input(key="ckpt_spec").input(typed)
    next(c for c in at.sidebar.checkbox if c.key == "ckpt_trust").check()
    next(b for b in at.sidebar.button if b.label == "Add").click().run()
    return at


def test_on_a_local_server_a_trusted_pickle_loads_after_its_confirmation(world, tmp_path):
    at = run_app()
    assert config.get_option("server.address") in ("localhost", "127.0.0.1")
    path = _pickled_model(tmp_path / "whole.pt")
    add_model(at, path)                                  # not ticked: refused, no code run
    assert "execute code" in at.sidebar.warning[0].value
    _add_trusted(at, path)
    assert not at.exception
    assert any(s.value.startswith("Added whole") for s in at.sidebar.success)


def test_the_operators_setting_lets_visitors_load_trusted_pickles(shared, tmp_path):
    shared.setenv("ROBUSTLENS_ALLOW_PICKLES", "1")
    shared.setenv("ROBUSTLENS_SERVER_FOLDERS", str(tmp_path))
    _add_trusted(at := run_app(), _pickled_model(tmp_path / "whole.pt"))
    assert any(s.value.startswith("Added whole") for s in at.sidebar.success)
