"""What the app shows offline: every view listed here opens on a fresh machine with the
shipped zoo and no data set, from results shipped in assets/results/.

Everything else computes from shipped material (inversions, feature visualisation,
addition, interpolation and explanations need no data set) or offers one action to
get CIFAR-10 (ui.page.need_data). `python -m core precompute --ship-list
--to-assets --prune` computes and ships the list, most important views first;
tests/test_shiplist.py opens every view offline and fails on a "needs the CIFAR-10
test set" message or on anything left to compute.

Budgets: assets/results/ at most ASSETS_BUDGET_MB; the whole list computes in about
COMPUTE_BUDGET_CPU_HOURS on 2 CPU cores (minutes on a GPU), dominated by the 144
stitching cells and the attacks of the adversarial CKA views. Those views use
ADVERSARIAL_IMAGES test images: PGD-20 on all 10,000 costs a CPU core about 70 minutes
per model and attack, each 10-step unforeseen attack about 12 (seconds on a GPU).
"""
from __future__ import annotations

from itertools import combinations_with_replacement
from typing import Any

from core import PROJECT, data, views
from core.analyses.inversion import MANIPULATION_TABS
from core.analyses.similarity import MEASURES
from core.analyses.stitching import STITCH_ROBUST
from core.models import zoo

ASSETS_BUDGET_MB = 30
COMPUTE_BUDGET_CPU_HOURS = 6
ADVERSARIAL_IMAGES = 2000
ALL_AT_ONCE_IMAGES = 2000
DECKS = PROJECT / "assets" / "decks"

View = tuple[str, dict[str, Any]]


def _robust_and_standard() -> tuple[list[str], list[str]]:
    names = zoo.names()
    robust = [n for n in names if zoo.is_robust(zoo.card(n))]
    return robust, [n for n in names if n not in robust]


def _papers_pairs() -> list[tuple[str, str]]:
    """The papers' pairs: the Linf 8/255 and L2 1.0 models against standard seed 0."""
    robust, standard = _robust_and_standard()
    std = views.DEFAULT_B if views.DEFAULT_B in standard else standard[0]
    return [(r, std) for r in (STITCH_ROBUST, views.DEFAULT_A) if r in robust]


def deck_views() -> list[View]:
    out: list[View] = []
    for path in sorted(DECKS.glob("*.y*ml")) + sorted(DECKS.glob("*.json")):
        out += [(v["page"], dict(v["params"])) for v in views.load_deck(path)["views"]]
    return out


def defaults() -> list[View]:
    """Each page as it first opens, every shipped sample and photo inverted by the
    default pair, every manipulation tab of the default model, both stitching methods."""
    out: list[View] = [(page, {}) for page in views.PAGES]
    out += [("cka", {"cka_layers": "all"}), ("stitching", {"st_method": "direct"})]
    out += [("inversion", {"inv_img": s.key}) for s in data.cifar_samples()]
    out += [("inversion", {"inv_source": "photos", "inv_img": s.key}) for s in data.ood_photos()]
    out += [("manipulation", {"mf_tab": tab})
            for tab in MANIPULATION_TABS]
    return out


def model_choices() -> list[View]:
    """What changes with the sidebar's models: the stitching rows of each robust model,
    every model pair (either order: B vs A is A vs B transposed) at the CKA page's
    default view, the manipulation tabs of each robust model."""
    robust, _ = _robust_and_standard()
    out: list[View] = [("stitching", {"st_r": r, "st_method": m})
                       for r in robust for m in ("task", "direct")]
    for x, y in combinations_with_replacement(zoo.names(), 2):
        out.append(("cka", {"a": x, "b": y, "cka_pair": "A vs A" if x == y else "A vs B"}))
    out += [("manipulation", {"a": r, "mf_tab": tab}) for r in robust
            for tab in MANIPULATION_TABS]
    return out


def papers_views() -> list[View]:
    """The papers' pairs in the paper view (block outputs) on benign inputs; for the Linf
    8/255 pair also on adversarial inputs under each attack of the CKA paper (PGD Linf and
    L2, the unforeseen snow, Gabor and JPEG), in both views; the RBF kernel for the
    default pair."""
    pairs = _papers_pairs()
    paper: list[View] = [("cka", {"a": r, "b": std, "cka_view": "Paper view"}) for r, std in pairs]
    adversarial: list[View] = []
    for r, std in pairs[:1]:
        for norm in ("linf", "l2", "snow", "gabor", "jpeg"):
            adv = {"a": r, "b": std, "cka_n": ADVERSARIAL_IMAGES, "cka_in_a": norm}
            adversarial += [("cka", {**adv, "cka_in_b": norm}),
                            ("cka", {**adv, "cka_view": "Paper view"})]
    return [("cka", {"cka_kernel": "rbf"})] + paper[:1] + adversarial + paper[1:]


def measure_views() -> list[View]:
    """The default pair under every similarity measure of the registry: on all 10,000
    images where the measure streams, else on ALL_AT_ONCE_IMAGES (the full-data measures
    hold every image's features and, for RSA and k-NN, an n x n matrix per layer)."""
    return [("cka", {"cka_measure": name,
                     "cka_n": 10_000 if m.streams else ALL_AT_ONCE_IMAGES})
            for name, m in MEASURES.items()]


def ship_list() -> list[View]:
    """Every (page, params) view that must work offline, most important first, without
    repeats: the decks, the pages' defaults, the sidebar's model choices, the papers'
    adversarial and paper views, the default pair under every measure."""
    seen, out = set(), []
    for view in deck_views() + defaults() + model_choices() + papers_views() + measure_views():
        key = (view[0], tuple(sorted((k, str(v)) for k, v in view[1].items())))
        if key not in seen:
            seen.add(key)
            out.append(view)
    return out
