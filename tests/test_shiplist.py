"""Offline, no dead ends: every view of the ship list opens on a machine without
CIFAR-10, from the results shipped in assets/, without computing anything."""
from __future__ import annotations

import pytest

from core import data, shiplist, views
from core.results import ASSETS, ResultStore
from helpers import asks_for_data
from helpers import run_app

COMPUTE_BUTTONS = ("Compute", "Visualise", "Interpolate", "Add feature", "Measure", "Explain",
                   "Find")


def test_the_ship_list_names_every_page_and_the_decks():
    views_ = shiplist.ship_list()
    assert {p for p, _ in views_} == set(views.PAGES)
    for page, params in shiplist.deck_views():
        assert (page, params) in views_


def test_shipped_results_stay_within_the_size_budget():
    total = sum(p.stat().st_size for p in ASSETS.iterdir()) if ASSETS.is_dir() else 0
    assert total <= shiplist.ASSETS_BUDGET_MB * 2**20, f"assets/results is {total / 2**20:.1f} MB"


@pytest.fixture
def no_data_set(monkeypatch, tmp_path):
    """No data set anywhere this process looks; a fresh, empty results store."""
    monkeypatch.delenv("ROBUSTLENS_DATA", raising=False)
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_candidate_roots", lambda: [tmp_path / "nowhere"])
    assert not data.has_cifar10("test")
    return tmp_path / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("page,params", shiplist.ship_list(),
                         ids=[f"{p or 'home'}-{i}" for i, (p, _) in enumerate(shiplist.ship_list())])
def test_every_ship_list_view_opens_offline_with_nothing_to_compute(no_data_set, page, params):
    at = run_app(views.PAGES[page], views.query_params({"page": page, "params": params}))
    assert not at.exception, [e.value for e in at.exception]
    texts = [i.value for i in at.info] + [e.value for e in at.error] + [w.value for w in at.warning]
    assert not asks_for_data(texts), texts
    buttons = [b.label for b in at.button if b.label.startswith(COMPUTE_BUTTONS)]
    assert not buttons, buttons
    store = no_data_set / "results.sqlite"
    computed = ResultStore(store, assets=None).entries() if store.exists() else []
    assert not computed, [e["kind"] for e in computed]       # all of it came from assets/
