"""Settings as widgets: each one seeded from the URL once, validated against its
declaration in core.views.SETTINGS, and written back to the URL when it differs
from its default (so a link names exactly what the person changed).

Why not Streamlit's own `bind="query-params"` (1.67): a bound selectbox writes its
display label into the URL (`?model=Standard%20B`) and drops an option's id
(`?model=resnet18-standard-s0`), so every shared link and deck would stop opening; and a
bound parameter cannot be set through st.query_params, which the deck bar does.

Rule that keeps Streamlit happy: a widget's value is only ever written before the
widget is drawn in a run (here, or in a callback), never after.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence
from urllib.parse import quote

import streamlit as st

from core import views
from core.server import access

from . import backend


def setting(page: str, key: str) -> views.Setting:
    return views.page_settings(page)[key]


def seed(page: str, key: str, options: Sequence | None = None, default: Any = None) -> Any:
    """Put the setting's value in the session (from the URL on the first run, else its
    default), replacing a value that is not among `options`; returns the value."""
    s = setting(page, key)
    fallback = s.default if default is None else default
    if options is not None and fallback not in options:
        fallback = options[0] if options else fallback
    if key not in st.session_state:
        value = fallback
        raw = st.query_params.get(key)
        if raw is not None:
            try:
                value = s.parse(raw)
            except (TypeError, ValueError):
                value = fallback
        st.session_state[key] = value
    if options is not None and st.session_state[key] not in options:
        st.session_state[key] = fallback
    return st.session_state[key]


def value(page: str, key: str) -> Any:
    """The current value of a setting: its widget's, else (seeded now) the URL's or its
    default, so that a deep link's first run shows the widgets its value asks for."""
    return st.session_state[key] if key in st.session_state else seed(page, key)


def current(page: str) -> dict:
    """The page's settings as core.views reads them (seeding any not yet in the session);
    a server path this session may not read reads as empty."""
    for key in views.page_settings(page):
        if key not in st.session_state:
            seed(page, key)
    return {k: _readable(st.session_state[k])[0] if s.server_path else st.session_state[k]
            for k, s in views.page_settings(page).items()}


def _readable(value: str) -> tuple[str, str | None]:
    """A server path setting's value if this session may read it, else ("", why not)."""
    if not value:
        return value, None
    try:
        access.readable_path(value, backend.rights())
    except access.AccessError as e:
        return "", str(e)
    return value, None


def selectbox(where, page: str, key: str, options: Sequence | None = None,
              format_func: Callable[[Any], str] | None = None, label: str | None = None,
              **kw: Any) -> Any:
    s = setting(page, key)
    options = list(options if options is not None else s.options)
    seed(page, key, options)
    return where.selectbox(label or s.label, options, key=key, format_func=format_func or s.show,
                           help=kw.pop("help", s.help or None), **kw)


def segmented(where, page: str, key: str, **kw: Any) -> Any:
    s = setting(page, key)
    seed(page, key, s.options)
    chosen = where.segmented_control(s.label, list(s.options), key=key, format_func=s.show,
                                     help=kw.pop("help", s.help or None), **kw)
    return s.default if chosen is None else chosen


def select_slider(where, page: str, key: str, **kw: Any) -> Any:
    s = setting(page, key)
    seed(page, key, s.options)
    return where.select_slider(s.label, list(s.options), key=key, format_func=s.show,
                               help=kw.pop("help", s.help or None), **kw)


def text(where, page: str, key: str, **kw: Any) -> str:
    """A text setting; a server path this session may not read is refused in a sentence
    under it (and reads as empty)."""
    s = setting(page, key)
    seed(page, key)
    typed = where.text_input(s.label, key=key, help=kw.pop("help", s.help or None), **kw).strip()
    if not s.server_path:
        return typed
    value, why = _readable(typed)
    if why:
        where.warning(why, icon=":material/block:")
    return value


def number(where, page: str, key: str, default: int | None = None, **kw: Any) -> int:
    """A number input; `default` stands in for a setting whose default depends on
    another one (steps by optimiser): the URL then names the number only if changed."""
    s = setting(page, key)
    lo, hi = s.bounds or (0, 10**9)
    if key not in st.session_state:
        seed(page, key)
    if st.session_state[key] is None:
        st.session_state[key] = default if default is not None else lo
    return int(where.number_input(s.label, lo, hi, key=key, help=kw.pop("help", s.help or None),
                                  **kw))


def folder(where, page: str, key: str, *specs: str) -> str | None:
    """The image folder setting of an analysis over a data set, offered where one of the
    models is made for other images than CIFAR-10's (or a link names a folder): the
    folder, or None for CIFAR-10."""
    if {backend.model(s).kind for s in specs} != {"cifar10"} or value(page, key):
        return text(where, page, key, placeholder="/data/imagenet/val") or None
    return None


def following(where, page: str, key: str, auto: int, **kw: Any) -> int:
    """A number input that follows `auto` (steps: the optimiser's own default) until the
    person sets it; a link's value counts as set."""
    flag = f"_{key}_auto"
    if key not in st.session_state:
        seed(page, key)
        st.session_state[flag] = st.session_state[key] is None
    if st.session_state.get(flag, True):
        st.session_state[key] = auto
    return number(where, page, key, on_change=lambda: st.session_state.update({flag: False}),
                  **kw)


def keep() -> None:
    """Every page's settings outlive a visit to another page: Streamlit forgets a widget's
    value in a run that does not draw it, unless the run writes the value first."""
    for page in views.PAGES:
        for key in views.page_settings(page):
            if key in st.session_state:
                st.session_state[key] = st.session_state[key]


def publish(page: str, implicit: dict[str, Any] | None = None) -> None:
    """Write the page's settings into the URL: non-default values only, so links stay
    short and a default changed later reaches old links. `implicit` gives the value a
    setting has when left alone (steps of the chosen optimiser), which is not written."""
    for key, s in views.page_settings(page).items():
        if key not in st.session_state:
            continue
        v = st.session_state[key]
        default = (implicit or {}).get(key, s.default)
        if v == default or v is None:
            if key in st.query_params:
                del st.query_params[key]
        else:
            text = s.format(v)
            if st.query_params.get(key) != text:
                st.query_params[key] = text
    slot = st.session_state.pop("_link_slot", None)
    if slot is not None:   # the header's link, now that the URL names this run's settings
        base = (st.context.url or "").split("?")[0]
        # encoded, so that a space, '&' or '#' in a folder or a file name survives a paste
        params = "&".join(f"{quote(k)}={quote(v, safe='/,:')}"
                          for k, v in st.query_params.items())
        slot.code(f"{base}?{params}" if params else base, language=None, wrap_lines=True)


def share_link() -> None:
    """A 'copy link' control: the full URL of this exact view (st.code has a copy button),
    written by `publish` (drawn in the header, before the settings' widgets)."""
    with st.popover("Link", icon=":material/link:", help="Link to this view"):
        st.caption("Opens exactly this view; results come from the store.")
        st.session_state["_link_slot"] = st.empty()


def cell(settings: dict, key: str, rows: int, cols: int) -> tuple[int, int]:
    """A figure's chosen cell (a setting [row, column]), within its rows and columns."""
    i, j = settings[key]
    return min(int(i), rows - 1), min(int(j), cols - 1)


def pick_cell(chart_key: str, state_key: str) -> Callable[[], None]:
    """An on_select callback: the clicked cell (customdata[:2] of the selected point,
    see core.figures.click_layer) becomes st.session_state[state_key] before the run
    that draws it, so the highlight and the URL follow in one run."""
    def callback() -> None:
        event = st.session_state.get(chart_key)
        points = (event or {}).get("selection", {}).get("points", [])
        if points and points[0].get("customdata"):
            st.session_state[state_key] = [int(points[0]["customdata"][0]),
                                           int(points[0]["customdata"][1])]
            st.session_state[f"picked:{state_key}"] = True
    return callback


def picked(state_key: str) -> bool:
    """Whether this session has clicked a cell into state_key (a view opened at a cell
    from a link or a deck has not): what a click asks for may start at once."""
    return bool(st.session_state.get(f"picked:{state_key}"))
