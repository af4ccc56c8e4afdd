"""The shipped zoo in pretrained/: every card's weights load, match the card's
hash, and (with the data set present) still measure what the card says."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from helpers import has_test_data
from core import evaluation, zoo

SHIPPED = zoo.names()
CARDS = sorted(zoo.PRETRAINED.glob("*.json")) if zoo.PRETRAINED.is_dir() else []


def test_the_zoo_is_shipped_and_small():
    assert len(SHIPPED) >= 3, SHIPPED
    robust = [n for n in SHIPPED if zoo.card(n).get("threat_model") not in (None, "none")]
    assert robust and len(robust) < len(SHIPPED), "robust and standard models both ship"
    total = sum(p.stat().st_size for p in zoo.PRETRAINED.iterdir())
    assert total < 40 * 2**20, f"pretrained/ is {total / 2**20:.1f} MB"


@pytest.mark.parametrize("card_path", CARDS, ids=[c.stem for c in CARDS])
def test_every_card_loads_its_hashed_fp16_weights(card_path):
    card = json.loads(card_path.read_text())
    weights = card_path.with_name(card["weights"]["file"])
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["weights"]["sha256"]
    assert card["weights"]["dtype"] == "float16"
    probe = zoo.load(card["name"], device="cpu")
    assert sum(p.numel() for p in probe.model.parameters()) == card["parameters"]
    for key in ("arch", "width", "threat_model", "seed", "recipe", "training", "measured"):
        assert key in card, f"{card['name']}: card lacks {key}"
    with torch.no_grad():
        assert probe(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(not has_test_data(), reason="CIFAR-10 test set absent")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_measures_what_its_card_says(name):
    """Clean and own-eps PGD-20 accuracy on 200 test images, within sampling error."""
    out = evaluation.check_card(name, n=200)
    for what, (now, card) in out.items():
        assert abs(now - card) <= 0.08, (name, what, now, card)


def test_shipped_results_were_computed_from_the_shipped_weights():
    """Every result in assets/results names the models it was computed from; each must
    be a model of pretrained/ with the fingerprint of the weights that ship."""
    from core.results import ASSETS
    fingerprints = {n: zoo.card(n)["weights"]["sha256"][:16] for n in SHIPPED}
    results = sorted(ASSETS.glob("*.json")) if ASSETS.is_dir() else []
    assert results, "no shipped results"

    def models(v):
        if isinstance(v, dict):
            if set(v) == {"name", "fingerprint"}:
                yield v
            for x in v.values():
                yield from models(x)
        elif isinstance(v, list):
            for x in v:
                yield from models(x)
    for path in results:
        sidecar = path.with_suffix(".inputs")
        assert sidecar.exists(), f"{path.name} does not say what it was computed from"
        named = list(models(json.loads(sidecar.read_text())["inputs"]))
        assert named, path.name
        for m in named:
            assert fingerprints.get(m["name"]) == m["fingerprint"], (path.name, m)
