"""Views as links and talk decks: a view round-trips through its URL, and the example
deck, once precomputed, opens every view without computing anything."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core import cli, views
from core.results import default_store
from helpers import run_app

DECK = Path(__file__).resolve().parent.parent / "assets" / "decks" / "three-papers.yaml"
COMPUTE_BUTTONS = ("Compute", "Visualise", "Interpolate", "Add feature", "Measure", "Explain",
                   "Find")


def test_example_deck_is_valid():
    deck = views.load_deck(DECK)
    assert len(deck["views"]) >= 8
    # the three papers' headline figures: a slide on each of their pages
    assert {v["page"] for v in deck["views"]} == {"cka", "stitching", "inversion", "manipulation"}


def test_bad_decks_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("views: []")
    with pytest.raises(ValueError, match="non-empty"):
        views.load_deck(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("views: [{page: nowhere}]")
    with pytest.raises(ValueError, match="unknown page"):
        views.load_deck(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("views: [{page: cka, params: {cka_colour: red}}]")
    with pytest.raises(ValueError, match="no setting cka_colour"):
        views.load_deck(tmp_path / "c.yaml")


def test_a_view_round_trips_through_its_url(world):
    params = {"a": "resnet18-linf-8", "b": "resnet18-standard-s1", "cka_pair": "B vs A",
              "cka_in_a": "linf", "cka_layers": "all", "cka_n": "2000", "cka_kernel": "rbf"}
    at = run_app("pages/cka.py", params)
    assert not at.exception
    assert at.sidebar.selectbox[0].value == "resnet18-linf-8"
    assert at.selectbox(key="cka_pair").value == "B vs A"
    assert at.selectbox(key="cka_in_a").value == "linf"
    assert at.select_slider(key="cka_n").value == 2000
    # the page writes its full state back into the URL
    for k, v in params.items():
        assert at.query_params[k] == [v] or at.query_params[k] == v, k


@pytest.mark.slow
def test_deck_precomputes_then_every_view_opens_without_computing(world, tmp_path, monkeypatch):
    store = default_store()
    monkeypatch.setattr(store, "assets", tmp_path / "assets")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / ("0" * 32 + ".json")).write_text("{}")  # a stale key
    out = cli._precompute(argparse.Namespace(deck=str(DECK), ship_list=False, device="cpu",
                                             to_assets=True, prune=True))
    shipped = sorted(p.stem for p in (tmp_path / "assets").glob("*.json"))
    assert out["pruned"] == 1 and "0" * 32 not in shipped and shipped
    before = len(store.entries())
    assert before > 0
    for view in views.load_deck(DECK)["views"]:
        page = views.PAGES[view["page"]]
        at = run_app(page, views.query_params(view))
        assert not at.exception, (view["title"], [e.value for e in at.exception])
        labels = [b.label for b in at.button]
        assert not [x for x in labels if x.startswith(COMPUTE_BUTTONS)], (view["title"], labels)
    assert len(store.entries()) == before, "opening the views computed something"
