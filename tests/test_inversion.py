"""Inversion, feature visualisation / addition, interpolation, top activations,
misclassification insight and the quality measures, on tiny random-init models
(fast), plus one slow check of the paper's claim on the shipped zoo."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import shipped, tiny_probe
from core import data, inversion, zoo
from core.errors import UnknownLayerError

GEN = torch.Generator().manual_seed(0)
IMAGES = torch.stack([s.tensor() for s in data.cifar_samples()[:4]])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy CPU two threads
    were 100x slower than one (OpenMP spinning); the loop itself uses one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def distance(probe, x, target, layer=None):
    """The normalised representation distance, computed without core.inversion."""
    layer = layer or probe.representation_layer
    with torch.no_grad():
        f = probe.features(torch.cat([x, target]), [layer])[layer].flatten(1)
    a, b = f[:len(x)], f[len(x):]
    return (a - b).norm(dim=1) / b.norm(dim=1)


def component(probe, x, index):
    with torch.no_grad():
        return probe.representation(x)[:, index]


# ------------------------------------------------------------------ inversion

@pytest.mark.parametrize("method", ["adam", "normgrad"])
def test_inversion_lowers_the_loss_and_stays_in_range(probe, method):
    r = inversion.invert(probe, IMAGES[:2], steps=25, method=method)
    assert r.images.shape == (2, 3, 32, 32) and r.loss_curve.shape == (26, 2)
    assert (r.loss_curve[-1] < 0.5 * r.loss_curve[0]).all(), r.loss_curve[[0, -1]]
    assert r.images.min() >= 0 and r.images.max() <= 1
    assert all(f.min() >= 0 and f.max() <= 1 for _, f in r.frames)
    # the reported loss is the normalised representation distance of the images returned
    assert torch.allclose(r.loss, distance(probe, r.images, IMAGES[:2]), atol=1e-5)


def test_adam_beats_normgrad_at_equal_steps(probe):
    fast = inversion.invert(probe, IMAGES[:2], steps=25, method="adam")
    paper = inversion.invert(probe, IMAGES[:2], steps=25, method="normgrad")
    assert fast.loss.mean() < paper.loss.mean()


def test_inversion_is_deterministic_given_the_seed(probe):
    one = inversion.invert(probe, IMAGES[:1], steps=8, generator_seed=3)
    two = inversion.invert(probe, IMAGES[:1], steps=8, generator_seed=3)
    other = inversion.invert(probe, IMAGES[:1], steps=8, generator_seed=4)
    assert torch.equal(one.images, two.images) and torch.equal(one.loss_curve, two.loss_curve)
    assert not torch.equal(one.frames[0][1], other.frames[0][1])
    assert not torch.equal(one.images, other.images)


def test_a_batch_of_targets_is_inverted_image_by_image(probe):
    batch = inversion.invert(probe, IMAGES[:3], steps=10, seed="gray")
    for i in range(3):
        alone = inversion.invert(probe, IMAGES[i:i + 1], steps=10, seed="gray")
        assert torch.allclose(batch.images[i], alone.images[0], atol=1e-3)
        assert abs(float(batch.loss[i] - alone.loss[0])) < 1e-3


@pytest.mark.parametrize("layer", ["relu", "layer1.0", "layer2.1.conv1", "layer3.0.bn2", "linear"])
def test_any_layer_can_be_inverted(probe, layer):
    r = inversion.invert(probe, IMAGES[:1], layer=layer, steps=15)
    assert r.settings["layer"] == layer
    assert r.loss[0] < 0.7 * r.loss_curve[0, 0]
    assert torch.allclose(r.loss, distance(probe, r.images, IMAGES[:1], layer), atol=1e-5)
    # the model is left as it was: no hooks, no fake ReLU
    assert not any(m._forward_hooks for m in probe.modules())
    assert not any(getattr(m, "fake", False) for m in probe.modules())


def test_unknown_layers_are_refused(probe):
    with pytest.raises(UnknownLayerError, match="layer9"):
        inversion.invert(probe, IMAGES[:1], layer="layer9", steps=1)
    with pytest.raises(UnknownLayerError):
        inversion.visualize_feature(probe, 0, layer="nope", steps=1)
    with pytest.raises(UnknownLayerError):
        inversion.add_feature(probe, IMAGES[:1], 0, layer="nope", steps=1)
    with pytest.raises(UnknownLayerError):
        inversion.representations(probe, IMAGES, layer="nope")


def test_seeds_progress_and_frames(probe):
    events = []
    r = inversion.invert(probe, IMAGES[:2], seed="gray", steps=9, frame_every=4,
                         progress=events.append)
    assert [e.done for e in events] == list(range(10)) and all(e.total == 9 for e in events)
    # the first frame is the seed, shown at step 0, before any step is taken
    assert events[0].preview is not None
    assert torch.equal(events[0].preview, torch.full((2, 3, 32, 32), 0.5))
    assert [s for s, _ in r.frames] == [0, 4, 8, 9]
    assert [e.done for e in events if e.preview is not None] == [0, 4, 8, 9]
    assert torch.equal(r.frames[-1][1], r.images)
    assert math.isclose(events[-1].loss, float(r.loss.mean()), rel_tol=1e-6)
    assert events[-1].text.startswith("step 9/9, loss")
    seeded = inversion.invert(probe, IMAGES[:2], seed=IMAGES[3], steps=0)
    assert torch.equal(seeded.images, IMAGES[3].expand(2, -1, -1, -1))
    with pytest.raises(ValueError):
        inversion.invert(probe, IMAGES[:1], seed="sparkles", steps=1)
    with pytest.raises(ValueError):
        inversion.invert(probe, IMAGES[:1], method="sgd", steps=1)


def test_a_progress_callback_can_cancel_and_leaves_the_model_as_it_was(probe):
    class Cancel(Exception):
        pass

    def progress(event):
        if event.done == 3:
            raise Cancel
    with pytest.raises(Cancel):
        inversion.invert(probe, IMAGES[:1], layer="layer2.0.bn1", steps=10, progress=progress)
    assert not any(m._forward_hooks for m in probe.modules())
    assert not any(getattr(m, "fake", False) for m in probe.modules())
    assert torch.get_num_threads() == 1   # what the fixture set


def test_the_l2_ball_holds_and_threads_are_restored(probe):
    torch.set_num_threads(2)
    r = inversion.invert(probe, IMAGES[:2], seed=IMAGES[2:4], steps=10, eps=0.5)
    assert ((r.images - IMAGES[2:4]).flatten(1).norm(dim=1) <= 0.5 + 1e-4).all()
    assert torch.get_num_threads() == 2


def test_result_survives_the_results_store(probe):
    from core.results import decode, encode
    r = inversion.invert(probe, IMAGES[:1], steps=3)
    back = inversion.InversionResult.from_dict(decode(*encode(r.to_dict())))
    assert torch.equal(back.images, r.images) and back.settings == r.settings
    assert [s for s, _ in back.frames] == [s for s, _ in r.frames]


# -------------------------------------------------- visualisation and addition

def test_feature_visualisation_raises_each_component(probe):
    r = inversion.visualize_feature(probe, [1, 7], steps=15)
    assert r.images.shape == (2, 3, 32, 32) and r.images.min() >= 0 and r.images.max() <= 1
    start = torch.stack([component(probe, r.frames[0][1][i:i + 1], k)[0] for i, k in enumerate([1, 7])])
    end = torch.stack([component(probe, r.images[i:i + 1], k)[0] for i, k in enumerate([1, 7])])
    assert (end > start + 0.05).all(), (start, end)
    assert torch.allclose(-r.loss, end, atol=1e-5)
    with pytest.raises(IndexError):
        inversion.visualize_feature(probe, 64, steps=1)   # width 8: 64 components


def test_feature_addition_raises_the_component_well_above_its_start(probe):
    index = 5
    r = inversion.add_feature(probe, IMAGES, index, steps=20)
    before, after = component(probe, IMAGES, index), component(probe, r.images, index)
    # "well above": against that component's natural range over 20 real images
    natural = component(probe, torch.stack([s.tensor() for s in data.cifar_samples()]), index)
    assert (after > before + 10 * natural.std()).all(), (before, after, natural.std())
    assert (after > 2 * natural.max()).all(), (after, natural.max())
    assert torch.allclose(r.loss_curve[0], -before, atol=1e-5)
    assert r.images.min() >= 0 and r.images.max() <= 1


# -------------------------------------------------------------- interpolation

def test_interpolation_endpoints_reconstruct_the_endpoints():
    probe = tiny_probe(seed=1)
    a, b = IMAGES[0], IMAGES[1]
    r = inversion.interpolate(probe, a, b, frames=5, seed="noise", steps=40)
    assert r.images.shape == (5, 3, 32, 32) and r.settings["t"] == [0, 0.25, 0.5, 0.75, 1]
    to_a = distance(probe, r.images, a[None].expand(5, -1, -1, -1))
    to_b = distance(probe, r.images, b[None].expand(5, -1, -1, -1))
    assert to_a[0] < 0.1 and to_b[-1] < 0.1, (to_a, to_b)
    # reconstructed from noise, each end is nearer its own image's representation
    assert to_a[0] < 0.5 * to_b[0] and to_b[-1] < 0.5 * to_a[-1]
    assert (r.loss < 0.1).all()
    # frames move from a's representation to b's
    assert (to_a.diff() > 0).all() and (to_b.diff() < 0).all()
    mixed = inversion.interpolate(probe, a, b, frames=3, steps=5)
    assert torch.equal(mixed.frames[0][1][0], a) and torch.equal(mixed.frames[0][1][-1], b)


# ------------------------------------------------------------ top activations

def test_top_activating_is_sorted_and_matches_a_direct_computation(probe):
    imgs = torch.rand(40, 3, 32, 32, generator=GEN)
    reps = inversion.representations(probe, imgs, batch_size=16)
    with torch.no_grad():
        direct = probe.representation(imgs)
    assert reps.shape == (40, 64) and torch.allclose(reps, direct, atol=1e-5)
    index = 9
    top = inversion.top_activating(reps, index, k=5)
    assert torch.equal(top.indices, direct[:, index].argsort(descending=True)[:5])
    assert (top.values.diff() <= 0).all() and torch.allclose(top.values, direct[top.indices, index])
    low = inversion.top_activating(reps, index, k=5, bottom=True)
    assert (low.values.diff() >= 0).all() and low.values[0] == direct[:, index].min()
    via_model = inversion.top_activating((probe, imgs), index, k=5)
    assert torch.equal(via_model.indices, top.indices)
    ds = data.ImageTensorDataset((imgs * 255).round().to(torch.uint8), torch.zeros(40))
    assert inversion.representations(probe, ds, batch_size=7).shape == (40, 64)
    with pytest.raises(IndexError):
        inversion.top_activating(reps, 64)


# ------------------------------------------------- misclassification insight

def test_misclassification_insight_picks_the_largest_contribution(probe):
    image, label = IMAGES[0], 3
    out = inversion.explain_misclassification(probe, image, label, steps=10)
    with torch.no_grad():
        rep = probe.representation(image[None])[0]
        predicted = int(probe(image[None]).argmax())
    contributions = probe.model.linear.weight[predicted] * rep
    assert out["predicted"] == predicted and out["misclassified"] == (predicted != label)
    assert torch.allclose(out["contributions"], contributions, atol=1e-6)
    assert out["component"] == int(contributions.argmax())
    assert out["top_components"][0] == out["component"]
    assert out["image"].shape == (3, 32, 32) and 0 <= out["image"].min() <= out["image"].max() <= 1
    after = component(probe, out["image"][None], out["component"])[0]
    assert after > rep[out["component"]]


# ---------------------------------------------------------- quality measures

def test_psnr_known_values():
    a = torch.zeros(2, 3, 32, 32)
    assert torch.isinf(inversion.psnr(a, a)).all()
    assert torch.allclose(inversion.psnr(a, a + 0.1), torch.tensor([20.0, 20.0]), atol=1e-4)
    assert math.isclose(float(inversion.psnr(a[0], a[0] + 0.01)), 40.0, abs_tol=1e-4)
    half = a[0].clone()
    half[:, :16] = 1.0                                   # MSE 0.5 -> 10 log10(2)
    assert math.isclose(float(inversion.psnr(a[0], half)), 10 * math.log10(2), abs_tol=1e-4)


def test_ssim_known_values():
    x = torch.rand(3, 3, 32, 32, generator=GEN)
    assert torch.allclose(inversion.ssim(x, x), torch.ones(3))
    # constant images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    c1 = 0.01 ** 2
    want = (2 * 0.2 * 0.4 + c1) / (0.2 ** 2 + 0.4 ** 2 + c1)
    assert math.isclose(float(inversion.ssim(torch.full((3, 32, 32), 0.2),
                                             torch.full((3, 32, 32), 0.4))), want, rel_tol=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=GEN)).clamp(0, 1)
    s = inversion.ssim(x, noisy)
    assert (s < 0.9).all() and (s > -1).all()
    assert torch.allclose(s, inversion.ssim(noisy, x))


def test_ssim_agrees_with_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x = torch.rand(3, 32, 32, generator=GEN)
    y = (x + 0.3 * torch.randn(x.shape, generator=GEN)).clamp(0, 1)
    theirs = metrics.structural_similarity(x.double().numpy(), y.double().numpy(),
                                           channel_axis=0, data_range=1.0, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False)
    assert math.isclose(float(inversion.ssim(x, y)), theirs, abs_tol=1e-5)


# ------------------------------------------------------------- the paper's claim

@pytest.mark.slow
@shipped("resnet18-l2-1.0", "resnet18-standard-s0")
def test_robust_models_reconstruct_images_better_than_standard_ones():
    """Engstrom et al. (2019): inverting a robust model's representation gives
    back a recognisable image, a standard model's gives noise. All 20 shipped
    CIFAR-10 samples, the paper's noise seed, the fast method's defaults.

    Margins, calibrated on a stand-in (a standard ResNet-18 adversarially
    fine-tuned for 270-500 steps: 50% L2-0.5 robust accuracy, reconstructions
    plainly recognisable by eye) against the standard model, paired per image:
    SSIM +0.032 to +0.042 (standard error 0.012), SSIM at half resolution
    +0.076 to +0.097 (s.e. 0.02), robust better on 14-16 of 20 images. A model
    no more robust than the standard one passes both margins by chance with
    p < 0.01. PSNR is reported, not asserted: it did not separate the two
    (-0.3 to -0.5 dB) - robust reconstructions are right in shape but
    high-contrast, and pixel error punishes that more than grey noise.
    """
    images = torch.stack([s.tensor() for s in data.cifar_samples()])
    half = torch.nn.functional.avg_pool2d
    measures = {}
    for name in ("resnet18-l2-1.0", "resnet18-standard-s0"):
        r = inversion.invert(zoo.load(name, device="cpu"), images, generator_seed=0)
        measures[name] = {"psnr": inversion.psnr(r.images, images),
                          "ssim": inversion.ssim(r.images, images),
                          "ssim_half": inversion.ssim(half(r.images, 2), half(images, 2),
                                                      window=7, sigma=1.0)}
    rob, std = measures["resnet18-l2-1.0"], measures["resnet18-standard-s0"]
    summary = {k: (round(float(rob[k].mean()), 3), round(float(std[k].mean()), 3)) for k in rob}
    assert float((rob["ssim"] - std["ssim"]).mean()) > 0.02, summary
    assert float((rob["ssim_half"] - std["ssim_half"]).mean()) > 0.05, summary
    assert int((rob["ssim"] > std["ssim"]).sum()) >= 13, summary


def test_top_activating_images_of_an_image_folder(tmp_path):
    """An ImageNet-class model (64 px here) ranks the images of a folder read in its
    files' order: the job's indices are top_activating's on the folder's representations,
    its key names the folder by content; without a folder, one sentence."""
    from helpers import image_folder, imagenet_models
    from core import jobs, runner
    from core.errors import IncompatibleModelError
    image_folder(tmp_path / "val", per_class=5)
    models = imagenet_models(0)
    probe, load = models["in0"], models.__getitem__
    folder = str(tmp_path / "val")
    job = jobs.top_images_job(load, "in0", [3, 7], k=4, folder=folder)
    source = data.ImageFolder(folder, 64)
    assert job.inputs["images"] == {"folder": source.identity(), "order": "files"}
    got = runner.compute(job)
    reps = inversion.representations(probe, source)
    want = inversion.top_activating(reps, 7, 4)
    assert got["7"]["top"].tolist() == want.indices.tolist()
    assert jobs.rebuild(json.loads(json.dumps(job.spec)), load).key == job.key
    with pytest.raises(IncompatibleModelError, match="Image folder"):
        jobs.top_images_job(load, "in0", [3])


def test_top_images_list_their_folder_once(tmp_path, monkeypatch):
    """The job and the representations it needs read one listing of the folder, none
    where the page hands over the folder it built to show the images; same keys."""
    from helpers import image_folder, imagenet_models
    from core import jobs
    image_folder(tmp_path / "val", per_class=2)
    load, folder = imagenet_models(0).__getitem__, str(tmp_path / "val")
    listings = []
    real = data.folder_files
    monkeypatch.setattr(data, "folder_files", lambda root: listings.append(root) or real(root))
    job = jobs.top_images_job(load, "in0", [3], folder=folder)
    assert len(listings) == 1
    shown = data.ImageFolder(folder, load("in0").preprocessing)
    again = jobs.top_images_job(load, "in0", [3], folder=folder, where=shown)
    assert len(listings) == 2                          # the page's own, and no other
    assert again.key == job.key and again.needs["outputs"].key == job.needs["outputs"].key


def test_manipulation_at_224_px_with_the_imagenet_settings():
    """Feature addition, interpolation and the misclassification view on a 224 px
    ImageNet model (random weights, a few steps): images at its size from ImageNet's
    samples, the paper's radius 40 for addition and 4.0 scaled by the side (28) for
    interpolation."""
    from helpers import imagenet_models
    from core import jobs, runner
    models = imagenet_models(0, size=224)
    load = models.__getitem__
    first, second = data.samples("imagenet")[:2]
    add = jobs.add_feature_job(load, "in0", first.image, 7, steps=2)
    mix = jobs.interpolation_job(load, "in0", first.image, second.image, frames=3, steps=2)
    why = jobs.explain_job(load, "in0", first.image, first.label, steps=2)
    assert add.inputs["eps"] == 40.0 and mix.inputs["eps"] == pytest.approx(28.0)
    added, mixed, explained = (runner.compute(j) for j in (add, mix, why))
    assert tuple(added["images"].shape) == (1, 3, 224, 224) and 0 <= added["predicted"] < 1000
    assert tuple(mixed["images"].shape) == (3, 3, 224, 224)
    assert tuple(explained["result"]["images"].shape)[-2:] == (224, 224)
    assert models["in0"].classes[first.label] and len(models["in0"].classes) == 1000
