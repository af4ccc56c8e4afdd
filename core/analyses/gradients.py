"""Input gradients: which pixels move a model's loss. A robust model's loss gradient looks
like the object in the image ("perceptually aligned gradients", Tsipras et al., ICLR 2019;
Engstrom et al., 2019), a standard model's like noise.

The gradient of the cross-entropy with respect to the input pixels (the image's label,
or the model's prediction where it has none), shown as Tsipras et al. show it: each
image's gradient scaled to +-3 standard deviations around mid-grey. A number says what
the eye sees: the share of the gradient's energy at low spatial frequencies (up to a
quarter of the highest one), high for a smooth, object-shaped gradient, low for noise.

An analysis in one module: its computation, its job kind and cost, its command line,
sweep grid and page (pages/gradients.py).
"""
from __future__ import annotations

import argparse
import itertools
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from core import data, jobs
from core.analyses import Analysis, Command, Page, Sweep, register
from core.data import images
from core.errors import RobustLensError
from core.jobs.runner import run_printed
from core.models import zoo
from core.models.probe import Probe, check_input_size
from core.views import image_settings

SPREAD = 3.0          # standard deviations of a gradient shown between black and white


def input_gradient(model: Probe, x: torch.Tensor, labels: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d x, predictions) for images x (N, 3, H, W) in [0, 1]: the summed
    cross-entropy against `labels`, or against the model's own predictions."""
    check_input_size(x, model)
    pixels = x.to(model.device).clone().requires_grad_()
    logits = model(pixels)
    predicted = logits.argmax(1)
    target = predicted if labels is None else labels.to(model.device)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), pixels)
    return grad.detach().cpu(), predicted.detach().cpu()


def gradient_image(grad: torch.Tensor, spread: float = SPREAD) -> torch.Tensor:
    """Gradients (N, 3, H, W) as images in [0, 1]: each scaled to +-spread standard
    deviations around mid-grey (zero)."""
    scale = grad.flatten(1).std(1).clamp_min(1e-12).view(-1, 1, 1, 1) * spread
    return (0.5 + 0.5 * (grad / scale)).clamp(0, 1)


def low_frequency_share(grad: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Per image, the share of a gradient's energy (its 2-D spectrum, all channels) at
    spatial frequencies up to `cutoff` of the highest one (Nyquist) along both axes."""
    energy = torch.fft.fft2(grad.float()).abs().square()
    fy = torch.fft.fftfreq(grad.shape[-2]).abs().view(-1, 1)
    fx = torch.fft.fftfreq(grad.shape[-1]).abs().view(1, -1)
    low = torch.maximum(fy, fx) <= cutoff / 2          # fftfreq's highest is 0.5
    return (energy * low).sum((1, 2, 3)) / energy.sum((1, 2, 3)).clamp_min(1e-30)


# ======================================================================= jobs

def gradient_job(load: jobs.Loader, spec: str, image: Any, label: int | None = None
                 ) -> jobs.Job:
    """The input gradient of model `spec` for `image` (a gallery key or pixels), against
    its label (else the model's prediction)."""
    probe = load(spec)
    image, named = jobs.picture(image, probe.input_size)
    label = None if label is None else int(label)
    inputs = {"model": probe.identity(), "image": images.image_id(image), "label": label}

    def run(progress) -> dict:
        x = images.to_tensor(image)[None]
        grad, predicted = input_gradient(probe, x, None if label is None
                                         else torch.tensor([label]))
        return {"gradient": grad[0].half(), "predicted": int(predicted[0]),
                "low_frequency": float(low_frequency_share(grad)[0]),
                "norm": float(grad[0].flatten().norm())}
    return jobs.make("input_gradient", inputs, run, f"input gradient of {probe.name}",
                     {"spec": spec, "image": named, "label": label})


def gradient_cost(job: jobs.Job) -> jobs.Cost:
    return jobs.Cost({job.models[0]: (0, 1)})


def view_jobs(load: jobs.Loader, s: Mapping[str, Any],
              uploads: Mapping[str, Any] | None = None) -> list[jobs.Job]:
    """The chosen image's gradient in models A and B, against its label where it has one
    (none if there is no such image)."""
    out = []
    for m in (s["a"], s["b"]):
        size = load(m).input_size
        image, found = jobs.view_image(s["gr_img"], uploads, size), \
            data.image_for(s["gr_img"], uploads, size)
        if image is None:
            return []
        out.append(gradient_job(load, m, image, found[2]))
    return out


# -------------------------------------------------------------- command line

def _cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, help="model(s); repeat")
    p.add_argument("--image", action="append", required=True,
                   help="a gallery key: foolbox-03, photo-astronaut, test-17")
    p.add_argument("--device")
    p.add_argument("--out", help="folder for PNG strips (the image, then each gradient)")


def _cli(args: argparse.Namespace) -> dict:
    """Input gradients of images in models (stored; PNG strips with --out)."""
    from core.figures import exports
    load = zoo.loader(args.device)
    out: dict = {}
    for key in args.image:
        found = data.image_for(key)
        if found is None:
            raise RobustLensError(f"{key!r} is not a gallery key (foolbox-03, photo-astronaut, "
                                  "test-17)")
        results = [run_printed(gradient_job(load, m, key, found[2])) for m in args.model]
        out[key] = {m: {"low_frequency": round(r["low_frequency"], 3),
                        "predicted": r["predicted"]} for m, r in zip(args.model, results)}
        if args.out:
            shown = [gradient_image(r["gradient"].float()[None])[0] for r in results]
            out[key]["png"] = exports.strip_file(args.out, f"gradients-{key}", [found[0]] + shown,
                                                 {"models": args.model, "image": key})
    return out


# ---------------------------------------------------------------------- sweeps

def _grid(options: Mapping[str, Any], models: list[str], load: jobs.Loader) -> list[jobs.Job]:
    """gradients: {images: [foolbox-00, ...]}: each image's gradient in each model."""
    from core.jobs import sweep
    keys = sweep.listed(options.get("images", "foolbox-00"), "gradients.images")
    labels = {key: (data.image_for(key) or (None, None, None))[2] for key in keys}
    return [gradient_job(load, m, key, labels[key]) for m, key in itertools.product(models, keys)]


SETTINGS = image_settings("gr")

register(Analysis(
    "gradients",
    kinds={"input_gradient": jobs.Kind(gradient_job, cost=gradient_cost)},
    commands=(Command("gradients", _cli_arguments, _cli),),
    sweeps=(Sweep("gradients", _grid),),
    pages=(Page("gradients", "pages/gradients.py", "Input gradients", ":material/gradient:", 5,
                SETTINGS, view_jobs,
                summary="Which pixels move each model's loss? A robust model's gradient looks "
                        "like the object, a standard model's like noise",
                about="The gradient of each model's cross-entropy loss with respect to the "
                      "image's pixels (against the image's label, or the model's own "
                      "prediction for an image without one), each scaled to ±3 standard "
                      "deviations around grey. Under it, the share of the gradient's energy at "
                      "low spatial frequencies (up to a quarter of the highest): smooth, "
                      "object-shaped gradients score high, noise low.",
                paper="Tsipras et al., Robustness May Be at Odds with Accuracy, ICLR 2019",
                cite="Tsipras et al., ICLR 2019"),),
))
