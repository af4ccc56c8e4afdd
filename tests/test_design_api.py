"""The public entry points of the design (../shared/DESIGN.md, "Public API") keep their
names and documented keywords: users and their scripts call them."""
from __future__ import annotations

import inspect

import pytest
import torch

from core import attacks, cka, data, inversion, stitching, zoo
from core.probe import Probe

# (module, function, keywords the design documents for it)
ENTRY_POINTS = [
    (zoo, "names", []),
    (zoo, "card", ["name"]),
    (zoo, "load", ["name_or_path"]),
    (data, "cifar10", ["split", "root"]),
    (attacks, "pgd", ["model", "x", "y", "norm", "eps", "step_size", "steps", "random_start"]),
    (attacks, "accuracy", ["model", "loader", "attack"]),
    (cka, "linear_cka", ["X", "Y", "unbiased"]),
    (cka, "cka_matrix", ["model_a", "model_b", "loader", "layers_a", "layers_b", "kernel",
                         "attack", "progress"]),
    (stitching, "fit", ["front", "end", "layer", "loader", "method"]),
    (stitching, "evaluate", ["stitched", "loader", "attack"]),
    (stitching, "matrix", ["end", "layers"]),
    (inversion, "invert", ["model", "target", "seed", "steps", "progress"]),
    (inversion, "visualize_feature", []),
    (inversion, "add_feature", []),
    (inversion, "interpolate", []),
    (inversion, "top_activating", []),
    (inversion, "explain_misclassification", []),
]


@pytest.mark.parametrize("module, name, keywords", ENTRY_POINTS,
                         ids=[f"{m.__name__}.{n}" for m, n, _ in ENTRY_POINTS])
def test_each_design_entry_point_keeps_its_keywords(module, name, keywords):
    function = getattr(module, name)
    assert callable(function)
    missing = set(keywords) - set(inspect.signature(function).parameters)
    assert not missing, f"{module.__name__}.{name} lost {sorted(missing)}"


# where the design writes arguments in an order, a call may pass them by position
POSITIONAL = [
    (attacks, "pgd", ["model", "x", "y", "norm", "eps", "step_size", "steps", "random_start"]),
    (attacks, "accuracy", ["model", "loader", "attack"]),
    (cka, "linear_cka", ["X", "Y", "unbiased"]),
    (cka, "cka_matrix", ["model_a", "model_b", "loader", "layers_a", "layers_b", "kernel"]),
    (stitching, "fit", ["front", "end", "layer", "loader", "method"]),
    (stitching, "evaluate", ["stitched", "loader", "attack"]),
    (inversion, "invert", ["model", "target", "seed", "steps", "progress"]),
]


@pytest.mark.parametrize("module, name, order", POSITIONAL,
                         ids=[f"{m.__name__}.{n}" for m, n, _ in POSITIONAL])
def test_each_design_entry_point_takes_its_arguments_in_the_documented_order(module, name,
                                                                             order):
    parameters = list(inspect.signature(getattr(module, name)).parameters.values())
    assert [p.name for p in parameters[:len(order)]] == order
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters[:len(order)])


def test_the_probe_keeps_its_documented_members():
    for member in ("layers", "features", "representation", "forward"):
        assert hasattr(Probe, member), member


def test_cka_matrix_attack_keyword_attacks_both_sides():
    from helpers import tiny_probe
    a, b = tiny_probe(width=4, seed=0), tiny_probe(width=4, seed=1)
    loader = data.ImageTensorDataset(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8),
                                     torch.arange(16) % 10)
    attack = attacks.PGD(norm="linf", eps=8 / 255, step_size=2 / 255, steps=2)
    layers = a.layers[-2:]
    both = cka.cka_matrix(a, b, loader, layers, layers, attack=attack, batch_size=8)
    sides = cka.cka_matrix(a, b, loader, layers, layers, attack_a=attack, attack_b=attack,
                           batch_size=8)
    benign = cka.cka_matrix(a, b, loader, layers, layers, batch_size=8)
    assert torch.allclose(torch.as_tensor(both.matrix), torch.as_tensor(sides.matrix))
    assert not torch.allclose(torch.as_tensor(both.matrix), torch.as_tensor(benign.matrix))
    with pytest.raises(ValueError, match="either attack"):
        cka.cka_matrix(a, a, loader, layers, layers, attack=attack, attack_a=attack)
