"""End to end in a real browser: Playwright driving Debian's Chromium against
`streamlit run app.py`, started here on a free local port with its own cache.

Screenshots land in artifacts/screenshots/. Marked `browser`: skipped where
Chromium or Playwright is missing (`.ci/run` installs Chromium)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Streamlit server of this checkout on 127.0.0.1, with an isolated cache."""

    def __init__(self, cache: Path) -> None:
        self.cache, self.port, self.proc = cache, free_port(), None
        self.log = cache / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = {**os.environ, "ROBUSTLENS_CACHE": str(self.cache)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).status == 200:
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the app did not start; log:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("server")).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def settle(page, timeout: float = 240) -> None:
    """Wait until the app has finished its run (no 'running' widget, no spinner)."""
    page.wait_for_selector("[data-testid='stApp']", timeout=60_000)
    time.sleep(1.0)
    deadline = time.time() + timeout
    while time.time() < deadline:
        busy = page.locator("[data-testid='stStatusWidget']").count() + \
            page.locator("[data-testid='stSpinner']").count()
        if not busy:
            time.sleep(0.7)
            if not (page.locator("[data-testid='stStatusWidget']").count()
                    + page.locator("[data-testid='stSpinner']").count()):
                return
        time.sleep(0.3)
    raise TimeoutError("the app kept running")


def open_page(browser, server, path: str, width: int = 1400, height: int = 1000):
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    page.goto(f"{server.url}/{path}")
    settle(page)
    return page


def no_exception(page) -> None:
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.first.inner_text()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


RESULT_LINE = re.compile(r"^representation loss [\d.]+ · PSNR")   # one per model


def both_reconstructions(page, timeout: float = 300_000) -> None:
    """Wait until the inversion page shows both models' finished results (a live
    optimisation streams frames between runs, so idle moments are not enough)."""
    deadline = time.time() + timeout / 1000
    while time.time() < deadline:
        if page.get_by_text(RESULT_LINE).count() == 2:
            settle(page)
            if page.get_by_text(RESULT_LINE).count() == 2:
                return
        time.sleep(0.5)
    raise AssertionError("the inversion page never showed both reconstructions")


def click_compute_if_offered(page, label: str = "Compute", then: str | None = None) -> None:
    button = page.get_by_role("button", name=label)
    if button.count():
        button.first.click()
        if then:
            page.get_by_text(then).first.wait_for(timeout=300_000)
        settle(page)


PATHS = {"home": "", "cka": "cka", "stitching": "stitching",
         "inversion": "inversion", "manipulation": "manipulation"}


def test_cold_server_deep_link_opens_the_full_app(tmp_path, browser):
    """The first visitor of a fresh server follows a link straight to a page."""
    srv = Server(tmp_path).start()
    try:
        page = open_page(browser, srv, "inversion?inv_img=foolbox-05")
        page.get_by_text("Model A (robust)").wait_for(timeout=60_000)  # app.py's sidebar
        settle(page)
        no_exception(page)
        assert "inv_img=foolbox-05" in page.url
        assert page.get_by_text("Page not found").count() == 0
        assert page.get_by_role("heading", name="Representation inversion").count() == 1
    finally:
        srv.kill()


@pytest.mark.parametrize("name", list(PATHS))
def test_each_page_loads(browser, server, name):
    page = open_page(browser, server, PATHS[name])
    no_exception(page)
    shot(page, f"page-{name}")
    page.context.close()


def test_cka_cell_click_shows_that_layer_pair(browser, server):
    page = open_page(browser, server, "cka?cka_n=1000")
    click_compute_if_offered(page, then="Layer pair")
    no_exception(page)
    assert page.get_by_text("relu × relu").count() == 1
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    # the top-right cell: last layer of A (top row) x last layer of B (right column)
    page.mouse.click(box["x"] + box["width"] * 0.97, box["y"] + box["height"] * 0.03)
    page.get_by_text("linear × linear").wait_for(timeout=30_000)
    settle(page)
    no_exception(page)
    assert "cka_cell=10%2C10" in page.url
    shot(page, "cka-cell-clicked")


def test_inversion_gallery_click_shows_both_reconstructions(browser, server):
    page = open_page(browser, server, "inversion")
    page.locator("button.rl-tile").nth(3).click()
    page.wait_for_url("**inv_img=foolbox-03**", timeout=60_000)
    both_reconstructions(page)
    no_exception(page)
    assert "inv_img=foolbox-03" in page.url
    shot(page, "inversion-clicked")


def test_stitching_cell_click_shows_details(browser, server):
    page = open_page(browser, server, "stitching?st_method=direct")
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    # second row (standard -> robust), third column
    page.mouse.click(box["x"] + box["width"] * (2.5 / 9), box["y"] + box["height"] * (1.5 / 4))
    settle(page)
    no_exception(page)
    assert "st_cell=1%2C2" in page.url or "st_cell=1,2" in page.url
    assert page.get_by_text("standard → robust").count() >= 1
    shot(page, "stitching-cell-clicked")


def test_manipulation_tabs_render(browser, server):
    page = open_page(browser, server, "manipulation")
    for tab in ("Feature addition", "Interpolation", "Misclassification", "Feature browser"):
        page.get_by_role("tab", name=tab).click()
        settle(page)
        no_exception(page)
        shot(page, f"manipulation-{tab.split()[-1].lower()}")


def test_presentation_mode_hides_the_chrome(browser, server):
    page = open_page(browser, server, "inversion?present=1", 1600, 900)
    no_exception(page)
    # a cold server's first run loads the zoo: the sidebar must stay hidden meanwhile
    assert not page.locator("section[data-testid='stSidebar']").is_visible()
    page.get_by_role("button", name="Exit presentation").wait_for(timeout=120_000)
    assert not page.locator("section[data-testid='stSidebar']").is_visible()
    both_reconstructions(page)
    # on a 900 px projector the reconstructions start above the fold, the gallery below them
    top_y = page.get_by_text("robust model A").first.bounding_box()["y"]
    result_y = page.get_by_text(RESULT_LINE).first.bounding_box()["y"]
    gallery_y = page.get_by_text("CIFAR-10 samples").first.bounding_box()["y"]
    assert top_y < 600 and result_y < gallery_y, (top_y, result_y, gallery_y)
    shot(page, "presentation-inversion")


# ------------------------------------------------------------- load and faults

def _rss_peak_mb(pid: int) -> float:
    """Peak resident memory of the server and its children, from /proc."""
    total = 0.0
    for p in [pid] + [int(c) for c in subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def test_concurrent_sessions_each_get_their_own_results_computed_once(browser, tmp_path):
    from core.results import ResultStore
    srv = Server(tmp_path).start()
    try:
        images = ["foolbox-01", "foolbox-02", "foolbox-06", "foolbox-06"]   # two share a key
        pages = []
        for key in images:
            page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            page.goto(f"{srv.url}/inversion?inv_img={key}&inv_steps=40")
            pages.append(page)
        cka = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
        cka.goto(f"{srv.url}/cka?cka_n=2000")
        cka.get_by_role("button", name="Compute").first.click()
        for k, (page, key) in enumerate(zip(pages, images)):
            try:
                page.get_by_text(RESULT_LINE).nth(1).wait_for(timeout=600_000)
            finally:
                shot(page, f"concurrent-{k}")
            settle(page)
            no_exception(page)
            assert f"inv_img={key}" in page.url
            assert page.locator("button.rl-tile[aria-pressed='true']").get_attribute(
                "data-key") == key                       # each session shows its own image
        cka.get_by_text("Layer pair").wait_for(timeout=600_000)
        no_exception(cka)
        store = ResultStore(srv.cache / "results.sqlite", assets=None)
        counts = store._query("SELECT count FROM computations")
        assert counts and all(c == 1 for (c,) in counts), counts   # nothing computed twice
        kinds = [e["kind"] for e in store.entries()]
        assert kinds.count("inversion") == 6 and kinds.count("cka") == 1   # 3 images x 2 models
        assert _rss_peak_mb(srv.proc.pid) < 6000
    finally:
        srv.kill()


def test_server_killed_mid_computation_keeps_results_and_nothing_half_written(browser, tmp_path):
    from core.results import ResultStore
    srv = Server(tmp_path).start()
    page = open_page(browser, srv, "inversion?inv_img=foolbox-07&inv_steps=30")
    both_reconstructions(page)
    long = browser.new_context().new_page()
    long.goto(f"{srv.url}/cka?cka_layers=all&cka_in_a=linf")
    long.get_by_role("button", name="Compute").first.click()
    long.get_by_text("images").first.wait_for(timeout=120_000)   # the progress bar runs
    time.sleep(2)
    srv.kill(signal.SIGKILL)
    store = ResultStore(srv.cache / "results.sqlite", assets=None)
    kinds = [e["kind"] for e in store.entries()]
    assert kinds.count("inversion") == 2 and "cka" not in kinds
    srv2 = Server(srv.cache).start()          # restarted on the same cache
    try:
        again = open_page(browser, srv2, "inversion?inv_img=foolbox-07&inv_steps=30")
        both_reconstructions(again, timeout=60_000)
        no_exception(again)
        assert all(c == 1 for (c,) in store._query("SELECT count FROM computations"))
    finally:
        srv2.kill()


def _scramble_store(cache: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        f = Path(str(cache / "results.sqlite") + suffix)
        if f.exists():
            f.write_bytes(os.urandom(8192))


def test_corrupt_store_keeps_the_app_up_and_is_set_aside_on_restart(browser, tmp_path):
    srv = Server(tmp_path).start()
    try:
        both_reconstructions(open_page(browser, srv, "inversion?inv_steps=20"))
        _scramble_store(srv.cache)                       # damaged under a running server
        page = open_page(browser, srv, "inversion?inv_img=foolbox-09&inv_steps=20")
        both_reconstructions(page)
        no_exception(page)
    finally:
        srv.kill()
    _scramble_store(srv.cache)                           # damaged while the server is down
    srv2 = Server(srv.cache).start()
    try:
        page = open_page(browser, srv2, "inversion?inv_img=foolbox-09&inv_steps=20")
        both_reconstructions(page)
        no_exception(page)
        assert list(srv.cache.glob("results.sqlite.corrupt-*"))   # kept for a post-mortem
    finally:
        srv2.kill()
