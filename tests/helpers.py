"""What the tests share (one module, imported by name: `from helpers import ...`): tiny
models and data, the tiny world's app under AppTest, and a real Streamlit server with the
browser helpers of the walk. The fixtures that use them are in conftest.py."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import streamlit.testing.v1.app_test as app_test_module
import torch
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import data, jobs, views  # noqa: E402


# ------------------------------------------------------------------- data

SHARED_TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


EXTRACTED: list[str] = []   # removed by conftest.pytest_unconfigure


def use_shared_data() -> None:
    """Where the user cache holds no CIFAR-10 but the checkout sits next to the team's
    shared/data tarball (the dev and CI machines), the data tests use it: extracted
    once per run into a temporary folder named by ROBUSTLENS_DATA (inherited by the app
    servers the browser tests start). Runs when this module is imported (conftest.py
    imports it first), so that `needs_data` below, evaluated at import, already sees it."""
    from core import data
    if os.environ.get("ROBUSTLENS_DATA") or data.has_cifar10("test") or not SHARED_TARBALL.is_file():
        return
    dest = Path(tempfile.mkdtemp(prefix="rl-cifar10-"))
    data.extract_archive(SHARED_TARBALL, dest)
    os.environ["ROBUSTLENS_DATA"] = str(dest)
    EXTRACTED.append(str(dest))


use_shared_data()


def has_test_data() -> bool:
    from core import data
    return data.has_cifar10("test")


needs_data = pytest.mark.skipif(not has_test_data(), reason="CIFAR-10 test set not present "
                                "(python -m core data --from/--download)")


def sample(key: str) -> np.ndarray:
    return next(s.image for s in data.cifar_samples() if s.key == key)


def snapshot_jobs(load) -> dict[str, jobs.Job]:
    """One or more jobs of every kind, small enough for a CPU test."""
    r, s, r2 = "resnet18-linf-8", "resnet18-standard-s0", "resnet18-l2-1.0"
    return {
        "cka-40-images": jobs.cka_job(load, r, s, n=40, batch_size=16),
        "cka-whole-test-set": jobs.cka_job(load, r, s, n=80, batch_size=16),
        "cka-adversarial": jobs.cka_job(load, r, s, inputs_a="linf", inputs_b="l2", n=40,
                                        batch_size=20),
        "cka-adversarial-against-b": jobs.cka_job(load, r, s, inputs_a="linf", adv_against="b",
                                                  n=40, batch_size=20),
        "cka-self-adversarial": jobs.cka_job(load, r2, r2, inputs_a="linf", inputs_b="linf",
                                             n=40, batch_size=20),
        "cka-rbf-all-layers": jobs.cka_job(load, r, s, layers_a="all", layers_b="blocks",
                                           kernel="rbf", n=40, batch_size=20),
        "stitch-task": jobs.stitch_cell_job(load, r, s, "layer2.0", "task"),
        "stitch-direct": jobs.stitch_cell_job(load, s, r, "layer1.1", "direct"),
        "accuracy": jobs.accuracy_job(load, r),
        "inversion": jobs.inversion_job(load, r2, sample("foolbox-03"), steps=6),
        "inversion-layer-normgrad": jobs.inversion_job(load, r2, sample("foolbox-00"),
                                                       layer="layer2.0", method="normgrad",
                                                       steps=4, generator_seed=2),
        "inversion-quality": jobs.quality_job(load, s, steps=3),
        "feature-grid": jobs.feature_grid_job(load, r2, [1, 5, 7], steps=4),
        "test-outputs": jobs.test_outputs_job(load, r),
        "top-images": jobs.top_images_job(load, r, [1, 5, 7], k=5),
        "add-feature": jobs.add_feature_job(load, r2, sample("foolbox-00"), 3, steps=4),
        "interpolation": jobs.interpolation_job(load, r2, sample("foolbox-00"),
                                                sample("foolbox-03"), frames=3, steps=4),
        "explain": jobs.explain_job(load, r2, sample("foolbox-05"), 4, steps=4),
    }


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims a gigantic image (a decompression bomb)."""
    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(
            ">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def imagenet_models(*seeds: int, size: int = 64) -> dict:
    """ImageNet-class models ("in0", "in1", ...: torchvision's ResNet-18 layout, 1,000
    outputs, random weights, ImageNet statistics) at `size` px, small to stay quick."""
    from core import archs
    from core.probe import Probe
    models = {}
    for seed in seeds:
        torch.manual_seed(seed)
        models[f"in{seed}"] = Probe(archs.build("imagenet_resnet18"), (0.485, 0.456, 0.406),
                                    (0.229, 0.224, 0.225), name=f"in{seed}", input_size=size)
    return models


def image_folder(root: Path, classes: tuple[str, ...] = ("n01440764", "n15075141"),
                 per_class: int = 4,
                 seed: int = 0) -> Path:
    """An ImageFolder tree (ROOT/CLASS/IMAGE.png) of made-up photos: random pixels at
    odd sizes, never data-set images."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(80, 300)), int(rng.integers(80, 300))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / cls / f"img{i}.png")
    return root


# ----------------------------------------------------------------- models

def tiny_probe(width: int = 8, seed: int = 0, name: str = "tiny", arch: str = "resnet18",
               input_size: int = 32):
    from core import archs, data
    from core.probe import Probe
    torch.manual_seed(seed)
    model = archs.build(arch, width=width)
    probe = Probe(model, data.MEAN, data.STD, name=name,
                  card={"arch": arch, "width": width, "num_classes": 10}, input_size=input_size)
    return probe.eval()


def colour_task(n: int, seed: int, size: int = 16, classes: int = 5):
    """A learnable task: each class is a colour (fixed across splits) plus noise."""
    from core import data
    palette = torch.rand(classes, 3, 1, 1, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = palette[y] + 0.08 * torch.randn(n, 3, size, size, generator=g)
    return data.ImageTensorDataset((x.clamp(0, 1) * 255).round().to(torch.uint8), y, "colours")


def shipped(*names: str):
    """Skip unless these shipped models are in pretrained/."""
    from core import zoo
    missing = [n for n in names if n not in zoo.names()]
    return pytest.mark.skipif(bool(missing), reason=f"shipped models absent: {missing}")


def asks_for_data(texts: list[str]) -> list[str]:
    """The messages among `texts` that ask for the CIFAR-10 test set, except the
    top-activating images' (data-set images: only their indices ship)."""
    return [t for t in texts if "needs the CIFAR-10 test set" in t
            and not t.startswith("Showing the top-activating test images")]


# ------------------------------------------------------------ the app (AppTest)

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


# ------------------------------------------------ a server and a browser (the walk)

SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DECK = "three-papers"
WIDE, PROJECTOR = (1600, 900), (1280, 720)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Streamlit server of this checkout on 127.0.0.1, with an isolated cache; with
    offline=True it also sees no CIFAR-10 (a fresh machine's home folder)."""

    def __init__(self, cache: Path, offline: bool = False, address: str = "127.0.0.1",
                 env: dict[str, str] | None = None) -> None:
        self.cache, self.port, self.proc, self.offline = cache, free_port(), None, offline
        self.address, self.env = address, env or {}
        self.log = cache / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = {**os.environ, "ROBUSTLENS_CACHE": str(self.cache), **self.env}
        if self.offline:
            env.pop("ROBUSTLENS_DATA", None)
            env["HOME"] = str(self.cache / "home")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
             "--server.address", self.address, "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).status == 200:
                    return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"the app did not start; log:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def assert_no_traceback(self) -> None:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        assert "Traceback" not in text, text[-4000:]


def settle(page, timeout: float = 300) -> None:
    """Wait until the app has finished its run (no 'running' widget, no spinner)."""
    page.wait_for_selector("[data-testid='stApp']", timeout=90_000)
    time.sleep(1.0)
    deadline = time.time() + timeout
    while time.time() < deadline:
        busy = page.locator("[data-testid='stStatusWidget']").count() + \
            page.locator("[data-testid='stSpinner']").count()
        if not busy:
            time.sleep(0.8)
            if not (page.locator("[data-testid='stStatusWidget']").count()
                    + page.locator("[data-testid='stSpinner']").count()):
                return
        time.sleep(0.3)
    raise TimeoutError("the app kept running")


def open_page(browser, server, path: str, size: tuple[int, int] = WIDE):
    ctx = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = ctx.new_page()
    page.goto(f"{server.url}/{path}")
    settle(page)
    page.locator("h1").first.wait_for(timeout=90_000)   # a cold server's first run has no title yet
    settle(page)
    return page


def assert_clean(page, offline: bool = False) -> None:
    """No error box, no exception, no 'encountered an error'; offline, nothing that
    the ship list promises asks for the data set."""
    for testid in ("stException", "stAlertContentError"):
        boxes = page.locator(f"[data-testid='{testid}']")
        assert boxes.count() == 0, boxes.first.inner_text()
    assert page.get_by_text("encountered an error").count() == 0
    if offline:
        asks = asks_for_data(page.get_by_text("needs the CIFAR-10 test set").all_inner_texts())
        assert not asks, asks


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def sidebar_visible(page) -> bool:
    return page.locator("section[data-testid='stSidebar']").is_visible()


def sidebar_hidden_after_the_run(page) -> None:
    wait_until(lambda: not sidebar_visible(page), 30, "the sidebar hidden")


def wait_until(predicate, timeout: float = 60, what: str = "condition", page=None) -> None:
    """Poll `predicate`; with a `page`, an error box ends the wait at once, and a
    timeout says what the page showed (status, progress, alerts) beside a screenshot."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if page is not None:
            assert_clean(page)
        time.sleep(0.3)
    if page is None:
        raise AssertionError(f"timed out waiting for {what}")
    shot(page, "timeout-" + re.sub(r"\W+", "-", what))
    shown = page.locator("[data-testid='stStatusWidget'], [data-testid='stProgress'], "
                         "[data-testid='stExpander'] summary, [data-testid='stAlert']")
    raise AssertionError(f"timed out waiting for {what} at {page.url}; the page showed: "
                         f"{shown.all_inner_texts()}")


RESULT_LINE = re.compile(r"^representation loss [\d.]+ · PSNR")   # one per model


def both_reconstructions(page, timeout: float = 300) -> None:
    """Wait until the inversion page shows both models' finished results. A run the
    page estimates over 20 s waits for a click (ui.page.LONG_RUN_S): on a loaded
    machine an upload's 150 steps do, so the wait clicks as a person would: once, since
    the button stays on the page while the run it started computes, and a second click
    would start that run again."""
    start = page.get_by_role("button", name=re.compile(r"^Reconstruct \(about"))
    clicked = []

    def done() -> bool:
        if not clicked and start.count():
            try:
                start.first.click(timeout=5_000)
                clicked.append(True)
            except playwright_error():        # gone in a rerun meanwhile: look again
                pass
        return page.get_by_text(RESULT_LINE).count() == 2
    wait_until(done, timeout, "both reconstructions", page)
    settle(page)


def playwright_error() -> type[Exception]:
    from playwright.sync_api import Error
    return Error


def no_truncation(page) -> list[str]:
    """Buttons, tabs, headings, captions and pickers' values whose text does not fit
    their box."""
    return page.evaluate("""() => {
      const sel = 'button p, [data-testid="stMarkdownContainer"] p, h1, h2, h3,'
                + ' [data-testid="stCaptionContainer"], [role="tab"] p, .stMarkdownEllipsis,'
                + ' [data-testid="stMetricValue"] div, [data-testid="stSelectbox"] input';
      return [...document.querySelectorAll(sel)]
        .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
        .map(e => (e.value || e.innerText).slice(0, 60));
    }""")


def clipped_controls(page) -> list[str]:
    """Buttons, tabs and select boxes that the nearest box clipping its content cuts
    (a segmented control wider than its column shows half a button)."""
    return page.evaluate("""() => {
      const out = [];
      document.querySelectorAll('button, [role="tab"], [data-testid="stSelectbox"]')
        .forEach(b => {
          const r = b.getBoundingClientRect();
          // plotly's mode bar shows on hover only, over the figure
          if (b.offsetParent === null || r.width === 0 || b.closest('.modebar')) return;
          for (let a = b.parentElement; a; a = a.parentElement) {
            if (getComputedStyle(a).overflowX === 'visible') continue;
            const box = a.getBoundingClientRect();
            if (r.right > box.right + 1 || r.left < box.left - 1)
              out.push(b.innerText.slice(0, 60) || b.getAttribute('aria-label'));
            break;
          }
        });
      return out;
    }""")


def text_outside_figures(page) -> list[str]:
    """Titles and axis labels of plotly figures that reach past their figure's edge."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
      .flatMap(p => {
        const box = p.querySelector('.main-svg').getBoundingClientRect();
        return [...p.querySelectorAll('.gtitle, .xtick text, .ytick text, .g-xtitle text,'
                                      + ' .g-ytitle text')]
          .filter(t => { const r = t.getBoundingClientRect();
                         return r.width > 0 && (r.right > box.right + 1 || r.left < box.left - 1); })
          .map(t => t.textContent.slice(0, 60));
      })""")


def in_viewport(page, locator, size) -> None:
    box = locator.bounding_box()
    assert box is not None, "the figure is not drawn"
    assert box["y"] >= 0 and box["y"] + box["height"] <= size[1] + 1, (box, size)
    assert box["x"] >= 0 and box["x"] + box["width"] <= size[0] + 1, (box, size)


# every page of the app (the analyses' from their registry), by URL path
PATHS = {"home": "", **{key: key for key in views.pages() if key}}
# each page's primary figure: (selector, how many of the first matches it spans)
PRIMARY = {"cka": (".stPlotlyChart", 1), "stitching": (".stPlotlyChart", 1),
           "inversion": ("[data-testid='stImage']", 3),        # the original and both models
           "manipulation": (".rl-gallery, [data-testid='stImage']", 1)}


def primary_figure_whole(page, kind: str, what: str) -> None:
    """The page's primary figure is drawn and lies inside the projector's viewport."""
    selector, parts = PRIMARY[kind]
    figures = page.locator(selector)
    wait_until(lambda: figures.count() >= parts, 120, what)
    for k in range(parts):
        in_viewport(page, figures.nth(k), PROJECTOR)
