"""Views: a page and its settings as one plain dict, the same one the URL holds.

Every setting of every page is declared once: the sidebar's here (`COMMON`), each
analysis page's in its analysis (core.analyses, `Page.settings`). The pages build their
widgets from them, links and talk decks are checked against them, and `python -m core
precompute DECK` computes every job a view needs (`view_jobs`, each page's own), so a
bookmarked link or a deck slide opens with nothing left to compute.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.jobs import Job, Loader

HOME = ("", "pages/home.py")
DEFAULT_A = "resnet18-l2-1.0"      # the robust model with the clearest reconstructions
DEFAULT_B = "resnet18-standard-s0"


@dataclass(frozen=True)
class Setting:
    """One setting of a page: its URL key, default, options and what a person reads.

    options None means a free value of the default's type (a model name, an image
    key, a number within `bounds`); `labels` maps an option to the words shown;
    server_path: a folder on the server, read only where the session may (core.access)."""
    key: str
    default: Any
    label: str
    options: tuple | None = None
    labels: Mapping[Any, str] = field(default_factory=dict)
    help: str = ""
    bounds: tuple[int, int] | None = None
    server_path: bool = False

    def show(self, value: Any) -> str:
        return self.labels.get(value, str(value))

    def parse(self, raw: Any) -> Any:
        """A URL or deck value -> a valid value of this setting; ValueError if it is not."""
        d = self.default
        if isinstance(raw, str):
            if isinstance(d, bool):
                if raw not in ("1", "0", "true", "false", "True", "False"):
                    raise ValueError(raw)
                value: Any = raw in ("1", "true", "True")
            elif isinstance(d, int) or (d is None and self.bounds):
                value = int(raw)
            elif isinstance(d, (list, tuple)):
                value = [int(x) for x in raw.split(",") if x != ""]
            else:
                value = raw
        else:
            value = list(raw) if isinstance(raw, tuple) else raw
        if self.options is not None and value not in self.options:
            raise ValueError(f"{self.key} must be one of {', '.join(map(str, self.options))}")
        if self.bounds is not None and value is not None and not (
                self.bounds[0] <= value <= self.bounds[1]):
            raise ValueError(f"{self.key} must lie in {self.bounds}")
        if isinstance(d, list) and (len(value) != len(d) or any(v < 0 for v in value)):
            raise ValueError(f"{self.key} must be {len(d)} non-negative integers")
        return value

    def format(self, value: Any) -> str:
        """A value as it stands in the URL."""
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)


# settings every page shares (the sidebar's)
COMMON = (
    Setting("a", DEFAULT_A, "Model A", help="The model whose representations are studied; "
            "a robust one by default."),
    Setting("b", DEFAULT_B, "Model B", help="The model to compare with; a standard one by "
            "default."),
    Setting("present", False, "Presentation mode", help="Hides the sidebar and settings and "
            "enlarges figures for a projector. Esc, the exit button or ?present=0 leave it."),
)

IMAGE_SOURCES = {"test": "CIFAR-10 test set", "samples": "CIFAR-10 samples",
                 "photos": "Photos (out of distribution)", "upload": "Your images"}


def image_settings(prefix: str, default: str = "foolbox-00") -> tuple[Setting, ...]:
    """The settings of a page's image picker (ui.picker): where its images come from,
    the chosen one, and the page of the test set's fixed shuffle shown."""
    return (Setting(f"{prefix}_source", "samples", "Images", tuple(IMAGE_SOURCES),
                    IMAGE_SOURCES),
            Setting(f"{prefix}_img", default, "Image"),
            Setting(f"{prefix}_page", 0, "Page of the shuffled test set", bounds=(0, 415),
                    help="24 images a page, in a fixed shuffle."))


FOLDER_HELP = ("Empty: CIFAR-10. Else a folder on this server of class folders of images "
               "(an ImageNet validation folder), read at the models' input size; for models "
               "of other data sets.")


def _pages() -> dict:
    from core import analyses
    return {p.key: p for p in analyses.pages()}


def pages() -> dict[str, str]:
    """URL path -> page script, in menu order (the home page first)."""
    return dict([HOME] + [(key, p.script) for key, p in _pages().items()])


def __getattr__(name: str) -> Any:
    if name == "PAGES":         # URL path -> page script, as pages() gives it
        return pages()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def page(key: str) -> Any:
    """An analysis page's declaration (core.analyses.Page): title, texts, paper, settings."""
    return _pages()[key]


def page_settings(page: str) -> dict[str, Setting]:
    """The settings of a page, the shared ones first: {URL key: Setting}."""
    known = _pages()
    if page not in known and page != HOME[0]:
        raise ValueError(f"unknown page {page!r}; pages: "
                         f"{', '.join(p or '(home)' for p in pages())}")
    return {s.key: s for s in COMMON + (known[page].settings if page else ())}


def settings(page: str, params: Mapping[str, Any]) -> dict:
    """The full settings of a view: its parameters (validated) over the page's defaults."""
    known = page_settings(page)
    unknown = set(params) - set(known)
    if unknown:
        raise ValueError(f"page {page or 'home'} has no setting {', '.join(sorted(unknown))}")
    out = {k: s.default for k, s in known.items()}
    for k, v in params.items():
        out[k] = known[k].parse(v)
    return out


def view_jobs(load: Loader, page: str, params: Mapping[str, Any]) -> list[Job]:
    """Every cached computation the view (page, params) shows, for the shipped zoo."""
    s = settings(page, params)
    return _pages()[page].view_jobs(load, s) if page else []


def view_extras(load: Loader, page: str, params: Mapping[str, Any]) -> list[Job]:
    """What the view (page, params) looks up beside its jobs (Page.view_extras)."""
    s = settings(page, params)
    extras = _pages()[page].view_extras if page else None
    return extras(load, s) if extras else []


# -------------------------------------------------------------------- decks

def load_deck(path: str | Path) -> dict:
    """A talk deck: YAML or JSON {title, views: [{page, title, note, params}]}."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml
        deck = yaml.safe_load(text)
    else:
        deck = json.loads(text)
    if not isinstance(deck, dict) or not isinstance(deck.get("views"), list) or not deck["views"]:
        raise ValueError(f"{path.name}: a deck is a mapping with a non-empty list 'views'")
    for i, v in enumerate(deck["views"]):
        if not isinstance(v, dict) or "page" not in v:
            raise ValueError(f"{path.name}: view {i + 1} needs a 'page'")
        try:
            settings(v["page"], v.get("params") or {})  # validates page, names and values
        except ValueError as e:
            raise ValueError(f"{path.name}: view {i + 1}: {e}") from e
        v.setdefault("params", {})
        v.setdefault("title", v["page"])
    return deck


def query_params(view: Mapping[str, Any]) -> dict[str, str]:
    """A deck view as URL query parameters (the format pages read)."""
    known = page_settings(view["page"])
    return {k: known[k].format(v) for k, v in (view.get("params") or {}).items()}
