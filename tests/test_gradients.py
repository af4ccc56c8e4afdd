"""Input gradients (core.analyses.gradients, pages/gradients.py): an analysis added in three
files. The gradient is the loss's, the picture is Tsipras et al.'s, the shipped robust
models' gradients follow the images' edges where the standard ones' do not, and the page,
the command line, a sweep and the registry all reach it."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import shipped, tiny_probe
from core import analyses, data, jobs, views, zoo
from core.analyses import gradients
from core.__main__ import main
from core.results import default_store
from helpers import run_app


def test_the_gradient_is_the_cross_entropys_against_the_label_or_the_prediction():
    model = tiny_probe(width=4)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 3])
    grad, predicted = gradients.input_gradient(model, x, labels)
    pixels = x.clone().requires_grad_()
    F.cross_entropy(model(pixels), labels, reduction="sum").backward()
    assert torch.allclose(grad, pixels.grad, atol=1e-6)
    own, _ = gradients.input_gradient(model, x)
    pixels.grad = None
    F.cross_entropy(model(pixels), predicted, reduction="sum").backward()
    assert torch.allclose(own, pixels.grad, atol=1e-6)


def test_the_picture_is_mid_grey_at_zero_and_saturates_at_three_deviations():
    grad = torch.zeros(1, 3, 8, 8)
    grad[0, 0, 0, 0], grad[0, 0, 0, 1] = 1.0, -1.0
    shown = gradients.gradient_image(grad)
    assert shown[0, 1, 4, 4] == 0.5 and shown.min() >= 0 and shown.max() <= 1
    big = grad * 0
    big[0, :, :4] = 1.0
    big[0, :, 4:] = -1.0
    assert gradients.gradient_image(big).unique().tolist() == pytest.approx(
        [0.5 - 0.5 / 3, 0.5 + 0.5 / 3], abs=1e-3)      # a sample standard deviation


def test_a_smooth_gradient_has_its_energy_at_low_frequencies_and_noise_does_not():
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = torch.exp(-((ys - 16) ** 2 + (xs - 16) ** 2) / 60).expand(1, 3, 32, 32)
    assert gradients.low_frequency_share(smooth)[0] > 0.95
    noise = torch.randn(50, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    share = gradients.low_frequency_share(noise)      # white noise: the low band's area
    assert share.mean() == pytest.approx((9 / 32) ** 2, abs=0.02)


@pytest.mark.slow
@shipped("resnet18-l2-1.0", "resnet18-linf-8", "resnet18-standard-s0")
def test_robust_gradients_are_smooth_where_standard_ones_are_noise():
    """Perceptually aligned gradients (Tsipras et al. 2019) on the shipped zoo and the 20
    shipped CIFAR-10 samples: both robust models' gradients hold far more of their energy
    at low frequencies than the standard model's, on average and image by image."""
    samples = data.cifar_samples()
    x = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in samples])
    y = torch.tensor([s.label for s in samples])
    share = {}
    for name in ("resnet18-l2-1.0", "resnet18-linf-8", "resnet18-standard-s0"):
        grad, _ = gradients.input_gradient(zoo.load(name, device="cpu", check=False), x, y)
        share[name] = gradients.low_frequency_share(grad)
    standard = share["resnet18-standard-s0"]
    for robust in ("resnet18-l2-1.0", "resnet18-linf-8"):
        assert share[robust].mean() > 2 * standard.mean(), (share[robust].mean(), standard.mean())
        assert (share[robust] > standard).float().mean() >= 0.9


def test_it_is_registered_as_an_analysis_with_a_kind_a_command_a_sweep_and_a_page():
    gradient = analyses.ANALYSES["gradients"]
    assert "input_gradient" in jobs.kinds() and [c.name for c in gradient.commands] == ["gradients"]
    assert [s.name for s in gradient.sweeps] == ["gradients"]
    assert views.pages()["gradients"] == "pages/gradients.py"
    assert views.page_settings("gradients")["gr_img"].default == "foolbox-00"


def test_the_job_names_a_gallery_image_by_key_and_an_upload_by_its_pixels(world):
    load = zoo.loader("cpu")
    by_key = gradients.gradient_job(load, "resnet18-linf-8", "foolbox-03", 4)
    assert by_key.spec["args"]["image"] == "foolbox-03"
    upload = data.image_for("foolbox-03")[0]
    by_pixels = gradients.gradient_job(load, "resnet18-linf-8", upload, 4)
    assert by_pixels.key == by_key.key and isinstance(by_pixels.spec["args"]["image"], list)
    again = jobs.rebuild(json.loads(json.dumps(by_key.spec)), load)
    assert again.key == by_key.key
    cost = jobs.kinds()["input_gradient"].cost(by_key)
    assert cost.passes == {"resnet18-linf-8": (0, 1)}


def test_the_command_line_and_a_sweep_store_what_the_page_shows(world, tmp_path, capsys):
    assert main(["gradients", "--model", "resnet18-linf-8", "--model", "resnet18-standard-s0",
                 "--image", "foolbox-00", "--out", str(tmp_path), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["foolbox-00"]) >= {"resnet18-linf-8", "resnet18-standard-s0", "png"}
    stored = {e["key"] for e in default_store().entries("input_gradient")}
    shown = {j.key for j in views.view_jobs(zoo.loader("cpu"), "gradients",
                                            {"a": "resnet18-linf-8", "b": "resnet18-standard-s0"})}
    assert shown == stored
    spec = tmp_path / "sweep.yaml"
    spec.write_text("models: [resnet18-l2-1.0]\ngradients: {images: [foolbox-01, photo-astronaut]}\n")
    assert main(["sweep", str(spec)]) == 0
    assert len(default_store().entries("input_gradient")) == 4


def test_the_page_shows_both_models_gradients_at_once_and_then_from_the_store(world):
    at = run_app("pages/gradients.py", {"gr_img": "foolbox-02"})   # a moment: no button
    assert not at.exception, [e.value for e in at.exception]
    assert not [b for b in at.button if b.label.startswith("Compute")]
    assert sum("low-frequency share" in c.value for c in at.caption) == 2
    assert len(default_store().entries("input_gradient")) == 2
    again = run_app("pages/gradients.py", {"gr_img": "foolbox-02"})
    assert sum("low-frequency share" in c.value for c in again.caption) == 2
    assert len(default_store().entries("input_gradient")) == 2
