"""The unforeseen attacks (snow, Gabor, JPEG) against their reference code, advex-uar
0.0.6.dev0 (installed for the tests, no dependencies): its attack modules are read from
the installed package with their .cuda() calls and "cuda" devices mapped to the CPU,
then run with the same seeds as core's attacks. The images must agree."""
from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from core.analyses import attacks, cka, unforeseen
from core.analyses.unforeseen import JPEG, Gabor, Snow

ADVEX = importlib.util.find_spec("advex_uar")
PACKAGE = "advex_uar"


def reference(name: str) -> types.ModuleType:
    """advex_uar.attacks.NAME as it would run on a GPU, on the CPU: the source with
    `.cuda()` dropped and device "cuda" read as "cpu" (nothing else changed). Its package
    is a stand-in, so that the real one's __init__ (every attack, unmapped) never runs;
    the modules an attack imports are loaded first."""
    full = f"{PACKAGE}.attacks.{name}"
    if full not in sys.modules:
        path = Path(ADVEX.origin).parent / "attacks" / f"{name}.py"
        source = path.read_text().replace(".cuda()", "")
        source = re.sub(r"""device\s*=\s*['"]cuda['"]""", 'device="cpu"', source)
        module = types.ModuleType(full)
        module.__file__ = str(path)
        sys.modules[full] = module
        exec(compile(source, str(path), "exec"), module.__dict__)
    return sys.modules[full]


@pytest.fixture(scope="module")
def advex():
    if ADVEX is None:
        pytest.fail("advex-uar is not installed: pip install -r requirements-lock.txt")
    saved = {k: v for k, v in sys.modules.items() if k.startswith(PACKAGE)}
    for package in (PACKAGE, f"{PACKAGE}.attacks"):
        sys.modules[package] = types.ModuleType(package)
        sys.modules[package].__path__ = []
    try:
        for name in ("attacks", "snow", "gabor", "jpeg"):
            reference(name)
        yield types.SimpleNamespace(**{n: reference(f"{n}_attack") for n in ("snow", "gabor", "jpeg")})
    finally:
        for k in [k for k in sys.modules if k.startswith(PACKAGE)]:
            del sys.modules[k]
        sys.modules.update(saved)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


def images(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 32, 32), generator=g), torch.randint(0, 10, (n,), generator=g)


def run_reference(attack, model, x, y, seed: int) -> torch.Tensor:
    """The reference's own forward pass on pixels in [0, 255], seeded as core seeds its
    attack (numpy's legacy generator and torch's CPU generator, both from `seed`)."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    out = attack._forward(lambda p: model(p / 255.0), x * 255.0, y, avoid_target=True,
                          scale_eps=False)
    return out.detach() / 255.0


@pytest.mark.parametrize("seed", [0, 3])
def test_snow_matches_the_reference(advex, seed):
    model, (x, y) = small_model(), images()
    ours = Snow(seed=seed)(model, x, y)
    ref = run_reference(advex.snow.SnowAttack(10, 2.0, 0.1, 32, budget=0.15), model, x, y, seed)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - x).abs().max() > 0.1  # it snowed


@pytest.mark.parametrize("seed", [0, 3])
def test_gabor_matches_the_reference(advex, seed):
    model, (x, y) = small_model(), images()
    ours = Gabor(seed=seed)(model, x, y)
    ref = run_reference(advex.gabor.GaborAttack(10, 75, 0.05, 32), model, x, y, seed)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - x).abs().max() > 0.1


@pytest.mark.parametrize("seed", [0, 3])
def test_jpeg_matches_the_reference(advex, seed):
    model, (x, y) = small_model(), images()
    ours = JPEG(seed=seed)(model, x, y)
    ref = run_reference(advex.jpeg.JPEGAttack(10, 25.0, 1.0, 32, opt="l2"), model, x, y, seed)
    assert (ours - ref).abs().max() < 1e-3
    assert (ours - x).abs().max() > 0.02


def test_the_pieces_match_the_reference(advex):
    """The random parts drawn alike: the snow's streaks, a Gabor kernel, the JPEG round
    trip with no move (chroma at half resolution is all it changes)."""
    snow_ref = reference("snow")
    np.random.seed(5)
    ours = unforeseen.snow_kernels(np.random.RandomState(5))
    ref = torch.cat(snow_ref.make_kernels(), 1)
    assert torch.allclose(ours, ref, atol=1e-6)
    gabor_ref = reference("gabor")
    k = unforeseen.gabor_kernel(4, 0.2, 4.0, 0.7)
    assert torch.allclose(k, gabor_ref.get_gabor_with_sides(23, torch.tensor([0.2]), torch.tensor([4.0]),
                                                             torch.tensor([0.7]), 4), atol=1e-5)
    jpeg_ref = reference("jpeg")
    x, _ = images(2)
    count = unforeseen.jpeg_variable_count(32)
    shift = torch.randn(2, count) * 0.1
    ours = unforeseen.jpeg_decode(x, shift, 25.0)
    jpeg = jpeg_ref.JPEG()
    luma, chroma = 16 * 64, 4 * 64
    ref = jpeg(x * 255, [shift[:, :luma].view(2, 16, 8, 8),
                         shift[:, luma:luma + chroma].view(2, 4, 8, 8),
                         shift[:, luma + chroma:].view(2, 4, 8, 8)], torch.full((2,), 25.0)) / 255
    assert (ours - ref).abs().max() < 1e-4
    still = unforeseen.jpeg_decode(x, torch.zeros(2, count), 25.0)
    smooth = torch.rand(2, 1, 32, 32).repeat_interleave(3, 1)  # grey: no chroma to lose
    assert (unforeseen.jpeg_decode(smooth, torch.zeros(2, count), 25.0) - smooth).abs().max() < 2e-3
    assert (still - x).abs().mean() > 0.01


@pytest.mark.parametrize("attack", [Snow(steps=2), Gabor(steps=2), JPEG(steps=2)])
def test_attacks_raise_the_loss_and_stay_images(attack):
    model, (x, y) = small_model(), images(8)
    adv = attack(model, x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(adv), y) > loss(model(x), y)
    assert torch.equal(adv, attack(model, x, y))  # seeded: the same examples again
    assert attacks.from_dict(attack.to_dict()) == attack


def test_bad_images_get_a_sentence():
    model = small_model()
    with pytest.raises(ValueError, match="multiple of 32"):
        Snow()(model, torch.rand(2, 3, 28, 28), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="RGB"):
        JPEG()(model, torch.rand(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="non-negative"):
        Gabor(eps=-1.0)
    with pytest.raises(ValueError, match="unknown attack kind"):
        attacks.from_dict({"kind": "fog"})


def test_cka_inputs_offer_them():
    for choice in ("snow", "gabor", "jpeg"):
        attack = cka.input_attack(choice)
        assert attack == unforeseen.UNFORESEEN[choice]()
        assert cka.INPUT_LABELS[choice].startswith(attack.label)
