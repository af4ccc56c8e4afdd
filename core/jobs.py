"""The cached computations, defined once for the app, the CLI and talk decks.

A Job is (kind, inputs, compute): `inputs` name everything the result depends
on (model fingerprints, layers, data, attack, seed, recipe) and nothing it does
not (device, paths), so a key computed on a GPU serves a laptop, and the
precomputed results in assets/ serve every fresh machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import attacks, data
from .probe import Probe

Progress = Callable[..., None]
Loader = Callable[[str], Probe]

# Inputs a side of a comparison can see: benign images, or PGD examples (the
# attacks of Cianfarani et al. 2022).
INPUT_CHOICES: dict[str, attacks.PGD | None] = {
    "benign": None,
    "linf": attacks.PGD.paper("linf"),
    "l2": attacks.PGD.paper("l2"),
}
INPUT_LABELS = {"benign": "benign", "linf": "PGD Linf 8/255", "l2": "PGD L2 1.0"}
LAYER_SETS = ("blocks", "all")


@dataclass
class Job:
    kind: str
    inputs: dict
    compute: Callable[[Progress], Any]
    label: str


def test_images(n: int | None) -> dict:
    """How a job names its images: the first n of the fixed shuffle of the test set."""
    return {"dataset": "cifar10-test", "order": "fixed-shuffle-0", "n": n or 10_000}


def _test_subset(n: int | None) -> data.ImageTensorDataset:
    test = data.cifar10("test")
    return data.fixed_subset(test, n) if n and n < len(test) else test


def layer_list(probe: Probe, layers: str | list[str]) -> list[str]:
    if layers == "blocks":
        return probe.layers
    if layers == "all":
        return probe.all_layers
    return probe.check_layers(list(layers))


def _attack(choice: str) -> attacks.PGD | None:
    if choice not in INPUT_CHOICES:
        raise ValueError(f"inputs must be one of {list(INPUT_CHOICES)}, not {choice!r}")
    return INPUT_CHOICES[choice]


def cka_job(load: Loader, a: str, b: str, layers_a: str | list[str] = "blocks",
            layers_b: str | list[str] = "blocks", inputs_a: str = "benign",
            inputs_b: str = "benign", adv_against: str = "self", kernel: str = "linear",
            n: int = 10_000, batch_size: int | None = None, sigma_frac: float = 0.8) -> Job:
    """Layer x layer CKA of model a against model b (see core.cka.cka_matrix).

    batch_size: the paper's 1024, smaller for small n so that a cell has a spread
    over at least four batches."""
    from . import cka
    batch_size = batch_size or min(1024, max(250, n // 4))
    pa, pb = load(a), load(b)
    la, lb = layer_list(pa, layers_a), layer_list(pb, layers_b)
    atk_a, atk_b = _attack(inputs_a), _attack(inputs_b)
    if atk_a is None and atk_b is None:
        adv_against = "self"  # irrelevant without attacks: one key for all
    inputs = {"a": pa.identity(), "b": pb.identity(), "layers_a": la, "layers_b": lb,
              "inputs_a": atk_a.to_dict() if atk_a else "benign",
              "inputs_b": atk_b.to_dict() if atk_b else "benign",
              "adv_against": adv_against, "kernel": kernel, "unbiased": True,
              "sigma_frac": sigma_frac if kernel == "rbf" else None,
              "batch_size": batch_size, "images": test_images(n)}

    def compute(progress: Progress) -> dict:
        res = cka.cka_matrix(pa, pb, _test_subset(n), la, lb, kernel=kernel, unbiased=True,
                             attack_a=atk_a, attack_b=atk_b, adv_against=adv_against,
                             sigma_frac=sigma_frac, progress=progress, batch_size=batch_size)
        return res.to_dict()
    label = f"CKA {pa.name} ({INPUT_LABELS[inputs_a]}) vs {pb.name} ({INPUT_LABELS[inputs_b]}), {n} images"
    return Job("cka", inputs, compute, label)


# ------------------------------------------------------------------- stitching

# The stitching recipe of the shipped matrix. Balogh & Jelasity train 30 epochs
# from a random start; on a 2-core CPU that is ~86 hours for a 4 x 10 matrix, and
# one epoch from a random start stays at chance at early layers
# (bench/stitching.py). So task matching starts from the least-squares fit (on
# 1,024 images) and trains one epoch on 10,000 images: the gap between the two
# methods is the drift that task training adds (their AAAI 2025 follow-up).
# Clean accuracy on all 10,000 test images, robust accuracy (PGD-20 Linf 8/255,
# random start, the best iterate per image counts and an image stops being attacked
# once misclassified) on the first 1,000 of the fixed shuffle (+-1.5 points SE).
STITCH_RECIPE = {"epochs": 1, "init": "direct", "init_batches": 8, "train_images": 10_000,
                 "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-4, "adapt_bn": False,
                 "robust_images": 1000, "attack": attacks.PGD.paper("linf").for_accuracy()}
STITCH_PAIRS = ("robust → standard", "standard → robust", "standard → standard",
                "robust → robust")


def default_stitch_pairs() -> list[tuple[str, str]]:
    """The matrix rows for the shipped zoo, in STITCH_PAIRS order."""
    r1, r2, s1, s2 = ("resnet18-linf-8", "resnet18-l2-1.0", "resnet18-standard-s0",
                      "resnet18-standard-s1")
    return [(r1, s1), (s1, r1), (s1, s2), (r1, r2)]


def _recipe_inputs(recipe: dict, method: str) -> dict:
    keep = {k: v for k, v in recipe.items() if k != "attack"}
    if method == "direct":  # only the data matter to a least-squares fit
        keep = {"train_images": recipe["train_images"]}
    return {**keep, "attack": recipe["attack"].to_dict()}


def _shuffled_test() -> data.ImageTensorDataset:
    """The whole test set in the fixed shuffle: its first n images span all classes."""
    test = data.cifar10("test")
    return data.fixed_subset(test, len(test))


def stitch_cell_job(load: Loader, front: str, end: str, layer: str, method: str = "task",
                    recipe: dict | None = None) -> Job:
    """One cell of the stitching matrix: front[..layer] -> 1x1 conv -> end[layer..]."""
    from . import stitching
    recipe = recipe or STITCH_RECIPE
    pf, pe = load(front), load(end)
    stitching.StitchedModel(pf, pe, layer)  # fail fast on a bad request
    inputs = {"front": pf.identity(), "end": pe.identity(), "layer": layer, "method": method,
              "recipe": _recipe_inputs(recipe, method), "seed": 0,
              "train": {"dataset": "cifar10-train", "order": "fixed-shuffle-0",
                        "n": recipe["train_images"]}, "test": test_images(None)}

    def compute(progress: Progress) -> dict:
        train = data.fixed_subset(data.cifar10("train"), recipe["train_images"])
        test = _shuffled_test()
        opts = {k: recipe[k] for k in ("batch_size", "lr", "weight_decay", "adapt_bn", "init",
                                       "init_batches")}
        if method == "direct":
            opts = {"batch_size": recipe["batch_size"]}
        return stitching.stitch_cell(pf, pe, layer, method, train, test, recipe["attack"],
                                     recipe["epochs"], robust_n=recipe["robust_images"],
                                     progress=progress, **opts)
    return Job("stitch_cell", inputs, compute,
               f"stitch {pf.name} -> {pe.name} at {layer} ({method} matching)")


def accuracy_job(load: Loader, spec: str, recipe: dict | None = None) -> Job:
    """Clean (10,000 images) and robust (first 1,000) accuracy of a model."""
    from . import stitching
    recipe = recipe or STITCH_RECIPE
    probe = load(spec)
    inputs = {"model": probe.identity(), "test": test_images(None),
              "robust_images": recipe["robust_images"], "attack": recipe["attack"].to_dict()}

    def compute(progress: Progress) -> dict:
        return stitching.evaluate(probe, _shuffled_test(), recipe["attack"], robust_n=recipe["robust_images"],
                                  progress=progress)
    return Job("accuracy", inputs, compute, f"accuracy of {probe.name}")


# ------------------------------------------------------------------- inversion

def image_id(image: Any) -> str:
    """A short hash of an image's uint8 pixels: its identity in result keys."""
    import hashlib

    from .figures import to_uint8
    return hashlib.sha256(to_uint8(image).tobytes()).hexdigest()[:16]


def image_tensor(image: Any):
    """uint8 HWC (or CHW float) -> (3, H, W) float in [0, 1]."""
    import torch

    from .figures import to_uint8
    return torch.from_numpy(to_uint8(image).transpose(2, 0, 1).copy()).float() / 255


def inversion_job(load: Loader, spec: str, image: Any, layer: str | None = None,
                  method: str = "adam", steps: int | None = None, seed: str = "noise",
                  generator_seed: int = 0) -> Job:
    """Reconstruct `image` from model `spec`'s representation (Engstrom et al. 2019)."""
    from . import inversion
    probe = load(spec)
    layer = probe.check_layers([layer or probe.representation_layer])[0]
    steps, step_size = inversion._defaults("invert", method, steps, None)
    inputs = {"model": probe.identity(), "image": image_id(image), "layer": layer,
              "method": method, "steps": steps, "step_size": step_size, "seed": seed,
              "generator_seed": generator_seed, "eps": 1000.0}

    def compute(progress: Progress) -> dict:
        x = image_tensor(image)[None]
        res = inversion.invert(probe, x, layer, seed, steps, method, step_size,
                               generator_seed=generator_seed, progress=progress)
        out = res.to_dict()
        out.update(psnr=float(inversion.psnr(res.images, x)[0]),
                   ssim=float(inversion.ssim(res.images, x)[0]),
                   l2=float((res.images - x).flatten().norm()))
        return out
    return Job("inversion", inputs, compute, f"inversion of {inputs['image'][:6]} by {probe.name}")


def quality_job(load: Loader, spec: str, method: str = "adam", steps: int | None = None) -> Job:
    """Mean reconstruction quality over the 20 shipped CIFAR-10 samples (batched)."""
    import torch

    from . import inversion
    probe = load(spec)
    samples = data.cifar_samples()
    steps, step_size = inversion._defaults("invert", method, steps, None)
    inputs = {"model": probe.identity(), "images": [image_id(s.image) for s in samples],
              "method": method, "steps": steps, "step_size": step_size, "seed": "noise",
              "generator_seed": 0, "layer": probe.representation_layer}

    def compute(progress: Progress) -> dict:
        x = torch.stack([s.tensor() for s in samples])
        res = inversion.invert(probe, x, None, "noise", steps, method, step_size,
                               generator_seed=0, progress=progress, frame_every=steps)
        p, s = inversion.psnr(res.images, x), inversion.ssim(res.images, x)
        return {"psnr": p, "ssim": s, "loss": res.loss, "images": res.images,
                "mean_psnr": float(p.mean()), "mean_ssim": float(s.mean()),
                "mean_loss": float(res.loss.mean())}
    return Job("inversion_quality", inputs, compute,
               f"reconstruction quality of {probe.name} on the 20 samples")


# --------------------------------------------------------------- manipulation

def browser_features(probe: Probe, per_class: int = 4) -> list[int]:
    """The features the browser shows: for each class, the components with the
    largest weight in the last linear layer (a few dozen, each class's own)."""
    w = probe.model.linear.weight.detach().float().cpu()
    chosen: list[int] = []
    for c in range(w.shape[0]):
        fresh = [i for i in w[c].argsort(descending=True).tolist() if i not in chosen]
        chosen += fresh[:per_class]
    return chosen


def feature_grid_job(load: Loader, spec: str, indices: list[int], method: str = "adam",
                     steps: int | None = None) -> Job:
    """One visualisation per feature index, maximised from noise (batched)."""
    from . import inversion
    probe = load(spec)
    steps, step_size = inversion._defaults("visualize", method, steps, None)
    inputs = {"model": probe.identity(), "indices": list(indices), "method": method,
              "steps": steps, "step_size": step_size, "seed": "noise", "generator_seed": 0,
              "fake_relu": True}

    def compute(progress: Progress) -> dict:
        res = inversion.visualize_feature(probe, indices, "noise", steps, method,
                                          progress=progress, frame_every=steps)
        return {"indices": list(indices), "images": res.images, "activation": -res.loss}
    return Job("feature_grid", inputs, compute,
               f"visualising {len(indices)} features of {probe.name}")


def test_outputs_job(load: Loader, spec: str) -> Job:
    """Representation (float16), prediction and label of every test image."""
    import torch

    from . import inversion
    probe = load(spec)
    inputs = {"model": probe.identity(), "images": test_images(None)}

    def compute(progress: Progress) -> dict:
        test = data.cifar10("test")
        reps = inversion.representations(probe, test, progress=lambda d, t: progress(d, t or d))
        with torch.no_grad():
            preds = probe.model.linear(reps.to(probe.device)).argmax(1).cpu()
        return {"reps": reps.half(), "predicted": preds.to(torch.int16),
                "labels": test.labels.to(torch.int16)}
    return Job("test_outputs", inputs, compute, f"representations of the test set by {probe.name}")


def top_images_job(load: Loader, spec: str, indices: list[int], k: int = 9) -> Job:
    """Indices into the test set (class-major order) of the k most and least
    activating images of each feature: numbers only, shippable without the data."""
    import torch

    from . import inversion
    probe = load(spec)
    outputs = test_outputs_job(load, spec)
    inputs = {"model": probe.identity(), "indices": list(indices), "k": k,
              "images": test_images(None)}

    def compute(progress: Progress) -> dict:
        from .results import default_store
        reps, _ = default_store().get_or_compute(outputs.kind, outputs.inputs,
                                                 lambda: outputs.compute(progress))
        r = reps["reps"].float()
        out = {}
        for i in indices:
            top = inversion.top_activating(r, i, k)
            bottom = inversion.top_activating(r, i, k, bottom=True)
            out[str(i)] = {"top": top.indices.to(torch.int32), "top_values": top.values,
                           "bottom": bottom.indices.to(torch.int32),
                           "bottom_values": bottom.values}
        return out
    return Job("top_images", inputs, compute, f"top-activating test images for {probe.name}")


# Radii (L2, pixels in [0, 1]) that keep an optimisation near its start, chosen by
# looking at the shipped models' images: a robust model adds a feature *to* a sample
# (most keep their predicted class) and interpolates through plausible images; the
# Engstrom et al. ImageNet radius of 40 is about 5.7 at 32x32 by per-pixel RMS.
ADD_RADIUS = 3.0
INTERPOLATION_RADIUS = 4.0


def add_feature_job(load: Loader, spec: str, image: Any, index: int, method: str = "adam",
                    steps: int | None = None) -> Job:
    import torch

    from . import inversion
    probe = load(spec)
    steps, step_size = inversion._defaults("add", method, steps, None)
    inputs = {"model": probe.identity(), "image": image_id(image), "index": int(index),
              "method": method, "steps": steps, "step_size": step_size, "fake_relu": True,
              "eps": ADD_RADIUS}

    def compute(progress: Progress) -> dict:
        x = image_tensor(image)[None]
        res = inversion.add_feature(probe, x, int(index), steps, method, step_size=step_size,
                                    eps=ADD_RADIUS, progress=progress)
        with torch.no_grad():
            classes = probe(torch.cat([x, res.images]).to(probe.device)).argmax(1).tolist()
        out = res.to_dict()
        out.update(before=float(-res.loss_curve[0, 0]), after=float(-res.loss[0]),
                   predicted_before=classes[0], predicted=classes[1])
        return out
    return Job("add_feature", inputs, compute, f"adding feature {index} with {probe.name}")


def interpolation_job(load: Loader, spec: str, image_a: Any, image_b: Any, frames: int = 10,
                      method: str = "adam", steps: int | None = None) -> Job:
    from . import inversion
    probe = load(spec)
    steps, step_size = inversion._defaults("invert", method, steps, None)
    inputs = {"model": probe.identity(), "a": image_id(image_a), "b": image_id(image_b),
              "frames": frames, "method": method, "steps": steps, "step_size": step_size,
              "seed": "mix", "eps": INTERPOLATION_RADIUS}

    def compute(progress: Progress) -> dict:
        res = inversion.interpolate(probe, image_tensor(image_a)[None], image_tensor(image_b)[None],
                                    frames, None, "mix", steps, method, step_size,
                                    eps=INTERPOLATION_RADIUS, progress=progress)
        return res.to_dict()
    return Job("interpolation", inputs, compute, f"interpolating with {probe.name}")


def explain_job(load: Loader, spec: str, image: Any, label: int, method: str = "adam",
                steps: int | None = None) -> Job:
    from . import inversion
    probe = load(spec)
    steps, step_size = inversion._defaults("add", method, steps, None)
    inputs = {"model": probe.identity(), "image": image_id(image), "label": int(label),
              "method": method, "steps": steps, "step_size": step_size}

    def compute(progress: Progress) -> dict:
        out = inversion.explain_misclassification(probe, image_tensor(image), int(label), steps,
                                                  method, step_size, progress=progress)
        out["result"] = out["result"].to_dict()
        return out
    return Job("explain", inputs, compute, f"explaining {probe.name}'s prediction")
