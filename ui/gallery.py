"""A grid of clickable images (a Streamlit component; its JS and CSS in ui/static)."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Callable

import streamlit as st
from PIL import Image

from core.data.images import to_uint8

STATIC = Path(__file__).resolve().parent / "static"


@st.cache_resource
def _component():
    import streamlit.components.v2 as components
    return components.component("robustlens_gallery", css=(STATIC / "gallery.css").read_text(),
                                js=(STATIC / "gallery.js").read_text())


# CIFAR-10's classes as the PyTorch tutorial shortens them: whole words under a 48 px tile
_TILE_NAMES = {"airplane": "plane", "automobile": "car"}


def tile_label(class_name: str) -> str:
    """A class name for a tile's caption: CIFAR-10's in their short forms, any other
    whole (a tile ends a long one with "…" and shows it in full on hover)."""
    return _TILE_NAMES.get(class_name, class_name)


def png_data_url(img: Any) -> str:
    """A small image as a data: URL."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _picked(state: Any) -> str | None:
    if isinstance(state, dict):
        return state.get("selected")
    return getattr(state, "selected", None)


def gallery(items: list[dict], key: str, size: int = 72, label: str = "images",
            on_pick: Callable[[str], None] | None = None) -> str | None:
    """Draw the images; the one in st.session_state[key] is highlighted. A click stores
    the clicked key in st.session_state[key] before the next run (a callback), so that
    run already highlights and shows the clicked image. items: [{key, image, title,
    caption}]; on_pick(key) runs in the same callback."""
    keys = {it["key"] for it in items}
    component_key = f"{key}-gallery"

    def picked() -> None:
        choice = _picked(st.session_state.get(component_key))
        if choice in keys:
            st.session_state[key] = choice
            if on_pick is not None:
                on_pick(choice)
    payload = {"items": [{"key": it["key"], "src": png_data_url(it["image"]),
                          "title": it.get("title", it["key"]), "caption": it.get("caption", "")}
                         for it in items],
               "selected": st.session_state.get(key), "size": size, "label": label}
    _component()(data=payload, key=component_key, on_selected_change=picked)
    return st.session_state.get(key)
