"""Measuring robustness honestly: the worst case of PGD-20 and AutoAttack's untargeted
white-box attacks (AutoAttack's own code, pyautoattack), the gradient-masking check, and
the cards' target verdicts."""
from __future__ import annotations

import re

import pytest
import torch

from helpers import tiny_probe
from core import evaluation
from core.data import ImageTensorDataset
from core.probe import Probe


def _test_set(n: int = 40) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(0)
    return ImageTensorDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                                            generator=g), torch.randint(0, 10, (n,), generator=g))


def test_the_worst_case_is_no_better_than_any_attack():
    probe = tiny_probe(width=4)
    card = {"name": "tiny", "threat_model": "linf", "eps": 8 / 255}
    res = evaluation.strong_robustness(probe, _test_set(), card, n=40, log=lambda s: None)
    assert res["n"] == 40 and res["threat"] == "LINF eps 8/255"
    for attack in ("pgd20", "apgd_ce", "apgd_dlr"):
        assert res["worst_case"] <= res[attack] <= res["clean"]
    assert res["pgd20_at_4x_eps"] <= res["pgd20"]
    assert res["gap_pgd20_to_worst_case"] == pytest.approx(res["pgd20"] - res["worst_case"])
    assert res["masking_check"]


class MaskedBrightness(torch.nn.Module):
    """Classifies by mean brightness and hides its gradient (zero): white-box attacks
    fail, a black-box one does not."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0, 1, 10))

    def forward(self, x):
        return -100 * (x.detach().mean((1, 2, 3))[:, None] - self.centres).abs() + 0 * x.sum()


def test_a_masked_gradient_is_caught_and_counted_in_the_worst_case():
    masked = Probe(MaskedBrightness(), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), name="masked").eval()
    images = _test_set(10).images
    with torch.no_grad():   # labelled as it predicts: every image starts robust
        labelled = ImageTensorDataset(images, masked(images.float() / 255).argmax(1))
    res = evaluation.strong_robustness(masked, labelled, {"threat_model": "linf", "eps": 8 / 255},
                                       n=10, log=lambda s: None)
    assert res["pgd20"] == res["apgd_ce"] == res["pgd20_at_4x_eps"] == 1.0
    fooled = int(re.search(r"fooled (\d+) more", res["masking_check"]).group(1))
    assert fooled > 0 and res["worst_case"] == pytest.approx(1 - fooled / 10)


def test_a_standard_model_has_no_own_threat():
    assert evaluation.strong_robustness(tiny_probe(width=4), _test_set(), {"threat_model": "none"},
                                        log=lambda s: None) is None


def test_target_verdicts_say_by_how_much():
    card = {"threat_model": "l2", "eps": 1.0, "target": {"clean": 0.77, "own_pgd20": 0.47},
            "measured": {"n": 10_000, "clean": 0.7698, "pgd": {"PGD-20 L2 eps 1 step 0.25": 0.4686}}}
    verdict = evaluation.target_verdict(card)
    assert not verdict["met"] and "missed by 0.02 points" in verdict["text"]
    assert "missed by 0.14 points" in verdict["text"]
    card["measured"]["clean"], card["measured"]["pgd"]["PGD-20 L2 eps 1 step 0.25"] = 0.8, 0.5
    assert evaluation.target_verdict(card)["met"]
