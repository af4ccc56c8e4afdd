"""The cached facade the pages call: the only core module that imports streamlit.

- models: st.cache_resource keyed by (spec, device, trust), never by tensors;
- results: the SQLite store, one computation per key (locks), progress in the UI;
- heavy compute runs under one lock per process so memory stays bounded;
- errors of core (RobustLensError) become messages, never tracebacks;
- view state lives in the URL query parameters so every view is a link.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from typing import Any, Callable, Iterator

import streamlit as st
import torch

from . import data, zoo
from .errors import RobustLensError
from .probe import Probe, pick_device
from .results import ResultStore

DEFAULT_A = "resnet18-l2-1.0"      # the robust model with the clearest reconstructions
DEFAULT_B = "resnet18-standard-s0"


# ---------------------------------------------------------------- deep links

_RUN = threading.local()


@contextlib.contextmanager
def app_run():
    """app.py runs the chosen page inside this: page_setup() can then tell a
    page run by app.py from one Streamlit started on its own."""
    _RUN.in_app = True
    try:
        yield
    finally:
        _RUN.in_app = False


def page_setup() -> None:
    """First call of every page script. A cold server whose first visitors
    follow a link to /cka runs pages/cka.py as a legacy "pages directory"
    page, without app.py (no sidebar, no models): switch Streamlit to the
    st.navigation mode of app.py and rerun, so the link opens the full app.
    Decided per script run (a thread-local set by app.py), not by the shared
    PagesManager flag, which another session may already have flipped."""
    if getattr(_RUN, "in_app", False):
        return
    from streamlit.runtime.pages_manager import PagesManager
    PagesManager.uses_pages_directory = False
    st.rerun()


def page_header(title: str, caption: str) -> None:
    """The top of an analysis page: hand-over check, title, share link, caption."""
    page_setup()
    st.title(title)
    with st.container(key="share"):
        share_link()
    st.caption(caption)


# ----------------------------------------------------------------- resources

@st.cache_resource(show_spinner=False)
def _store(path: str) -> ResultStore:
    return ResultStore(path)


def store() -> ResultStore:
    return _store(str(data.cache_dir() / "results.sqlite"))


@st.cache_resource(show_spinner=False)
def compute_lock() -> threading.Lock:
    """One heavy computation at a time per server: bounded memory, fair queue."""
    return threading.Lock()


@st.cache_resource(show_spinner="Loading model...", max_entries=16)
def _model(spec: str, device: str, trust: bool, zoo_dir: str) -> Probe:
    return zoo.load(spec, device=device, trust=trust)


def device() -> str:
    return st.session_state.get("device", "auto")


def resolved_device() -> torch.device:
    return pick_device(device())


def model(spec: str) -> Probe:
    """The Probe for a model spec (shipped name, file path, robustbench:/torchvision:)."""
    trusted = spec in st.session_state.get("trusted_specs", set())
    return _model(spec, str(resolved_device()), trusted, str(zoo.PRETRAINED))


@st.cache_resource(show_spinner=False)
def samples() -> list[data.Sample]:
    return data.cifar_samples()


@st.cache_resource(show_spinner=False)
def photos() -> list[data.Sample]:
    return data.ood_photos()


@st.cache_resource(show_spinner="Reading CIFAR-10...", ttl=600)
def _dataset(split: str, where: str) -> data.ImageTensorDataset | None:
    try:
        return data.cifar10(split)
    except data.DataNotFoundError:
        return None


def _data_key() -> str:
    return f"{os.environ.get('ROBUSTLENS_DATA', '')}|{data.cache_dir()}"


def test_set() -> data.ImageTensorDataset | None:
    """The CIFAR-10 test set, or None on a machine without it."""
    return _dataset("test", _data_key())


# --------------------------------------------------------------- model lists

def model_specs() -> list[str]:
    """Shipped models, then the ones added in this session."""
    return zoo.names() + [s for s in st.session_state.get("custom_specs", [])
                          if s not in zoo.names()]


def model_card(spec: str) -> dict:
    if spec in zoo.names():
        return zoo.card(spec)
    try:
        return model(spec).card
    except RobustLensError:
        return {"name": spec}


def label(spec: str) -> str:
    c = model_card(spec)
    return f"{zoo.short_label(c)}" if c.get("label") else spec


def robust_specs() -> list[str]:
    return [s for s in model_specs() if zoo.is_robust(model_card(s))]


def standard_specs() -> list[str]:
    return [s for s in model_specs() if not zoo.is_robust(model_card(s))]


# ---------------------------------------------------------- URL view state

def _parse(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw in ("1", "true", "True", "yes")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, (list, tuple)):
        return [x for x in raw.split(",") if x]
    return raw


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def url_state(key: str, default: Any, options: list | None = None) -> Any:
    """Seed st.session_state[key] from the URL (once), falling back to default.

    Use before creating the widget with key=key; call publish() after.
    """
    if key not in st.session_state:
        value = default
        if key in st.query_params:
            try:
                value = _parse(st.query_params[key], default)
            except (TypeError, ValueError):
                value = default
        if options is not None:
            if isinstance(value, list):
                value = [v for v in value if v in options] or default
            elif value not in options:
                value = default
        st.session_state[key] = value
    return st.session_state[key]


def publish(keys: list[str]) -> None:
    """Write the current values of these session keys into the URL."""
    for key in keys:
        if key in st.session_state:
            value = _format(st.session_state[key])
            if st.query_params.get(key) != value:
                st.query_params[key] = value


def view_settings(page: str) -> dict:
    """The page's current settings (see core.views), from the session."""
    from . import views
    return {k: st.session_state.get(k, v) for k, v in views.settings(page, {}).items()}


def share_link() -> None:
    """A 'copy link' control: the full URL of this exact view (st.code has a copy button)."""
    base = (st.context.url or "").split("?")[0]
    params = "&".join(f"{k}={v}" for k, v in st.query_params.items())
    with st.popover("Link to this view", icon=":material/link:"):
        st.caption("Opens exactly this view; results come from the store.")
        st.code(f"{base}?{params}" if params else base, language=None, wrap_lines=True)


def export_menu(stem: str, files: list[tuple[str, Callable[[], Any], str, str]]) -> None:
    """An 'Export' popover of download buttons; each file is made only when clicked.
    files: (label, make_bytes_or_text, file name suffix, mime type)."""
    with st.popover("Export", icon=":material/download:"):
        for label, make, suffix, mime in files:
            st.download_button(label, make, f"{stem}{suffix}", mime, key=f"dl-{stem}-{suffix}",
                               on_click="ignore", width="stretch")


# ------------------------------------------------------------- presentation

_PRESENT_CSS = """
<style>
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"],
[data-testid="stToolbar"], .st-key-settings, .st-key-settings_cka, .st-key-share { display: none !important; }
.stMainBlockContainer { max-width: 100% !important; padding-top: 1.2rem !important; }
html { font-size: 20px; }
h1 { font-size: 2.2rem !important; }
[data-testid="stCaptionContainer"] { font-size: 1rem !important; }
</style>
"""


def presenting() -> bool:
    """Presentation mode: no sidebar or settings, large figures and text."""
    return bool(st.session_state.get("present", False))


def presentation_css() -> None:
    """Call before anything is drawn: on a cold server the sidebar takes a while, and
    a ?present=1 link must not show it even for that moment."""
    url_state("present", False)
    if presenting():
        st.markdown(_PRESENT_CSS, unsafe_allow_html=True)


def figure_caption(page: str, text: str) -> None:
    """The caption a figure carries on a projector: models and paper."""
    from . import views
    st.caption(f"{text} · {views.PAPERS.get(page, '')}")


_KEYS_JS = """
export default function(component) {
  const { setTriggerValue } = component;
  const onKey = (e) => {
    const t = e.target && e.target.tagName;
    if (t === 'INPUT' || t === 'TEXTAREA' || (e.target && e.target.isContentEditable)) return;
    if (['ArrowRight', 'PageDown'].includes(e.key)) setTriggerValue('key', 'next');
    if (['ArrowLeft', 'PageUp'].includes(e.key)) setTriggerValue('key', 'previous');
    if (e.key === 'Escape') setTriggerValue('key', 'exit');
  };
  document.addEventListener('keydown', onKey);
  return () => document.removeEventListener('keydown', onKey);
}
"""


@st.cache_resource
def _keys_component():
    import streamlit.components.v2 as components
    return components.component("robustlens_keys", js=_KEYS_JS)


def decks() -> dict[str, Any]:
    """The talk decks shipped in assets/decks (name -> path)."""
    from pathlib import Path
    folder = Path(__file__).resolve().parent.parent / "assets" / "decks"
    return {p.stem: p for p in sorted(folder.glob("*.y*ml")) + sorted(folder.glob("*.json"))}


def _go_to_slide(deck: dict, name: str, index: int) -> None:
    from . import views
    view = deck["views"][index]
    params = {**views.query_params(view), "deck": name, "slide": str(index),
              "present": "1" if presenting() else "0"}
    for k in list(st.session_state):  # the slide's settings replace the current ones
        if k not in ("device", "trusted_specs", "custom_specs"):
            del st.session_state[k]
    st.switch_page(views.PAGES[view["page"]], query_params=params)


def _exit_presentation() -> None:
    st.session_state["present"] = False
    st.query_params["present"] = "0"
    st.rerun()


def deck_bar() -> None:
    """Previous / next through a talk deck (arrow keys and clickers too)."""
    from . import views
    name = st.query_params.get("deck")
    if not name or name not in decks():
        if presenting():
            cols = st.columns([10, 2])
            if cols[1].button("Exit presentation", icon=":material/close_fullscreen:",
                              key="present_exit"):
                _exit_presentation()
            if getattr(_keys_component()(key="deck-keys", on_key_change=lambda: None),
                       "key", None) == "exit":
                _exit_presentation()
        return
    try:
        deck = views.load_deck(decks()[name])
    except ValueError as e:
        st.error(str(e))
        return
    n = len(deck["views"])
    try:
        i = min(max(int(st.query_params.get("slide", 0)), 0), n - 1)
    except ValueError:
        i = 0
    cols = st.columns([1, 8, 1, 1], vertical_alignment="center")
    if cols[0].button("Previous", icon=":material/arrow_back:", disabled=i == 0, key="deck_prev"):
        _go_to_slide(deck, name, i - 1)
    cols[1].markdown(f"**{deck.get('title', name)}** · {i + 1}/{n} · {deck['views'][i]['title']}")
    if cols[2].button("Next", icon=":material/arrow_forward:", disabled=i == n - 1, key="deck_next"):
        _go_to_slide(deck, name, i + 1)
    if cols[3].button("End", icon=":material/close:", key="deck_end"):
        st.query_params.clear()
        st.session_state["present"] = False
        st.rerun()
    key = _keys_component()(key="deck-keys", on_key_change=lambda: None)
    pressed = getattr(key, "key", None)
    if pressed == "next" and i < n - 1:
        _go_to_slide(deck, name, i + 1)
    elif pressed == "previous" and i > 0:
        _go_to_slide(deck, name, i - 1)
    elif pressed == "exit":
        _exit_presentation()


def start_deck(name: str) -> None:
    from . import views
    _go_to_slide(views.load_deck(decks()[name]), name, 0)


# ------------------------------------------------------------------ compute

def run_cached(kind: str, inputs: dict, compute: Callable[[Callable], Any],
               label: str) -> Any:
    """The stored result for (kind, inputs), computing it once with progress.

    compute(progress) receives progress(done, total, message=""). A CUDA out-of-
    memory error retries on the CPU with a message.
    """
    st_store = store()
    value = st_store.get(kind, inputs)
    if value is not None:
        return value
    with st.status(label, expanded=True) as status:
        bar = st.progress(0.0, text="waiting for the compute queue...")
        t0 = time.time()

        def progress(done: float, total: float, message: object = "", *_: object) -> None:
            frac = 0.0 if not total else min(1.0, done / total)
            text = f"loss {message:.4f}" if isinstance(message, float) else str(message)
            bar.progress(frac, text=f"{text} ({time.time() - t0:.0f} s)".strip())

        with compute_lock(), _oom_to_cpu():
            value, _ = st_store.get_or_compute(kind, inputs, lambda: compute(progress))
        status.update(label=f"{label}: done in {time.time() - t0:.1f} s", state="complete",
                      expanded=False)
    return value


def pick_cell(chart_key: str, state_key: str) -> Callable[[], None]:
    """An on_select callback: the clicked cell (customdata[:2] of the selected
    point, see figures.click_layer) becomes st.session_state[state_key], before
    the run that draws it, so the highlight and the URL follow in one run."""
    def callback() -> None:
        event = st.session_state.get(chart_key)
        points = (event or {}).get("selection", {}).get("points", [])
        if points and points[0].get("customdata"):
            st.session_state[state_key] = [int(points[0]["customdata"][0]),
                                           int(points[0]["customdata"][1])]
    return callback


@contextlib.contextmanager
def _oom_to_cpu() -> Iterator[None]:
    """Out of GPU memory: free it, switch this session to the CPU and run the page
    again, so its jobs are rebuilt with CPU models (nothing half-stored: a failed
    computation writes nothing)."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        st.session_state["device_next"] = "cpu"  # applied before the widget is made
        st.session_state["notice"] = ("The GPU ran out of memory, so this session now "
                                      "computes on the CPU (same results, more time).")
        st.rerun()


def notices() -> None:
    """Messages carried over a rerun (e.g. the out-of-memory fallback)."""
    note = st.session_state.pop("notice", None)
    if note:
        st.warning(note, icon=":material/memory:")


def stored(job) -> Any | None:
    """The stored result of a core.jobs.Job, without computing anything."""
    return store().get(job.kind, job.inputs)


def run_job(job) -> Any:
    """The result of a core.jobs.Job: from the store, or computed once with progress."""
    return run_cached(job.kind, job.inputs, job.compute, job.label)


def run_live(job_list: list, show: Callable[[int, int, int, float, Any], None]) -> list:
    """Run optimisation jobs side by side (a thread each), calling
    show(job_index, step, steps, loss, images_or_None) from this script thread
    as frames arrive. Stored results come back at once; one computation per key."""
    import queue
    st_store = store()
    results = [st_store.get(j.kind, j.inputs) for j in job_list]
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    events: queue.Queue = queue.Queue()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        job = job_list[i]
        try:
            value, _ = st_store.get_or_compute(
                job.kind, job.inputs,
                lambda: job.compute(lambda step, steps, loss, images=None:
                                    events.put((i, step, steps, loss, images))))
            results[i] = value
        except BaseException as e:  # reported in the script thread below
            errors.append(e)
    with compute_lock(), _oom_to_cpu():
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in todo]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) or not events.empty():
            try:
                i, step, steps, loss, images = events.get(timeout=0.1)
            except queue.Empty:
                continue
            show(i, step, steps, loss, images)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    return results


def data_missing_message(what: str) -> None:
    st.info(f"{what} needs the CIFAR-10 test set, which is not on this machine. "
            + data.GET_DATA_HINT, icon=":material/download:")


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show core's errors as messages; stop the page instead of a traceback."""
    try:
        yield
    except RobustLensError as e:
        st.error(str(e), icon=":material/error:")
        st.stop()


# ------------------------------------------------------------------ gallery

_GALLERY_CSS = """
.rl-gallery { display: flex; flex-wrap: wrap; gap: 8px; }
.rl-tile { display: flex; flex-direction: column; align-items: center; gap: 2px;
  padding: 4px; border: 2px solid transparent; border-radius: 8px; cursor: pointer;
  background: var(--st-secondary-background-color); color: var(--st-text-color);
  font: 11px var(--st-font, sans-serif); }
.rl-tile:hover { border-color: var(--st-border-color, #ccc); }
.rl-tile:focus-visible { outline: 3px solid var(--st-primary-color); outline-offset: 1px; }
.rl-tile[aria-pressed="true"] { border-color: var(--st-primary-color); }
.rl-tile img { width: var(--rl-size, 72px); height: var(--rl-size, 72px);
  image-rendering: pixelated; border-radius: 4px; }
.rl-tile span { max-width: var(--rl-size, 72px); overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
"""

_GALLERY_JS = """
export default function(component) {
  const { data, setStateValue, parentElement } = component;
  let root = parentElement.querySelector('.rl-gallery');
  if (!root) {
    root = document.createElement('div');
    root.className = 'rl-gallery';
    root.setAttribute('role', 'listbox');
    parentElement.appendChild(root);
  }
  root.style.setProperty('--rl-size', (data.size || 72) + 'px');
  root.setAttribute('aria-label', data.label || 'images');
  root.replaceChildren();
  const tiles = [];
  data.items.forEach((it, i) => {
    const b = document.createElement('button');
    b.className = 'rl-tile';
    b.type = 'button';
    b.dataset.key = it.key;
    b.title = it.title;
    b.setAttribute('aria-pressed', String(it.key === data.selected));
    const img = document.createElement('img');
    img.src = it.src;
    img.alt = it.title;
    const cap = document.createElement('span');
    cap.textContent = it.caption;
    b.append(img, cap);
    b.addEventListener('click', () => {
      tiles.forEach((t) => t.setAttribute('aria-pressed', String(t === b)));
      setStateValue('selected', it.key);
    });
    b.addEventListener('keydown', (e) => {
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (step) {
        e.preventDefault();
        tiles[(i + step + tiles.length) % tiles.length].focus();
      }
    });
    tiles.push(b);
    root.appendChild(b);
  });
}
"""


@st.cache_resource
def _gallery_component():
    import streamlit.components.v2 as components
    return components.component("robustlens_gallery", css=_GALLERY_CSS, js=_GALLERY_JS)


def png_data_url(img) -> str:
    """A small image as a data: URL (for the gallery)."""
    import base64
    import io

    from PIL import Image

    from .figures import to_uint8
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery(items: list[dict], key: str, selected: str | None = None, size: int = 72,
            label: str = "images") -> str | None:
    """A keyboard-accessible grid of clickable images; returns the selected key.

    items: [{key, image (CHW float or HWC uint8), title, caption}]. The choice is
    kept in st.session_state[key] (and so in the URL when published).
    """
    payload = {"items": [{"key": it["key"], "src": png_data_url(it["image"]),
                          "title": it.get("title", it["key"]), "caption": it.get("caption", "")}
                         for it in items],
               "selected": st.session_state.get(key, selected), "size": size, "label": label}
    result = _gallery_component()(data=payload, key=f"{key}-gallery",
                                  on_selected_change=lambda: None)
    choice = getattr(result, "selected", None)
    if choice and choice != st.session_state.get(key) and choice in {it["key"] for it in items}:
        st.session_state[key] = choice
    return st.session_state.get(key, selected)


# ------------------------------------------------------------------ sidebar

def _save_upload(upload) -> str:
    blob = upload.getvalue()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    suffix = "." + upload.name.rsplit(".", 1)[-1].lower() if "." in upload.name else ".pt"
    folder = data.cache_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{upload.name.rsplit('.', 1)[0][:40]}-{digest}{suffix}"
    if not path.exists():
        path.write_bytes(blob)
    return str(path)


def _add_model_form() -> None:
    with st.expander("Add a model", icon=":material/add:"):
        st.caption("A checkpoint file (safetensors, a state dict, a `robustness` library "
                   "checkpoint), a path on the server, `robustbench:NAME` or "
                   "`torchvision:NAME`.")
        upload = st.file_uploader("Checkpoint", type=["pt", "pth", "ckpt", "safetensors", "bin"],
                                  key="ckpt_upload")
        spec_text = st.text_input("...or a path / name", key="ckpt_spec")
        trust = st.checkbox("Trust this file (allows code execution while loading)",
                            key="ckpt_trust", help="Only for pickles from a source you trust.")
        if st.button("Add", key="ckpt_add"):
            spec = _save_upload(upload) if upload is not None else spec_text.strip()
            if not spec:
                st.warning("Choose a file or type a path or name first.")
                return
            trusted = st.session_state.setdefault("trusted_specs", set())
            if trust:
                trusted.add(spec)
            try:
                probe = model(spec)
            except RobustLensError as e:
                st.error(str(e))
                return
            specs = st.session_state.setdefault("custom_specs", [])
            if spec not in specs:
                specs.append(spec)
            st.success(f"Added {probe.name}: {len(probe.layers)} taps.")


def _card_summary(spec: str) -> None:
    c = model_card(spec)
    measured = c.get("measured") or {}
    bits = []
    if c.get("arch"):
        bits.append(f"{c['arch']} w{c.get('width', '?')}")
    if c.get("parameters"):
        bits.append(f"{c['parameters'] / 1e6:.1f}M params")
    if "clean" in measured:
        bits.append(f"clean {measured['clean']:.1%}")
        own = _own_attack_acc(c)
        if own:
            bits.append(own)
    st.caption(" · ".join(bits) if bits else c.get("source", ""))
    with st.popover("Model card", icon=":material/badge:", width="stretch"):
        if c.get("recipe"):
            st.markdown(f"**Recipe.** {c['recipe']}.")
        if measured:
            rows = [{"measure": "clean", "accuracy": f"{measured['clean']:.1%}"}] + [
                {"measure": k, "accuracy": f"{v:.1%}"} for k, v in measured.get("pgd", {}).items()]
            st.dataframe(rows, hide_index=True, width="stretch")
            st.caption(f"Measured on {measured.get('n', '?'):,} CIFAR-10 test images "
                       f"({measured.get('hardware', '')}, {measured.get('date', '')}).")
        target = c.get("target")
        if target and "clean" in measured:
            own = _own_attack_value(c)
            met = measured["clean"] >= target["clean"] and (
                target.get("own_pgd20") is None or (own is not None and own >= target["own_pgd20"]))
            goal = f"clean ≥ {target['clean']:.0%}" + (
                f", own-eps PGD-20 ≥ {target['own_pgd20']:.0%}" if target.get("own_pgd20") else "")
            st.caption(f"Target ({goal}, {target.get('assumes', '')}): "
                       f"{'met' if met else 'not met'}.")
        if c.get("why_width"):
            st.caption(c["why_width"])
        st.json(c, expanded=False)


def _own_attack_value(c: dict) -> float | None:
    from .evaluation import own_attack
    atk = own_attack(c)
    pgd = (c.get("measured") or {}).get("pgd", {})
    return pgd.get(atk.describe()) if atk is not None else None


def _own_attack_acc(c: dict) -> str | None:
    own = _own_attack_value(c)
    if own is not None:
        return f"PGD-20 {own:.1%}"
    pgd = (c.get("measured") or {}).get("pgd", {})
    if "PGD-20 LINF eps 8/255 step 2/255" in pgd:
        return f"Linf 8/255 PGD {pgd['PGD-20 LINF eps 8/255 step 2/255']:.1%}"
    return None


def sidebar() -> None:
    """Device and model pickers shared by every page (keys 'a', 'b', 'device')."""
    specs = model_specs()
    with st.sidebar:
        st.markdown("### Models")
        if not specs:
            st.warning("No models found in pretrained/; add one below.")
        else:
            default_a = DEFAULT_A if DEFAULT_A in specs else specs[0]
            default_b = DEFAULT_B if DEFAULT_B in specs else specs[-1]
            url_state("a", default_a, specs)
            url_state("b", default_b, specs)
            st.selectbox("Model A (robust)", specs, key="a", format_func=label,
                         help="The model whose representations are studied; "
                              "a robust one by default.")
            _card_summary(st.session_state["a"])
            st.selectbox("Model B (standard)", specs, key="b", format_func=label,
                         help="The model to compare with; a standard one by default.")
            _card_summary(st.session_state["b"])
        _add_model_form()
        options = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
            ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
        if "device_next" in st.session_state:
            st.session_state["device"] = st.session_state.pop("device_next")
        url_state("device", "auto", options)
        st.selectbox("Device", options, key="device",
                     help="auto: CUDA, then Apple MPS, then CPU. Results are the same "
                          "on every device and are shared through the results store.")
        st.markdown("### Talk")
        url_state("present", False)
        st.toggle("Presentation mode", key="present",
                  help="Hides the sidebar and settings and enlarges figures for a projector. "
                       "Esc leaves it; so does ?present=0 in the URL.")
        available = decks()
        if available:
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            chosen = c1.selectbox("Deck", list(available), key="deck_pick")
            if c2.button("Start", key="deck_start", help="Step through the deck's views; "
                         "arrow keys or a clicker move between them."):
                start_deck(chosen)
        publish(["a", "b", "device", "present"])


def selected(which: str) -> str:
    """The spec chosen in the sidebar for 'a' or 'b' (stops the page if none)."""
    if which not in st.session_state:
        st.warning("No models are available: add one in the sidebar (a checkpoint file, "
                   "`robustbench:NAME` or `torchvision:NAME`).", icon=":material/warning:")
        st.stop()
    return st.session_state[which]


def card_json(spec: str) -> str:
    return json.dumps(model_card(spec), indent=2)
