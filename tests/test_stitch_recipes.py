"""Stitcher recipes: the paper's starts, low-rank and adversarially trained stitching
layers, named recipes in result keys, similarity beside accuracy, and the command line."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import colour_task, tiny_probe
from core import attacks, stitching
from core.__main__ import main
from core.probe import Probe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def a() -> Probe:
    return tiny_probe(width=8, seed=0, name="a", input_size=16)


@pytest.fixture(scope="module")
def b() -> Probe:
    return tiny_probe(width=8, seed=3, name="b", input_size=16)


def test_permutation_start_permutes_the_channels_reproducibly(a, b):
    s1, _ = stitching.fit(a, b, "layer2.0", colour_task(16, 0), epochs=1, init="permutation",
                          batch_size=16, lr=0.0)
    weight, bias = s1.linear()
    assert torch.equal(weight.sum(0), torch.ones(16)) and torch.equal(weight.sum(1), torch.ones(16))
    assert set(weight.unique().tolist()) == {0.0, 1.0} and not torch.equal(weight, torch.eye(16))
    assert torch.equal(bias, torch.zeros(16))
    s2, _ = stitching.fit(a, b, "layer2.0", colour_task(16, 0), epochs=1, init="permutation",
                          batch_size=16, lr=0.0)
    s3, _ = stitching.fit(a, b, "layer2.0", colour_task(16, 0), epochs=1, init="permutation",
                          batch_size=16, lr=0.0, seed=1)
    assert torch.equal(s2.linear()[0], weight) and not torch.equal(s3.linear()[0], weight)
    wide = tiny_probe(width=16, seed=1, input_size=16)
    with pytest.raises(stitching.StitchingError, match="equal widths"):
        stitching.StitchedModel(a, wide, "layer2.0").permutation_init()
    with pytest.raises(stitching.StitchingError, match="full rank"):
        stitching.StitchedModel(a, b, "layer2.0", rank=4).permutation_init()


def test_reduced_rank_least_squares_is_the_best_map_of_that_rank():
    """Rank-r least squares with a free bias: the fitted values are the OLS fitted values'
    best rank-r approximation (Eckart-Young), worked out here from the data directly."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 2, 1, 1, 0.5, 0.2], dtype=torch.float64) + 1.5
    b = a @ torch.randn(6, 5, generator=g, dtype=torch.float64) \
        + 0.3 * torch.randn(400, 5, generator=g, dtype=torch.float64) - 2
    neq = stitching.NormalEquations(6, 5)
    neq.add(a[:150], b[:150])
    neq.add(a[150:], b[150:])
    w, bias = neq.solve(ridge=0.0)
    ac, bc = a - a.mean(0), b - b.mean(0)
    fitted = ac @ torch.linalg.lstsq(ac, bc).solution
    u, sv, vh = torch.linalg.svd(fitted, full_matrices=False)
    for rank in (1, 2, 4):
        w_r, b_r = neq.reduced_rank(w, rank)
        assert torch.linalg.matrix_rank(w_r) == rank
        best = (u[:, :rank] * sv[:rank]) @ vh[:rank] + b.mean(0)
        assert torch.allclose(a @ w_r + b_r, best, atol=1e-8)
        assert neq.relative_error(w_r, b_r) >= neq.relative_error(w, bias) - 1e-12
    w_full, b_full = neq.reduced_rank(w, 5)
    assert torch.allclose(w_full, w, atol=1e-9) and torch.allclose(b_full, bias, atol=1e-9)


def test_a_low_rank_stitch_has_that_rank_and_says_so(a, b):
    task = colour_task(32, 0)
    full, h_full = stitching.fit(a, b, "layer2.0", task, "direct", batch_size=16)
    low, h_low = stitching.fit(a, b, "layer2.0", task, "direct", batch_size=16, rank=2)
    assert isinstance(low.stitch, stitching.LowRankStitch)
    assert low.stitch.down.weight.shape == (2, 16, 1, 1) and low.stitch.up.weight.shape == (16, 2, 1, 1)
    spectrum = stitching.spectrum(low)
    assert len(spectrum["singular_values"]) == 16 and max(spectrum["singular_values"][2:]) < 1e-5
    assert 1 <= spectrum["effective_rank"] <= 2 + 1e-6
    assert stitching.spectrum(full)["effective_rank"] > 2
    assert h_full["dm_error"] <= h_low["dm_error"] and low.identity()["rank"] == 2
    assert h_low["rank"] == 2 and "rank" not in h_full
    x = torch.rand(4, 3, 16, 16)
    weight, bias = low.linear()
    with a.tap("layer2.0") as front:
        h = front(x)
    manual = torch.einsum("oi,nihw->nohw", weight, h) + bias[:, None, None]
    assert torch.allclose(low.transfer(h), manual, atol=1e-5)
    # trained from the paper's orthogonal start, bias zero
    trained, hist = stitching.fit(a, b, "layer2.0", task, epochs=1, batch_size=16, rank=3)
    assert hist["rank"] == 3 and stitching.spectrum(trained)["effective_rank"] <= 3 + 1e-6
    with pytest.raises(stitching.StitchingError, match="rank from 1 to 16"):
        stitching.StitchedModel(a, b, "layer2.0", rank=17)


@pytest.mark.parametrize("kind", ["madry", "trades"])
def test_an_adversarially_trained_stitcher_trains_on_attacked_images(a, b, kind):
    """A few dozen images, one step, one epoch: the attack's images change the update, the
    donors stay as they were, and the history names the adversary."""
    task = colour_task(24, 0)
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    attack = attacks.PGD("linf", 8 / 255, 2 / 255, 1, random_start=False)
    clean, h_clean = stitching.fit(a, b, "layer2.0", task, epochs=1, batch_size=8,
                                   init="random")
    robust, hist = stitching.fit(a, b, "layer2.0", task, epochs=1, batch_size=8, init="random",
                                 adversarial=kind, alpha=0.5, beta=2.0, train_attack=attack)
    # the attacked images (madry) or the divergence term (trades) raise the loss
    assert hist["epoch_loss"][0] > h_clean["epoch_loss"][0]
    assert not torch.allclose(clean.linear()[0], robust.linear()[0])
    assert all(torch.equal(before[k], v) for k, v in b.model.state_dict().items())
    assert hist["adversarial"].startswith("Madry: PGD-1" if kind == "madry" else "TRADES beta 2")
    with pytest.raises(stitching.StitchingError, match="closed-form"):
        stitching.fit(a, b, "layer2.0", task, "direct", adversarial=kind)


def test_trades_examples_stay_in_the_ball_and_raise_the_divergence(a):
    x = colour_task(8, 1).images.float() / 255
    x_adv = attacks.trades_examples(a, x, 8 / 255, 2 / 255, 3, torch.Generator().manual_seed(0))
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and 0 <= float(x_adv.min())
    with torch.no_grad():
        p = torch.softmax(a(x), 1)
        kl = lambda z: float(torch.nn.functional.kl_div(  # noqa: E731
            torch.log_softmax(a(z), 1), p, reduction="sum"))
        noisy = kl((x + 0.001 * torch.randn_like(x)).clamp(0, 1))
        attacked = kl(x_adv)
    assert attacked > noisy


def test_recipes_by_name_and_their_checks():
    paper = stitching.stitch_recipe("paper")
    assert (paper["epochs"], paper["init"], paper["train_images"]) == (30, "random", 50_000)
    assert stitching.stitch_recipe({"recipe": "paper", "rank": 4})["rank"] == 4
    assert stitching.stitch_recipe(None) == stitching.stitch_recipe("short")
    with pytest.raises(stitching.StitchingError, match="no stitching recipe is called 'long'"):
        stitching.stitch_recipe("long")
    with pytest.raises(stitching.StitchingError, match="no setting ranks"):
        stitching.stitch_recipe({"ranks": 3})
    with pytest.raises(stitching.StitchingError, match="above 0 and at most 1"):
        stitching.stitch_recipe({"adversarial": "madry", "alpha": 0})
    with pytest.raises(stitching.StitchingError, match="epochs must be a whole number"):
        stitching.stitch_recipe({"epochs": 0})
    weak = attacks.PGD("linf", 8 / 255, 2 / 255, 10).for_accuracy()
    with pytest.raises(stitching.StitchingError, match="stronger attack"):
        stitching.stitch_recipe({"adversarial": "trades", "attack": weak})
    assert "adversarially: Madry: PGD-10" in stitching.describe_recipe(
        stitching.stitch_recipe({"adversarial": "madry"}), "task")


def test_only_settings_away_from_the_shipped_recipe_enter_the_key():
    """Cells stored before ranks and adversaries existed keep their keys."""
    short = stitching._recipe_inputs(stitching.stitch_recipe(None), "task")
    assert set(short) == set(stitching.STITCH_RECIPE)
    madry = stitching._recipe_inputs(stitching.stitch_recipe(
        {"adversarial": "madry", "alpha": 0.5, "beta": 3.0}), "task")
    assert madry["alpha"] == 0.5 and "beta" not in madry and "train_attack" not in madry
    pgd5 = attacks.PGD("linf", 8 / 255, 2 / 255, 5)
    custom = stitching._recipe_inputs(stitching.stitch_recipe(
        {"adversarial": "madry", "train_attack": pgd5}), "task")
    assert custom["train_attack"] == pgd5.to_dict() and "alpha" not in custom
    trades = stitching._recipe_inputs(stitching.stitch_recipe({"adversarial": "trades"}), "task")
    assert "alpha" not in trades and "beta" not in trades and trades["adversarial"] == "trades"
    direct = stitching._recipe_inputs(stitching.stitch_recipe(
        {"adversarial": "madry", "rank": 8, "epochs": 5}), "direct")
    assert set(direct) == {"train_images", "rank", "attack"}


def test_similarity_of_the_stitched_and_the_end_representation(a, b):
    same = stitching.StitchedModel(a, a, "layer2.0").identity_init()
    ident = stitching.compare_representations(same, colour_task(20, 2), cka_images=12)
    assert ident["relative_l2"] == 0 and ident["cka"] == pytest.approx(1.0)
    assert ident["cka_images"] == 12
    assert stitching.spectrum(same)["effective_rank"] == pytest.approx(16)
    cell = stitching.stitch_cell(a, b, "layer2.0", "direct", colour_task(32, 0),
                                 colour_task(20, 2), batch_size=16)
    assert 0 < cell["test_cka"] < 1 and cell["cka_images"] == 20
    assert 0 < cell["test_representation_error"] and 1 <= cell["effective_rank"] <= 16
    assert stitching.cell_recipe(cell) == {"start": None, "epochs": None, "train_images": 32,
                                           "stitcher_attack": None, "rank": None}


def test_the_command_line_runs_a_low_rank_adversarial_stitcher(world, tmp_path, capsys):
    out = tmp_path / "stitch.json"
    assert main(["stitch", "--front", "resnet18-linf-8", "--end", "resnet18-standard-s0",
                 "--layers", "layer2.0", "--method", "task", "--train-images", "24",
                 "--rank", "4", "--adversarial", "madry", "--alpha", "0.5", "--device", "cpu",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cell = result["pairs"][0]["cells"]["task/layer2.0"]
    assert cell["recipe"] == {"start": "least squares", "epochs": 1, "train_images": 24,
                              "stitcher_attack": "Madry: PGD-10 LINF eps 8/255 step 2/255 on "
                                                 "50% of each batch", "rank": 4}
    assert 0 <= cell["robust_accuracy"] <= 1 and 1 <= cell["effective_rank"] <= 4 + 1e-6
    assert "rank-4 stitch from a least-squares start" in result["recipe"]["task"]
    assert main(["stitch", "--front", "resnet18-linf-8", "--end", "resnet18-standard-s0",
                 "--layers", "layer2.0", "--method", "task", "--recipe", "paper",
                 "--alpha", "2", "--adversarial", "madry"]) == 2
    assert "at most 1" in capsys.readouterr().err
