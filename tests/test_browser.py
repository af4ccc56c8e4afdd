"""End to end in a real browser: Playwright driving Debian's Chromium against
`streamlit run app.py`, started here on a free local port with its own cache.

The walk is what a speaker does on a fresh machine with the shipped defaults and no
data set: every page, presentation mode in and out by every exit, a deck stepped with
the arrow keys, every tab's main button, uploads good and bad, two sessions side by
side. Any error box, "encountered an error" text or traceback in the server log fails
it. Screenshots land in artifacts/screenshots/ (1600x900; 1280x720 presenting).
Marked `browser`: skipped where Chromium or Playwright is missing."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import (CHROMIUM, DECK, PATHS, PRIMARY, PROJECTOR, ROOT, WIDE, Server,
                     assert_clean, both_reconstructions, clipped_controls, no_truncation,
                     open_page, primary_figure_whole, settle, shot, sidebar_hidden_after_the_run,
                     sidebar_visible, text_outside_figures, wait_until)

pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed")]


# ----------------------------------------------------------------- the walk

@pytest.mark.parametrize("name", list(PATHS))
def test_every_page_opens_offline(browser, offline_server, name):
    page = open_page(browser, offline_server, PATHS[name])
    assert_clean(page, offline=True)
    assert page.get_by_role("button", name=re.compile("^Compute")).count() == 0
    shot(page, f"page-{name}")
    for width, height in (WIDE, PROJECTOR):       # a speaker's laptop, outside presentation
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(500)
        assert not no_truncation(page), (width, no_truncation(page))
        assert not clipped_controls(page), (width, clipped_controls(page))
        assert not text_outside_figures(page), (width, text_outside_figures(page))
    page.context.close()


@pytest.mark.parametrize("name", [n for n in PATHS if n in PRIMARY])
def test_projector_shows_each_primary_figure_whole(browser, offline_server, name):
    page = open_page(browser, offline_server, PATHS[name] + "?present=1", PROJECTOR)
    sidebar_hidden_after_the_run(page)
    assert_clean(page, offline=True)
    primary_figure_whole(page, name, f"the {name} figure")
    assert not no_truncation(page), no_truncation(page)
    shot(page, f"present-{name}")
    page.context.close()


def test_presentation_in_and_out_by_every_exit(browser, offline_server):
    page = open_page(browser, offline_server, "inversion?present=1", PROJECTOR)
    sidebar_hidden_after_the_run(page)
    both_reconstructions(page)
    page.mouse.click(640, 700)                  # a speaker's page has the focus
    page.keyboard.press("Escape")                                     # 1. Esc
    wait_until(lambda: sidebar_visible(page), 60, "the sidebar after Esc")
    settle(page)
    assert_clean(page)
    assert "present=1" not in page.url
    page.locator("section[data-testid='stSidebar']").get_by_text("Presentation mode").click()
    wait_until(lambda: not sidebar_visible(page), 60, "presentation mode from the toggle")
    both_reconstructions(page)
    page.get_by_role("button", name="Exit presentation").click()      # 2. the exit button
    wait_until(lambda: sidebar_visible(page), 60, "the sidebar after the exit button")
    settle(page)
    assert_clean(page)
    page.context.close()


def test_deck_steps_with_the_keys_and_ends(browser, offline_server):
    from core import views
    deck = views.load_deck(ROOT / "assets" / "decks" / f"{DECK}.yaml")
    n = len(deck["views"])
    page = open_page(browser, offline_server, f"?deck={DECK}&slide=0&present=1", PROJECTOR)
    for i in range(n):
        wait_until(lambda i=i: f"{i + 1}/{n}" in page.locator(".st-key-deckbar").inner_text(),
                   120, f"slide {i + 1}")
        settle(page)
        assert_clean(page, offline=True)
        assert not sidebar_visible(page)
        labels = [b.inner_text() for b in page.get_by_role("button").all()]
        assert not [x for x in labels if x.startswith(("Compute", "Visualise", "Interpolate",
                                                        "Add feature", "Explain"))], labels
        assert not no_truncation(page), (i, no_truncation(page))
        kind = deck["views"][i]["page"]
        if kind in PRIMARY:                      # the slide's figure, whole, on the projector
            primary_figure_whole(page, kind, f"the figure of slide {i + 1}")
        shot(page, f"deck-{i + 1:02d}")
        if i < n - 1:
            page.mouse.click(5, PROJECTOR[1] - 5)       # focus the page, not a field
            page.keyboard.press("ArrowRight")
    page.mouse.click(5, PROJECTOR[1] - 5)
    page.keyboard.press("ArrowLeft")
    wait_until(lambda: f"{n - 1}/{n}" in page.locator(".st-key-deckbar").inner_text(), 120,
               "the previous slide")
    settle(page)
    page.get_by_role("button", name="End").click()                  # 3. a deck's End
    wait_until(lambda: sidebar_visible(page), 60, "the sidebar after End")
    settle(page)
    assert_clean(page)
    assert "deck=" not in page.url and page.locator(".st-key-deckbar").count() == 0
    page.context.close()


def test_every_tab_and_its_main_button(browser, offline_server):
    page = open_page(browser, offline_server, "manipulation")
    for tab, button in (("Feature addition", "Add feature"), ("Interpolation", "Interpolate"),
                        ("Misclassification", "Explain"), ("Feature browser", "Visualise")):
        page.get_by_role("tab", name=tab).click()
        settle(page)
        found = page.get_by_role("button", name=re.compile(f"^{button}"))
        if found.count():          # shipped results need no click; anything else computes
            found.first.click()
            settle(page)
        assert_clean(page)
        shot(page, f"tab-{tab.split()[-1].lower()}")
    # a sample the ship list does not hold: computed here, offline, without the data set
    page.get_by_role("tab", name="Feature addition").click()
    settle(page)
    page.locator("button.rl-tile").nth(5).click()
    settle(page)
    page.get_by_role("button", name=re.compile("^Add feature")).click()
    page.get_by_text(re.compile(r"^feature \d+: ")).first.wait_for(timeout=300_000)
    settle(page)
    assert_clean(page)
    page.context.close()
    # a feature the ship list does not visualise: once computed, the page shows the two
    # images alone (the spent button and the finished status boxes stayed before)
    page = open_page(browser, offline_server,
                     "manipulation?a=resnet18-l2-0.5&b=resnet18-standard-s1&mf_feat=f146")
    visualise = page.get_by_role("button", name=re.compile("^Visualise in both models"))
    visualise.click()
    wait_until(lambda: not visualise.count(), 300, "the visualisations", page)
    settle(page)
    assert not page.locator("[data-testid='stStatusWidget'], [data-testid='stExpander'] summary",
                            has_text="done in").count()
    assert_clean(page)
    page.context.close()


def test_gallery_and_cells_show_what_was_clicked(browser, offline_server):
    page = open_page(browser, offline_server, "inversion")
    page.locator("button.rl-tile").nth(3).click()
    page.wait_for_url("**inv_img=foolbox-03**", timeout=60_000)
    both_reconstructions(page)
    assert page.locator("button.rl-tile[aria-pressed='true']").get_attribute("data-key") == "foolbox-03"
    # a segmented control's options are radios from Streamlit 1.67 on, buttons before
    page.locator("[data-testid='stButtonGroup'] button",
                 has_text="Photos (out of distribution)").click()
    settle(page)
    pressed = page.locator("button.rl-tile[aria-pressed='true']").get_attribute("data-key")
    assert pressed.startswith("photo-") and f"inv_img={pressed}" in page.url
    both_reconstructions(page)
    assert_clean(page)
    page.context.close()
    # the feature browser's tiles name their classes whole, none cut short
    page = open_page(browser, offline_server, "manipulation")
    captions = page.locator("button.rl-tile span")
    captions.first.wait_for(timeout=60_000)
    words = {t.split(" · ")[-1] for t in captions.all_inner_texts()}
    assert words <= {"plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                     "truck"} and len(words) == 10, words
    assert captions.evaluate_all("spans => spans.filter(s => s.scrollWidth > s.clientWidth)"
                                 ".length") == 0
    page.context.close()
    page = open_page(browser, offline_server, "cka")
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.97, box["y"] + box["height"] * 0.03)
    page.get_by_text("linear × linear").wait_for(timeout=60_000)
    settle(page)
    assert "cka_cell=10%2C10" in page.url or "cka_cell=10,10" in page.url
    assert_clean(page)
    shot(page, "cka-cell-clicked")
    page.context.close()
    page = open_page(browser, offline_server, "stitching?st_method=direct")
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * (2.5 / 9), box["y"] + box["height"] * (1.5 / 4))
    page.get_by_text("standard → robust at").wait_for(timeout=60_000)
    settle(page)
    assert "st_cell=1%2C2" in page.url or "st_cell=1,2" in page.url
    assert_clean(page)
    page.context.close()


def test_stitching_advanced_recipe_opens_and_names_its_recipe(browser, offline_server):
    """A speaker opens the advanced recipe, picks an adversarial low-rank stitcher and a
    metric of similarity: the caption names the recipe, the link keeps it, the shipped
    short-recipe cells stay one click away."""
    page = open_page(browser, offline_server, "stitching")
    page.get_by_text("Advanced recipe").click()
    settle(page)
    for label, option in (("Adversarial stitcher", "TRADES"), ("Rank", "8")):
        page.get_by_role("combobox", name=label).click()
        page.get_by_role("option", name=option, exact=True).click()
        settle(page)
    page.get_by_text("rank-8 stitch from a least-squares start").wait_for(timeout=60_000)
    assert "adversarially: TRADES beta 1" in page.inner_text("body")
    assert "st_adv=trades" in page.url and "st_rank=8" in page.url
    assert_clean(page)          # not shipped: the cells ask for the data set, in a sentence
    shot(page, "stitching-advanced-recipe")
    page.get_by_role("combobox", name="Rank").click()
    page.get_by_role("option", name="full", exact=True).click()
    page.get_by_role("combobox", name="Adversarial stitcher").click()
    page.get_by_role("option", name="no", exact=True).click()
    settle(page)
    page.get_by_text("1 epoch on 10,000 training images; clean").wait_for(timeout=60_000)
    assert "not computed yet" not in page.inner_text("body")
    assert_clean(page, offline=True)
    page.context.close()


def test_a_page_keeps_its_settings_across_a_visit_elsewhere_and_links_them(
        browser, offline_server):
    page = open_page(browser, offline_server, "cka?cka_folder=/tmp/a%26b%23c%20d")
    page.locator("[data-testid='stButtonGroup'] button", has_text="Paper view").click()
    page.wait_for_url("**cka_view=Paper**", timeout=60_000)
    settle(page)
    # the link names this run's settings, the folder whole ('&', '#' and space encoded)
    page.get_by_role("button", name="Link").click()
    link = page.locator("[data-testid='stCode'] code").inner_text()
    assert "cka_folder=/tmp/a%26b%23c%20d" in link and "cka_view=Paper%20view" in link, link
    page.context.close()
    page = open_page(browser, offline_server, "cka")
    page.locator("[data-testid='stButtonGroup'] button", has_text="Paper view").click()
    page.get_by_text("Mean off-diagonal CKA, robust").wait_for(timeout=60_000)
    page.locator("[data-testid='stSidebar'] a", has_text="Stitching matrix").click()
    page.wait_for_url("**/stitching**", timeout=60_000)
    settle(page)
    page.locator("[data-testid='stSidebar'] a", has_text="CKA explorer").click()
    page.wait_for_url("**/cka**", timeout=60_000)
    settle(page)
    assert "cka_view=Paper" in page.url, page.url
    page.get_by_text("Mean off-diagonal CKA, robust").wait_for(timeout=60_000)
    assert_clean(page)
    page.context.close()


def _png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def _checkpoint() -> bytes:
    import torch

    from core import archs
    buf = io.BytesIO()
    torch.save(archs.build("resnet18", 10, 4).state_dict(), buf)
    return buf.getvalue()


def test_uploads_good_and_bad_stay_in_their_session(browser, offline_server):
    mine = open_page(browser, offline_server, "inversion?inv_source=upload")
    other = open_page(browser, offline_server, "inversion?inv_source=upload")
    uploader = mine.locator("[data-testid='stMainBlockContainer'] "
                            "[data-testid='stFileUploaderDropzoneInput']")
    uploader.set_input_files(files=[{"name": "notes.png", "mimeType": "image/png",
                                     "buffer": b"hello, I am not an image" * 20}])
    settle(mine)
    message = mine.get_by_text("not an image Pillow can read").first
    message.wait_for(timeout=60_000)
    assert "0x" not in message.inner_text() and "<_io" not in message.inner_text()
    assert not mine.get_by_text("notes.png", exact=True).count()   # the uploader is empty again
    assert_clean(mine)
    uploader.set_input_files(files=[{"name": "mine.png", "mimeType": "image/png",
                                     "buffer": _png()}])
    mine.wait_for_url("**inv_img=upload-**", timeout=60_000)
    both_reconstructions(mine)
    assert_clean(mine)
    shot(mine, "upload-mine")
    key = mine.url.split("inv_img=")[1].split("&")[0]
    assert "mine" in mine.locator(f"button.rl-tile[data-key='{key}']").inner_text()  # its name
    # another session sees neither the tile nor, through the link, the image
    other.reload()
    settle(other)
    assert other.locator(f"button.rl-tile[data-key='{key}']").count() == 0
    other.goto(mine.url)
    settle(other)
    other.get_by_text("uploads stay private").wait_for(timeout=60_000)
    assert_clean(other)
    mine.get_by_role("button", name="Remove this image").click()
    settle(mine)
    assert mine.locator(f"button.rl-tile[data-key='{key}']").count() == 0
    assert_clean(mine)
    # checkpoints: a bad file is a sentence, a good one a model of this session only
    sidebar = mine.locator("section[data-testid='stSidebar']")
    sidebar.get_by_text("Add a model").click()
    ckpt = sidebar.locator("[data-testid='stFileUploaderDropzoneInput']")
    ckpt.set_input_files(files=[{"name": "broken.pt", "mimeType": "application/octet-stream",
                                 "buffer": os.urandom(3000)}])
    settle(mine)
    sidebar.get_by_role("button", name="Add", exact=True).click()
    settle(mine)
    sidebar.get_by_text("not a readable PyTorch checkpoint").wait_for(timeout=60_000)
    assert_clean(mine)
    ckpt.set_input_files(files=[{"name": "tiny.pt", "mimeType": "application/octet-stream",
                                 "buffer": _checkpoint()}])
    settle(mine)
    sidebar.get_by_role("button", name="Add", exact=True).click()
    sidebar.get_by_text(re.compile("^Added tiny")).wait_for(timeout=60_000)
    assert_clean(mine)
    other.reload()
    settle(other)
    other.locator("section[data-testid='stSidebar'] [data-testid='stSelectbox']").first.click()
    options = other.get_by_role("option").all_inner_texts()
    assert options and not [o for o in options if "tiny" in o], options
    mine.context.close()
    other.context.close()


def test_cold_server_deep_link_opens_the_full_app(tmp_path, browser):
    """The first visitor of a fresh server follows a link straight to a page."""
    srv = Server(tmp_path, offline=True).start()
    try:
        page = open_page(browser, srv, "inversion?inv_img=foolbox-05")
        page.get_by_text("Model A").first.wait_for(timeout=60_000)      # app.py's sidebar
        settle(page)
        assert_clean(page)
        assert "inv_img=foolbox-05" in page.url
        assert page.get_by_text("Page not found").count() == 0
        assert page.get_by_role("heading", name="Representation inversion").count() == 1
    finally:
        srv.kill()
    srv.assert_no_traceback()


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
    srv = Server(tmp_path, offline=True).start()
    try:
        images = ["foolbox-01", "foolbox-02", "foolbox-06", "foolbox-06"]   # two share a key
        pages = []
        for key in images:
            page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            page.goto(f"{srv.url}/inversion?inv_img={key}&inv_steps=40")
            pages.append(page)
        for k, (page, key) in enumerate(zip(pages, images)):
            try:
                both_reconstructions(page, timeout=900)
            finally:
                shot(page, f"concurrent-{k}")
            assert_clean(page)
            assert f"inv_img={key}" in page.url
            assert page.locator("button.rl-tile[aria-pressed='true']").get_attribute(
                "data-key") == key                       # each session shows its own image
        store = ResultStore(srv.cache / "results.sqlite", assets=None)
        counts = store._query("SELECT count FROM computations")
        assert counts and all(c == 1 for (c,) in counts), counts   # nothing computed twice
        kinds = [e["kind"] for e in store.entries()]
        assert kinds.count("inversion") == 6                       # 3 images x 2 models
        assert _rss_peak_mb(srv.proc.pid) < 6000
        for page in pages:
            page.context.close()
    finally:
        srv.kill()
    srv.assert_no_traceback()


def test_server_killed_mid_computation_keeps_results_and_nothing_half_written(browser, tmp_path):
    from core.results import ResultStore
    srv = Server(tmp_path, offline=True).start()
    srv2 = None
    try:
        page = open_page(browser, srv, "inversion?inv_img=foolbox-07&inv_steps=30")
        both_reconstructions(page)
        long = browser.new_context().new_page()
        long.goto(f"{srv.url}/inversion?inv_img=foolbox-08&inv_steps=5000")
        long.get_by_role("button", name=re.compile(r"^Reconstruct \(about")).click()   # a long run asks
        long.get_by_text(re.compile(r"^step \d+/5000")).first.wait_for(timeout=120_000)
        srv.kill(signal.SIGKILL)
        store = ResultStore(srv.cache / "results.sqlite", assets=None)
        assert sorted(e["kind"] for e in store.entries()) == ["inversion", "inversion"]
        srv2 = Server(srv.cache, offline=True).start()          # restarted on the same cache
        again = open_page(browser, srv2, "inversion?inv_img=foolbox-07&inv_steps=30")
        both_reconstructions(again, timeout=60)
        assert_clean(again)
        assert all(c == 1 for (c,) in store._query("SELECT count FROM computations"))
    finally:
        srv.kill()
        if srv2 is not None:
            srv2.kill()


def _scramble_store(cache: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        f = Path(str(cache / "results.sqlite") + suffix)
        if f.exists():
            f.write_bytes(os.urandom(8192))


def test_corrupt_store_keeps_the_app_up_and_is_set_aside_on_restart(browser, tmp_path):
    srv = Server(tmp_path, offline=True).start()
    srv2 = None
    try:
        both_reconstructions(open_page(browser, srv, "inversion?inv_steps=20"))
        _scramble_store(srv.cache)                       # damaged under a running server
        page = open_page(browser, srv, "inversion?inv_img=foolbox-09&inv_steps=20")
        both_reconstructions(page)
        assert_clean(page)
        srv.kill()
        _scramble_store(srv.cache)                       # damaged while the server is down
        srv2 = Server(srv.cache, offline=True).start()
        page = open_page(browser, srv2, "inversion?inv_img=foolbox-09&inv_steps=20")
        both_reconstructions(page)
        assert_clean(page)
        assert list(srv.cache.glob("results.sqlite.corrupt-*"))   # kept for a post-mortem
    finally:
        srv.kill()
        if srv2 is not None:
            srv2.kill()


def test_an_imagenet_resnet50_added_by_path_opens_every_page(browser, offline_server, tmp_path):
    """A 224 px ResNet-50 stand-in (torchvision's architecture, random weights, a file
    written here) added through "Add a model", chosen as model A, every page opened
    with it and one short inversion run at 224 px."""
    import torch
    import torchvision
    torch.manual_seed(0)
    path = tmp_path / "resnet50-standin.pt"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    page = open_page(browser, offline_server, "inversion")
    sidebar = page.locator("section[data-testid='stSidebar']")
    sidebar.get_by_text("Add a model").click()
    field = sidebar.get_by_label("...or a path / name")
    field.fill(str(path))
    field.press("Enter")
    settle(page)
    sidebar.get_by_role("button", name="Add", exact=True).click()
    sidebar.get_by_text(re.compile("^Added resnet50-standin as model A")).wait_for(
        timeout=180_000)
    settle(page)
    sidebar.get_by_text(re.compile(r"224 px ImageNet · \d+% top-1 on 20 samples")).wait_for(
        timeout=60_000)
    # the gallery holds ImageNet images; a long run waits for a click and says how long
    page.locator("button.rl-tile[data-key^='imagenet-']").first.wait_for(timeout=60_000)
    page.locator(".st-key-settings summary").filter(has_text="Settings").click()
    steps = page.locator(".st-key-settings input[type='number']").nth(0)
    steps.wait_for(state="visible", timeout=30_000)
    for n in ("5000", "10"):
        steps.fill(n)
        steps.press("Enter")
        settle(page)
        if n == "5000":
            # about 46 min on an idle 2-core machine; hours when other work loads it
            page.get_by_text(re.compile(
                r"^5000 steps of both models take about (\d+ min|[\d.]+ h)")).wait_for(
                timeout=120_000)
            assert_clean(page)
            shot(page, "imagenet-inversion-asks")
    both_reconstructions(page)                 # clicks "Reconstruct (about …)" if asked
    assert_clean(page)
    shot(page, "imagenet-inversion")
    for title in ("Feature manipulation", "CKA explorer", "Stitching matrix", "Home"):
        page.locator("section[data-testid='stSidebar'] a").filter(has_text=title).first.click()
        settle(page)
        assert_clean(page)
        if title == "Stitching matrix":   # one ImageNet model: no row to build, one sentence
            page.get_by_text(re.compile("needs a robust and a standard model of ImageNet "
                                        "images at 224 px")).wait_for(timeout=30_000)
        shot(page, f"imagenet-{title.split()[0].lower()}")
    # CKA of A with itself on an image folder (made-up photos), read at 224 px
    from helpers import image_folder
    image_folder(tmp_path / "val")
    page.locator("section[data-testid='stSidebar'] a").filter(has_text="CKA explorer").first.click()
    settle(page)
    page.locator(".st-key-settings [data-testid='stSelectbox']").first.click()
    page.get_by_role("option", name="A vs A").click()
    settle(page)
    folder = page.get_by_label("Image folder", exact=True).and_(page.locator("input"))
    folder.fill(str(tmp_path / "val"))
    folder.press("Enter")
    settle(page)
    page.get_by_role("button", name=re.compile("^Compute: CKA")).click()
    page.locator(".stPlotlyChart").first.wait_for(timeout=180_000)
    settle(page)
    assert_clean(page)
    shot(page, "imagenet-cka-folder")
    page.context.close()
