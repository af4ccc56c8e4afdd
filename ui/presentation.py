"""Talks: presentation mode (no chrome, large type), decks of views stepped with the
arrow keys or a clicker, and every way out (Esc, the exit button, a deck's End).

The order of a run matters: keys and pending moves are handled by `start()` at the
top of app.py, before any widget exists, so leaving presentation mode can set the
sidebar toggle's value without Streamlit refusing a write to a drawn widget.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core import views
from ui import handover

STATIC = Path(__file__).resolve().parent / "static"
DECKS = Path(__file__).resolve().parent.parent / "assets" / "decks"
# session keys that outlive a slide change (the rest is the slide's own state)
_KEEP = ("device", "trusted_specs", "custom_specs", "uploads", "present", "_operator",
         "_session_id")


def presenting() -> bool:
    return bool(st.session_state.get("present", False))


def decks() -> dict[str, Path]:
    """The talk decks shipped in assets/decks (name -> path)."""
    return {p.stem: p for p in sorted(DECKS.glob("*.y*ml")) + sorted(DECKS.glob("*.json"))}


@st.cache_resource
def _keys_component():
    import streamlit.components.v2 as components
    return components.component("robustlens_keys", js=(STATIC / "keys.js").read_text())


@st.cache_data
def _css(name: str) -> str:
    return (STATIC / name).read_text()


def _deck() -> tuple[str, dict, int] | None:
    """The deck named in the URL, its views and the slide index (clamped)."""
    name = st.query_params.get("deck")
    if not name or name not in decks():
        return None
    try:
        deck = views.load_deck(decks()[name])
    except ValueError:
        return None
    try:
        i = int(st.query_params.get("slide", 0))
    except ValueError:
        i = 0
    return name, deck, min(max(i, 0), len(deck["views"]) - 1)


def _leave() -> None:
    """Presentation off and out of any deck (a callback, or before the toggle is drawn)."""
    st.session_state["present"] = False
    for k in ("deck", "slide", "present"):
        if k in st.query_params:
            del st.query_params[k]


def _request_slide(index: int) -> None:
    st.session_state["_slide_request"] = index


def _switch_to_slide(name: str, deck: dict, index: int) -> None:
    view = deck["views"][index]
    params = {**views.query_params(view), "deck": name, "slide": str(index)}
    if presenting():
        params["present"] = "1"
    for k in list(st.session_state):  # the slide's settings replace the current ones
        if k not in _KEEP:
            del st.session_state[k]
    st.switch_page(views.PAGES[view["page"]], query_params=params)


def start(url_path: str) -> None:
    """Top of every run: seed the presentation flag and draw the presentation CSS before
    anything else (no sidebar flash), then act on a key or a requested slide. A deck
    link opened on another page than its slide's goes to the slide."""
    if "present" not in st.session_state:
        st.session_state["present"] = handover.present_in_url()
    st.html(f"<style>{_css('app.css')}</style>")
    if presenting():
        st.html(f"<style>{_css('present.css')}</style>")
    current = _deck()
    pressed = None
    if presenting() or current:
        pressed = getattr(_keys_component()(key="deck-keys", on_key_change=lambda: None),
                          "key", None)
    if pressed == "exit":
        _leave()
        st.rerun()              # redraw without the presentation CSS
    elif current and pressed in ("next", "previous"):
        name, deck, i = current
        j = i + (1 if pressed == "next" else -1)
        if 0 <= j < len(deck["views"]):
            _switch_to_slide(name, deck, j)
    request = st.session_state.pop("_slide_request", None)
    if current and request is not None:
        _switch_to_slide(current[0], current[1], request)
    if current and current[1]["views"][current[2]]["page"] != url_path:
        _switch_to_slide(*current)
    wanted = st.session_state.pop("_deck_request", None)
    if wanted in decks():
        _switch_to_slide(wanted, views.load_deck(decks()[wanted]), 0)


def bar() -> None:
    """The deck bar (previous, title, next, end) or, presenting without a deck, the exit."""
    current = _deck()
    if current is None:
        return
    name, deck, i = current
    n = len(deck["views"])
    with st.container(key="deckbar", horizontal=True, vertical_alignment="center"):
        st.button("Previous", icon=":material/arrow_back:", disabled=i == 0, key="deck_prev",
                  on_click=_request_slide, args=(i - 1,))
        st.markdown(f"**{deck.get('title', name)}** · {i + 1}/{n} · {deck['views'][i]['title']}",
                    width="stretch")
        st.button("Next", icon=":material/arrow_forward:", disabled=i == n - 1,
                  key="deck_next", on_click=_request_slide, args=(i + 1,))
        st.button("End", icon=":material/close:", key="deck_end", on_click=_leave,
                  help="Leave the deck (and presentation mode)")


def exit_button() -> None:
    """Presenting without a deck: the way out, where the page puts it (its title row)."""
    if presenting() and _deck() is None:
        st.button("Exit presentation", icon=":material/close_fullscreen:", key="present_exit",
                  on_click=_leave)


def slide_note() -> str | None:
    """The note of the current deck slide, if any."""
    current = _deck()
    if current is None:
        return None
    return current[1]["views"][current[2]].get("note")


def controls(where: Any) -> None:
    """The sidebar's Talk section: presentation toggle and a deck to start."""
    where.toggle("Presentation mode", key="present",
                 help=views.page_settings("")["present"].help)
    available = decks()
    if available:
        c1, c2 = where.columns([3, 1], vertical_alignment="bottom")
        c1.selectbox("Deck", list(available), key="deck_pick")
        c2.button("Start", key="deck_start", help="Step through the deck's views; arrow keys "
                  "or a clicker move between them, Esc leaves.",
                  on_click=lambda: st.session_state.update(
                      _deck_request=st.session_state.get("deck_pick")))
