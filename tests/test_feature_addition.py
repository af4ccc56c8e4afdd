"""Feature addition and interpolation with the app's defaults show the paper's effect on
the shipped robust model and on the GPU-trained reference checkpoint of ../shared/models
(where it is beside the clone): the feature is added *to* the image, which keeps its class."""
from __future__ import annotations

import pytest
import torch

from helpers import ROOT, shipped
from core import data, inversion, jobs, runner, zoo

ROBUST, STANDARD = "resnet18-l2-1.0", "resnet18-standard-s0"
REFERENCE = ROOT.parent / "shared" / "models" / f"{ROBUST}.safetensors"


@pytest.mark.parametrize("source", [
    pytest.param(ROBUST, marks=shipped(ROBUST), id="shipped"),
    pytest.param(str(REFERENCE), id="reference", marks=pytest.mark.skipif(
        not REFERENCE.is_file(), reason="../shared/models not beside the clone")),
])
def test_robust_addition_raises_the_feature_and_keeps_the_class(source):
    model = zoo.load(source, device="cpu")
    x = torch.stack([s.tensor() for s in data.cifar_samples()])
    feature = jobs.browser_features(model)[0]            # the browser's first feature
    settings = inversion.Settings.for_task("add")
    res = inversion.add_feature(model, x, feature, settings=settings)
    before, after = -res.loss_curve[0], -res.loss
    with torch.no_grad():
        spread = model.representation(x)[:, feature].std()   # the feature's range over images
    # the models' feature scales differ: the rise is measured in the feature's own spread
    assert (after > before).all() and (after - before).mean() > 0.5 * spread, (before, after)
    with torch.no_grad():
        kept = (model(res.images).argmax(1) == model(x).argmax(1)).float().mean()
    assert kept >= 0.6, f"only {kept:.0%} of the samples kept their class"
    moved = (res.images - x).flatten(1).norm(dim=1)
    assert (moved <= inversion.RADII["add"] + 1e-4).all()           # near the source image


@shipped(ROBUST)
def test_the_addition_job_reports_the_class_before_and_after():
    sample = data.cifar_samples()[0]
    job = jobs.add_feature_job(lambda s: zoo.load(s, device="cpu"), ROBUST, sample.image, 3)
    out = runner.compute(job)
    assert {"predicted_before", "predicted", "before", "after"} <= set(out)
    assert out["after"] > out["before"] and job.inputs["eps"] == inversion.RADII["add"]
