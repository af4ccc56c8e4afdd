"""What the app shows offline: every view listed here opens on a fresh machine with the
shipped zoo and no data set, from results shipped in assets/results/.

Everything else computes from shipped material (inversions, feature visualisation,
addition, interpolation and explanations need no data set) or offers one action to
get CIFAR-10 (ui.page.need_data). `python -m core precompute --ship-list
--to-assets --prune` computes and ships the list; tests/test_shiplist.py opens every
view offline and fails on a "needs the CIFAR-10 test set" message.

Budgets: assets/results/ at most ASSETS_BUDGET_MB; the whole list computes in about
COMPUTE_BUDGET_CPU_HOURS on 2 CPU cores (minutes on a GPU), dominated by the PGD-20
attacks of the adversarial CKA views and the 180 stitching cells.
"""
from __future__ import annotations

from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any

from . import data, views, zoo

ASSETS_BUDGET_MB = 30
COMPUTE_BUDGET_CPU_HOURS = 6
DECKS = Path(__file__).resolve().parent.parent / "assets" / "decks"

View = tuple[str, dict[str, Any]]


def _robust_and_standard() -> tuple[list[str], list[str]]:
    names = zoo.names()
    robust = [n for n in names if zoo.is_robust(zoo.card(n))]
    return robust, [n for n in names if n not in robust]


def cka_views() -> list[View]:
    """Every model pair (either order: B vs A is A vs B transposed) and kernel at the
    default layers on benign inputs, every layer for the default pair; adversarial inputs and the paper view (block
    outputs; every layer in the decks) for the papers' pairs (the Linf 8/255 and L2
    1.0 models against standard seed 0)."""
    robust, standard = _robust_and_standard()
    out: list[View] = [("cka", {}), ("cka", {"cka_layers": "all"})]
    for x, y in combinations_with_replacement(zoo.names(), 2):
        for kernel in ("linear", "rbf"):
            out.append(("cka", {"a": x, "b": y, "cka_pair": "A vs A" if x == y else "A vs B",
                                "cka_kernel": kernel}))
    papers = [r for r in (views.STITCH_ROBUST, views.DEFAULT_A) if r in robust]
    std = views.DEFAULT_B if views.DEFAULT_B in standard else standard[0]
    for r in papers:
        for norm in ("linf", "l2"):
            out.append(("cka", {"a": r, "b": std, "cka_in_a": norm, "cka_in_b": norm}))
        for inputs in views.INPUTS:
            out.append(("cka", {"a": r, "b": std, "cka_view": "Paper view", "cka_in_a": inputs}))
    return out


def stitching_views() -> list[View]:
    """The matrix's rows for each robust model, both matching methods."""
    robust, _ = _robust_and_standard()
    return [("stitching", {"st_r": r, "st_method": m}) for r in robust for m in ("task", "direct")]


def inversion_views() -> list[View]:
    """Every shipped sample and photo, reconstructed by the default pair."""
    out: list[View] = [("inversion", {})]
    out += [("inversion", {"inv_img": s.key}) for s in data.cifar_samples()]
    out += [("inversion", {"inv_source": "photos", "inv_img": s.key}) for s in data.ood_photos()]
    return out


def manipulation_views() -> list[View]:
    """Each tab at its defaults, for each robust model as model A."""
    robust, _ = _robust_and_standard()
    out: list[View] = []
    for r in robust:
        for tab in views.page_settings("manipulation")["mf_tab"].options:
            out.append(("manipulation", {"a": r, "mf_tab": tab}))
    return out


def deck_views() -> list[View]:
    out: list[View] = []
    for path in sorted(DECKS.glob("*.y*ml")) + sorted(DECKS.glob("*.json")):
        out += [(v["page"], dict(v["params"])) for v in views.load_deck(path)["views"]]
    return out


def ship_list() -> list[View]:
    """Every (page, params) view that must work offline, without repeats."""
    seen, out = set(), []
    for view in ([("", {})] + cka_views() + stitching_views() + inversion_views()
                 + manipulation_views() + deck_views()):
        key = (view[0], tuple(sorted((k, str(v)) for k, v in view[1].items())))
        if key not in seen:
            seen.add(key)
            out.append(view)
    return out
