"""The cached computations, defined once for the app, the CLI and talk decks.

A Job is what a result is (kind, inputs), how to make it (run) and what it
needs made first (needs: other jobs, whose results run receives). `inputs` name
everything the result depends on (model fingerprints, layers, data, attack,
seed, recipe) and nothing it does not (device, paths), so a key computed on a
GPU serves a laptop, and the precomputed results in assets/ serve every fresh
machine. core.runner gets a job's result from the results store or computes it
once.

Every kind has a version (KINDS). Version 1 leaves the inputs as they always
were; a later version is an input ("version": n), so changing a computation
means bumping its kind's version: the old results then have other keys and are
neither served nor shipped (precompute --prune drops them from assets/).

A job also carries its `spec`, plain data (kind, version, arguments: model specs,
layers, images as pixel lists) from which `rebuild` makes it again, in another
process or on another machine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from . import attacks, cka, data, images, inversion, stitching
from .errors import IncompatibleModelError
from .probe import Probe
from .progress import Reporter
from .results import make_key, plain

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
    inputs: dict                      # the key; includes "version" from version 2 on
    run: Callable[..., Any]           # run(progress, **results of needs) -> result
    label: str
    spec: dict                        # {"kind", "version", "args"}: plain data for rebuild()
    needs: dict[str, "Job"] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.spec["version"]

    @property
    def key(self) -> str:
        return make_key(self.kind, self.inputs)

    @property
    def models(self) -> list[str]:
        """The model specs it loads (its kind's model arguments), in order."""
        return [self.spec["args"][name] for name in KINDS[self.kind].models]

    @property
    def splits(self) -> tuple[str, ...]:
        """The CIFAR-10 splits it reads: its kind's, none on an image folder."""
        return () if self.spec["args"].get("folder") else KINDS[self.kind].reads


def _job(kind: str, inputs: dict, run: Callable[..., Any], label: str, args: dict,
         needs: dict[str, Job] | None = None) -> Job:
    """A Job of a registered kind: its version into the inputs (from 2 on), its
    builder's arguments, as plain data, into the spec."""
    version = KINDS[kind].version
    keyed = dict(inputs) if version == 1 else {**inputs, "version": version}
    spec = {"kind": kind, "version": version, "args": plain(args)}
    return Job(kind, keyed, run, label, spec, dict(needs or {}))


def cifar10_images(split: str, n: int) -> dict:
    """How a job names CIFAR-10 images: the first n of the fixed shuffle of a split,
    and the split's source where it is another copy (data.cifar10_source)."""
    source = data.cifar10_source(split)
    return {"dataset": f"cifar10-{split}", "order": "fixed-shuffle-0", "n": n,
            **({"source": source} if source else {})}


def test_images(n: int | None) -> dict:
    """How a job names its images: the first n of the fixed shuffle of the test set."""
    return cifar10_images("test", n or 10_000)


def layer_list(probe: Probe, layers: str | Sequence[str]) -> list[str]:
    if layers == "blocks":
        return probe.layers
    if layers == "all":
        return probe.all_layers
    return probe.check_layers(layers)


def _attack(choice: str) -> attacks.PGD | None:
    if choice not in INPUT_CHOICES:
        raise ValueError(f"inputs must be one of {list(INPUT_CHOICES)}, not {choice!r}")
    return INPUT_CHOICES[choice]


# ------------------------------------------------------------------------ CKA

def on_cifar10(analysis: str, *probes: Probe,
               other: str = " (this analysis reads no other data set yet)") -> None:
    """Analyses over a data set read CIFAR-10 unless told otherwise: refuse, in one
    sentence, a model made for other images (a 224 px ImageNet model would see 32 px
    thumbnails); `other` says what else the analysis can read."""
    for p in probes:
        if p.kind != "cifar10":
            raise IncompatibleModelError(
                f"{analysis} runs on CIFAR-10 test images, and {p.name} classifies "
                f"{data.KIND_NAMES[p.kind]} images at {p.input_size}x{p.input_size}: choose "
                f"CIFAR-10 models{other}")


def image_folder(analysis: str, folder: str | None, *probes: Probe) -> data.ImageFolder | None:
    """The image folder an analysis reads, at its models' one input size, through the
    first model's evaluation transform (where models differ in crop or interpolation:
    a CKA job's first model, a stitching cell's front); None for the CIFAR-10 test set
    (then every model must be a CIFAR-10 model)."""
    if not folder:
        on_cifar10(analysis, *probes, other=", or name an image folder of the models' own "
                   "data set (an ImageNet validation folder) under Image folder")
        return None
    sizes = sorted({p.input_size for p in probes})
    if len(sizes) > 1:
        raise IncompatibleModelError(
            f"{analysis} shows two models the same images, and "
            f"{' and '.join(f'{p.name} takes {p.input_size} px' for p in probes)}: choose "
            "models of one input size")
    return data.ImageFolder(folder, probes[0].preprocessing)


def cka_batch_size(n: int) -> int:
    """The paper's 1024, smaller for small n so that a cell has a spread over at
    least four batches."""
    return min(1024, max(250, n // 4))


def adversarial_job(load: Loader, spec: str, inputs: str, n: int = 10_000,
                    batch_size: int | None = None) -> Job:
    """PGD examples against model `spec` of the first n test images of the seeded
    order, made batch by batch as cka_job reads them: made once, shared by every
    CKA view that attacks this model."""
    batch_size = batch_size or cka_batch_size(n)
    probe, attack = load(spec), _attack(inputs)
    on_cifar10("Adversarial CKA", probe)
    if attack is None:
        raise ValueError("benign inputs need no adversarial examples")
    key_inputs = {"model": probe.identity(), "attack": attack.to_dict(),
                  "batch_size": batch_size, "images": test_images(n)}

    def run(progress: Reporter) -> dict:
        return {"images": attacks.examples(probe, data.cifar10("test"), attack, batch_size,
                                           limit=n, progress=progress)}
    return _job("adversarial_examples", key_inputs, run,
                f"{INPUT_LABELS[inputs]} examples against {probe.name}, {n} images",
                {"spec": spec, "inputs": inputs, "n": n, "batch_size": batch_size})


def cka_job(load: Loader, a: str, b: str, layers_a: str | list[str] = "blocks",
            layers_b: str | list[str] = "blocks", inputs_a: str = "benign",
            inputs_b: str = "benign", adv_against: str = "self", kernel: str = "linear",
            n: int = 10_000, batch_size: int | None = None, sigma_frac: float = 0.8,
            folder: str | None = None) -> Job:
    """Layer x layer CKA of model a against model b (see core.cka.cka_matrix) on
    the first n test images of the seeded order (of CIFAR-10, or of the image
    `folder` at the models' input size), in seeded random batches."""
    args = {"a": a, "b": b, "layers_a": layers_a, "layers_b": layers_b, "inputs_a": inputs_a,
            "inputs_b": inputs_b, "adv_against": adv_against, "kernel": kernel, "n": n,
            "batch_size": batch_size, "sigma_frac": sigma_frac,
            **({"folder": folder} if folder else {})}
    pa, pb = load(a), load(b)
    source = image_folder("CKA", folder, pa, pb)
    if source is not None:
        n = min(n, len(source))
    batch_size = batch_size or cka_batch_size(n)
    la, lb = layer_list(pa, layers_a), layer_list(pb, layers_b)
    atk_a, atk_b = _attack(inputs_a), _attack(inputs_b)
    if atk_a is None and atk_b is None:
        adv_against = "self"  # irrelevant without attacks: one key for all
    inputs = {"a": pa.identity(), "b": pb.identity(), "layers_a": la, "layers_b": lb,
              "inputs_a": atk_a.to_dict() if atk_a else "benign",
              "inputs_b": atk_b.to_dict() if atk_b else "benign",
              "adv_against": adv_against, "kernel": kernel, "unbiased": True,
              "sigma_frac": sigma_frac if kernel == "rbf" else None,
              "batch_size": batch_size, "images": test_images(n) if source is None else
              {"folder": source.identity(), "order": "fixed-shuffle-0", "n": n}}
    against = {"a": b if adv_against == "b" else a, "b": a if adv_against == "a" else b}
    # CIFAR-10's adversarial examples are made once and shared by every view; a folder's
    # are made batch by batch as CKA reads them (224 px examples would not fit the store)
    needs = {f"examples_{side}": adversarial_job(load, against[side], choice, n, batch_size)
             for side, choice in (("a", inputs_a), ("b", inputs_b))
             if choice != "benign" and source is None}

    def run(progress: Reporter, examples_a: dict | None = None,
            examples_b: dict | None = None) -> dict:
        images = data.cifar10("test") if source is None else source
        res = cka.cka_matrix(pa, pb, images, la, lb, kernel=kernel, unbiased=True,
                             attack_a=atk_a, attack_b=atk_b, adv_against=adv_against,
                             sigma_frac=sigma_frac, progress=progress, batch_size=batch_size,
                             limit=n,
                             examples_a=None if examples_a is None else examples_a["images"],
                             examples_b=None if examples_b is None else examples_b["images"])
        return res.to_dict()
    label = f"CKA {pa.name} ({INPUT_LABELS[inputs_a]}) vs {pb.name} ({INPUT_LABELS[inputs_b]}), {n} images"
    return _job("cka", inputs, run, label, args, needs)


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


# On an image folder (models of another data set: an ImageNet validation folder) one
# folder is split in its fixed shuffle: the first train_images (at most half of it)
# train the stitching layer, the next test_images (at most) test it; robust accuracy
# under RobustBench's ImageNet threat, Linf 4/255.
FOLDER_STITCH_RECIPE = {**STITCH_RECIPE, "test_images": 10_000,
                        "attack": attacks.PGD("linf", 4 / 255, 1 / 255, 20).for_accuracy()}


def stitch_recipe(recipe: dict | None, folder: str | None = None) -> dict:
    """A stitching recipe with its attack as a PGD (plain data names it by a dict);
    None: the recipe for CIFAR-10 or for an image folder."""
    recipe = dict(recipe or (FOLDER_STITCH_RECIPE if folder else STITCH_RECIPE))
    if isinstance(recipe["attack"], dict):
        recipe["attack"] = attacks.PGD(**recipe["attack"])
    return recipe


def _recipe_inputs(recipe: dict, method: str) -> dict:
    keep = {k: v for k, v in recipe.items() if k != "attack"}
    if method == "direct":  # only the data matter to a least-squares fit
        keep = {"train_images": recipe["train_images"]}
    return {**keep, "attack": recipe["attack"].to_dict()}


def _shuffled_test() -> data.ImageTensorDataset:
    """The whole test set in the fixed shuffle, the data set that stitching results
    name (test_images): evaluate's seeded batches of it put the first robust_n of its
    own shuffled order under attack, as these results always did."""
    test = data.cifar10("test")
    return data.fixed_subset(test, len(test))


@dataclass
class StitchData:
    """Where a stitching job trains and tests: as result keys name them, and as data
    sets made when the job runs (a CIFAR-10 set is read from disk only then)."""
    train_key: dict
    test_key: dict
    train: Callable[[], Any]
    test: Callable[[], Any]


def stitch_data(analysis: str, recipe: dict, folder: str | None, *probes: Probe) -> StitchData:
    """CIFAR-10's training images and test set, or the two parts of an image folder
    (read at the models' one input size)."""
    source = image_folder(analysis, folder, *probes)
    if source is None:
        return StitchData(cifar10_images("train", recipe["train_images"]), test_images(None),
                          lambda: data.fixed_subset(data.cifar10("train"),
                                                    recipe["train_images"]),
                          _shuffled_test)
    outputs = probes[0].num_classes
    classes = len(data.imagenet_synsets()) if source.by_synset else len(source.classes)
    if classes != outputs:
        folders, advice = (("names its folders by ImageNet synset", ", not ImageNet's 1,000: give")
                           if source.by_synset else
                           (f"has {classes} class folders", ": name the folders by ImageNet "
                            "synset (n01440764, ...), or give"))
        raise IncompatibleModelError(
            f"{analysis} scores answers against the folder's classes, and {folder} {folders} "
            f"where {probes[0].name} has {outputs} outputs{advice} one folder per output, "
            "in the outputs' order.")
    order = data.shuffled_order(len(source)).tolist()
    n_train = min(recipe["train_images"], len(source) // 2)
    n_test = min(recipe.get("test_images", len(source)), len(source) - n_train)
    named = {"folder": source.identity(), "order": "fixed-shuffle-0"}
    return StitchData({**named, "n": n_train}, {**named, "from": n_train, "n": n_test},
                      lambda: torch.utils.data.Subset(source, order[:n_train]),
                      lambda: torch.utils.data.Subset(source, order[n_train:n_train + n_test]))


def stitch_cell_job(load: Loader, front: str, end: str, layer: str, method: str = "task",
                    recipe: dict | None = None, folder: str | None = None, *,
                    end_layer: str | None = None, where: StitchData | None = None) -> Job:
    """One cell of the stitching matrix: front[..layer] -> 1x1 conv -> end[end_layer..]
    (default: the same layer), trained and tested on CIFAR-10, or on the two parts of
    an image `folder` (`where`: its stitch_data, when a whole matrix made it once)."""
    other_end = {"end_layer": end_layer} if end_layer not in (None, layer) else {}
    args = {"front": front, "end": end, "layer": layer, "method": method, "recipe": recipe,
            **({"folder": folder} if folder else {}), **other_end}
    recipe = stitch_recipe(recipe, folder)
    pf, pe = load(front), load(end)
    where = where or stitch_data("Stitching", recipe, folder, pf, pe)
    inputs = {"front": pf.identity(), "end": pe.identity(), "layer": layer, **other_end,
              "method": method, "recipe": _recipe_inputs(recipe, method), "seed": 0,
              "train": where.train_key, "test": where.test_key}

    def run(progress: Reporter) -> dict:
        opts = {k: recipe[k] for k in ("batch_size", "lr", "weight_decay", "adapt_bn", "init",
                                       "init_batches")}
        if method == "direct":
            opts = {"batch_size": recipe["batch_size"]}
        return stitching.stitch_cell(pf, pe, layer, method, where.train(), where.test(),
                                     recipe["attack"], recipe["epochs"],
                                     robust_n=recipe["robust_images"], progress=progress,
                                     **other_end, **opts)
    at = layer if not other_end else f"{layer} / {end_layer}"
    return _job("stitch_cell", inputs, run,
                f"stitch {pf.name} -> {pe.name} at {at} ({method} matching)", args)


def accuracy_job(load: Loader, spec: str, recipe: dict | None = None,
                 folder: str | None = None, *, where: StitchData | None = None) -> Job:
    """Clean (the test images) and robust (the first robust_images) accuracy of a model,
    on CIFAR-10's test set or on the test part of an image `folder` (`where`: as for
    stitch_cell_job)."""
    args = {"spec": spec, "recipe": recipe, **({"folder": folder} if folder else {})}
    recipe = stitch_recipe(recipe, folder)
    probe = load(spec)
    where = where or stitch_data("Measuring accuracy", recipe, folder, probe)
    inputs = {"model": probe.identity(), "test": where.test_key,
              "robust_images": recipe["robust_images"], "attack": recipe["attack"].to_dict()}

    def run(progress: Reporter) -> dict:
        return stitching.evaluate(probe, where.test(), recipe["attack"],
                                  robust_n=recipe["robust_images"], progress=progress)
    return _job("accuracy", inputs, run, f"accuracy of {probe.name}", args)


@dataclass
class StitchMatrix:
    """A stitching matrix as jobs: a cell job per (pair, layer) of a stitching.Grid
    and an accuracy job per donor. stitching.matrix lays out and assembles the
    same Grid, computing the cells directly."""
    grid: stitching.Grid
    method: str
    recipe: dict
    cells: list[list[Job]]             # [pair][layer]
    donors: dict[str, Job]             # model spec -> its accuracy job

    def jobs(self) -> list[Job]:
        return [j for row in self.cells for j in row] + list(self.donors.values())

    def result(self, get: Callable[[Job], Any]) -> stitching.StitchResult:
        """The StitchResult of the jobs' results, get(job) (None: not computed)."""
        by_fingerprint = {job.inputs["model"]["fingerprint"]: job for job in self.donors.values()}
        return self.grid.assemble(self.method, _recipe_inputs(self.recipe, self.method),
                                  lambda i, j: get(self.cells[i][j]),
                                  lambda probe: get(by_fingerprint[probe.fingerprint()]))


def stitch_matrix(load: Loader, pairs: Sequence[tuple[str, str]], method: str = "task",
                  layers: Sequence[str] | None = None, recipe: dict | None = None,
                  folder: str | None = None) -> StitchMatrix:
    """The jobs of a stitching matrix of model specs (rows: (front, end) pairs;
    default layers: stitching.Grid.of's), on CIFAR-10 or an image `folder`."""
    probes = {s: load(s) for pair in pairs for s in pair}
    grid = stitching.Grid.of([(probes[f], probes[e]) for f, e in pairs], layers)
    full_recipe = stitch_recipe(recipe, folder)
    # a folder is listed and hashed once per evaluation transform among the models, not
    # once a cell; each job reads it through its first model's, as when built alone
    wheres: dict[Any, StitchData] = {}

    def where(spec: str) -> StitchData:
        first = probes[spec]
        if first.preprocessing not in wheres:
            wheres[first.preprocessing] = stitch_data(
                "Stitching", full_recipe, folder, first, *(p for p in probes.values() if p is not first))
        return wheres[first.preprocessing]
    cells = [[stitch_cell_job(load, f, e, layer, method, recipe, folder, end_layer=end_layer,
                              where=where(f))
              for layer, end_layer in row] for (f, e), row in zip(pairs, grid.points)]
    donors = {s: accuracy_job(load, s, recipe, folder, where=where(s)) for s in probes}
    return StitchMatrix(grid, method, full_recipe, cells, donors)


# ------------------------------------------------------------------- inversion

def _settings(task: str, method: str, steps: int | None, probe: Probe) -> inversion.Settings:
    return inversion.Settings.for_task(task, method, steps, input_size=probe.input_size)


def _with_frames_at_ends(settings: inversion.Settings) -> inversion.Settings:
    """Only the seed and the result as frames: a batch shown as one grid."""
    return dataclasses.replace(settings, frame_every=settings.steps)


def inversion_job(load: Loader, spec: str, image: Any, layer: str | None = None,
                  method: str = "adam", steps: int | None = None, seed: str = "noise",
                  generator_seed: int = 0) -> Job:
    """Reconstruct `image` from model `spec`'s representation (Engstrom et al. 2019)."""
    probe = load(spec)
    image = images.fit(image, probe.input_size)
    args = {"spec": spec, "image": images.to_uint8(image), "layer": layer, "method": method,
            "steps": steps, "seed": seed, "generator_seed": generator_seed}
    layer = layer or probe.representation_layer
    settings = _settings("invert", method, steps, probe)
    inputs = {"model": probe.identity(), "image": images.image_id(image), "layer": layer,
              "method": method, "steps": settings.steps, "step_size": settings.step_size,
              "seed": seed, "generator_seed": generator_seed, "eps": settings.eps}

    def run(progress: Reporter) -> dict:
        x = images.to_tensor(image)[None]
        res = inversion.invert(probe, x, seed, progress=progress, layer=layer,
                               generator_seed=generator_seed, settings=settings)
        out = res.to_dict()
        out.update(psnr=float(inversion.psnr(res.images, x)[0]),
                   ssim=float(inversion.ssim(res.images, x)[0]),
                   l2=float((res.images - x).flatten().norm()))
        return out
    return _job("inversion", inputs, run, f"inversion of {inputs['image'][:6]} by {probe.name}",
                args)


def quality_job(load: Loader, spec: str, method: str = "adam", steps: int | None = None) -> Job:
    """Mean reconstruction quality over the 20 shipped samples of the model's data set
    (CIFAR-10 test or ImageNet validation images; batched)."""
    args = {"spec": spec, "method": method, "steps": steps}
    probe = load(spec)
    pictures = [images.fit(s.image, probe.input_size)
                for s in data.samples(probe.kind) or data.cifar_samples()]
    settings = _with_frames_at_ends(_settings("invert", method, steps, probe))
    inputs = {"model": probe.identity(), "images": [images.image_id(p) for p in pictures],
              "method": method, "steps": settings.steps, "step_size": settings.step_size,
              "seed": "noise", "generator_seed": 0, "layer": probe.representation_layer}

    def run(progress: Reporter) -> dict:
        x = torch.stack([images.to_tensor(p) for p in pictures])
        res = inversion.invert(probe, x, progress=progress, settings=settings)
        p, s = inversion.psnr(res.images, x), inversion.ssim(res.images, x)
        return {"psnr": p, "ssim": s, "loss": res.loss, "images": res.images,
                "mean_psnr": float(p.mean()), "mean_ssim": float(s.mean()),
                "mean_loss": float(res.loss.mean())}
    return _job("inversion_quality", inputs, run,
                f"reconstruction quality of {probe.name} on the 20 samples", args)


# --------------------------------------------------------------- manipulation

def browser_features(probe: Probe, per_class: int = 4, max_classes: int = 10) -> list[int]:
    """The features the browser shows: for each class (at most `max_classes`: with
    more, the classes of the model's sample images), the components with the largest
    weight in the last linear layer (a few dozen, each class's own)."""
    w = probe.head.weight.detach().float().cpu()
    classes = list(range(w.shape[0]))
    if len(classes) > max_classes:
        labels = [s.label for s in data.samples(probe.kind) if s.label is not None]
        classes = list(dict.fromkeys(labels))[:max_classes] or classes[:max_classes]
    chosen: list[int] = []
    for c in classes:
        fresh = [i for i in w[c].argsort(descending=True).tolist() if i not in chosen]
        chosen += fresh[:per_class]
    return chosen


def feature_grid_job(load: Loader, spec: str, indices: list[int], method: str = "adam",
                     steps: int | None = None) -> Job:
    """One visualisation per feature index, maximised from noise (batched)."""
    args = {"spec": spec, "indices": list(indices), "method": method, "steps": steps}
    probe = load(spec)
    settings = _with_frames_at_ends(_settings("visualize", method, steps, probe))
    inputs = {"model": probe.identity(), "indices": list(indices), "method": method,
              "steps": settings.steps, "step_size": settings.step_size, "seed": "noise",
              "generator_seed": 0, "fake_relu": settings.fake_relu}

    def run(progress: Reporter) -> dict:
        res = inversion.visualize_feature(probe, indices, "noise", progress=progress,
                                          settings=settings)
        return {"indices": list(indices), "images": res.images, "activation": -res.loss}
    return _job("feature_grid", inputs, run,
                f"visualising {len(indices)} feature{'s' * (len(indices) != 1)} of {probe.name}",
                args)


def _images_in_order(analysis: str, folder: str | None, probe: Probe,
                     where: data.ImageFolder | None = None) -> tuple[dict, Any]:
    """The test set (or an image folder at the model's input size, `where` if the
    caller built it already) read in its own order: how results of every image name
    it, and a maker of the data set."""
    source = where or image_folder(analysis, folder, probe)
    if source is None:
        return test_images(None), lambda: data.cifar10("test")
    return {"folder": source.identity(), "order": "files"}, lambda: source


def test_outputs_job(load: Loader, spec: str, folder: str | None = None, *,
                     where: data.ImageFolder | None = None) -> Job:
    """Representation (float16), prediction and label of every test image (or image of
    `folder`; `where`: that folder, already built), in its order (top_images_job gives
    indices into it)."""
    probe = load(spec)
    named, images = _images_in_order("Reading the images' representations", folder, probe, where)
    inputs = {"model": probe.identity(), "images": named}

    def run(progress: Reporter) -> dict:
        test = images()
        reps = inversion.representations(probe, test, progress=progress)
        with torch.no_grad():
            preds = probe.head(reps.to(probe.device)).argmax(1).cpu()
        return {"reps": reps.half(), "predicted": preds.to(torch.int16),
                "labels": test.labels.to(torch.int16)}
    return _job("test_outputs", inputs, run, f"representations of the test set by {probe.name}",
                {"spec": spec, **({"folder": folder} if folder else {})})


def top_images_job(load: Loader, spec: str, indices: list[int], k: int = 9,
                   folder: str | None = None, *, where: data.ImageFolder | None = None) -> Job:
    """Indices into the test set (class-major order) or the image `folder` (its files'
    order; `where`: that folder, already built, which the page shows) of the k most and
    least activating images of each feature: numbers only, shippable without the data."""
    probe = load(spec)
    # the folder is listed and hashed once, for this job and the one it needs
    where = where or image_folder("Finding top-activating images", folder, probe)
    named, _ = _images_in_order("Finding top-activating images", folder, probe, where)
    inputs = {"model": probe.identity(), "indices": list(indices), "k": k, "images": named}

    def run(progress: Reporter, outputs: dict) -> dict:
        r = outputs["reps"].float()
        out = {}
        for i in indices:
            top = inversion.top_activating(r, i, k)
            bottom = inversion.top_activating(r, i, k, bottom=True)
            out[str(i)] = {"top": top.indices.to(torch.int32), "top_values": top.values,
                           "bottom": bottom.indices.to(torch.int32),
                           "bottom_values": bottom.values}
        return out
    return _job("top_images", inputs, run, f"top-activating images for {probe.name}",
                {"spec": spec, "indices": list(indices), "k": k,
                 **({"folder": folder} if folder else {})},
                {"outputs": test_outputs_job(load, spec, folder, where=where)})


def add_feature_job(load: Loader, spec: str, image: Any, index: int, method: str = "adam",
                    steps: int | None = None) -> Job:
    probe = load(spec)
    image = images.fit(image, probe.input_size)
    args = {"spec": spec, "image": images.to_uint8(image), "index": int(index),
            "method": method, "steps": steps}
    settings = _settings("add", method, steps, probe)
    inputs = {"model": probe.identity(), "image": images.image_id(image), "index": int(index),
              "method": method, "steps": settings.steps, "step_size": settings.step_size,
              "fake_relu": settings.fake_relu, "eps": settings.eps}

    def run(progress: Reporter) -> dict:
        x = images.to_tensor(image)[None]
        res = inversion.add_feature(probe, x, int(index), progress=progress, settings=settings)
        with torch.no_grad():
            classes = probe(torch.cat([x, res.images]).to(probe.device)).argmax(1).tolist()
        out = res.to_dict()
        out.update(before=float(-res.loss_curve[0, 0]), after=float(-res.loss[0]),
                   predicted_before=classes[0], predicted=classes[1])
        return out
    return _job("add_feature", inputs, run, f"adding feature {index} with {probe.name}", args)


def interpolation_job(load: Loader, spec: str, image_a: Any, image_b: Any, frames: int = 10,
                      method: str = "adam", steps: int | None = None) -> Job:
    probe = load(spec)
    image_a, image_b = (images.fit(i, probe.input_size) for i in (image_a, image_b))
    args = {"spec": spec, "image_a": images.to_uint8(image_a),
            "image_b": images.to_uint8(image_b), "frames": frames, "method": method,
            "steps": steps}
    settings = _settings("interpolate", method, steps, probe)
    inputs = {"model": probe.identity(), "a": images.image_id(image_a),
              "b": images.image_id(image_b), "frames": frames, "method": method,
              "steps": settings.steps, "step_size": settings.step_size, "seed": "mix",
              "eps": settings.eps}

    def run(progress: Reporter) -> dict:
        res = inversion.interpolate(probe, images.to_tensor(image_a)[None],
                                    images.to_tensor(image_b)[None], frames, seed="mix",
                                    progress=progress, settings=settings)
        return res.to_dict()
    return _job("interpolation", inputs, run, f"interpolating with {probe.name}", args)


def explain_job(load: Loader, spec: str, image: Any, label: int, method: str = "adam",
                steps: int | None = None) -> Job:
    probe = load(spec)
    image = images.fit(image, probe.input_size)
    args = {"spec": spec, "image": images.to_uint8(image), "label": int(label),
            "method": method, "steps": steps}
    settings = _settings("explain", method, steps, probe)
    inputs = {"model": probe.identity(), "image": images.image_id(image), "label": int(label),
              "method": method, "steps": settings.steps, "step_size": settings.step_size}

    def run(progress: Reporter) -> dict:
        out = inversion.explain_misclassification(probe, images.to_tensor(image), int(label),
                                                  progress=progress, settings=settings)
        out["result"] = out["result"].to_dict()
        return out
    return _job("explain", inputs, run, f"explaining {probe.name}'s prediction", args)


# ---------------------------------------------------------------------- kinds

@dataclass(frozen=True)
class Kind:
    build: Callable[..., Job]         # build(load, **spec args) -> Job
    version: int = 1                  # bump when the computation changes
    shipped: bool = True              # precompute --to-assets copies it into assets/
    models: tuple[str, ...] = ("spec",)   # the build arguments that name models
    reads: tuple[str, ...] = ()       # the CIFAR-10 splits it reads (none on an image folder)


KINDS: dict[str, Kind] = {
    # 2: seeded random batches over the whole test set (class-sorted at n = 10,000 before)
    "cka": Kind(cka_job, version=2, models=("a", "b"), reads=("test",)),
    # made of data-set pixels and large: computed where they are used
    "adversarial_examples": Kind(adversarial_job, shipped=False, reads=("test",)),
    "stitch_cell": Kind(stitch_cell_job, models=("front", "end"), reads=("train", "test")),
    "accuracy": Kind(accuracy_job, reads=("test",)),
    "inversion": Kind(inversion_job),
    "inversion_quality": Kind(quality_job),
    "feature_grid": Kind(feature_grid_job),
    "test_outputs": Kind(test_outputs_job, shipped=False, reads=("test",)),
    "top_images": Kind(top_images_job, reads=("test",)),
    # 2: within L2 3.0 of the image (unconstrained before); reports the class before and after
    "add_feature": Kind(add_feature_job, version=2),
    # 2: within L2 4.0 of the pixel mix (unconstrained before)
    "interpolation": Kind(interpolation_job, version=2),
    "explain": Kind(explain_job),
}


def is_current(kind: str, inputs: dict) -> bool:
    """Whether a stored result is of a kind this code computes, at its version."""
    return kind in KINDS and inputs.get("version", 1) == KINDS[kind].version


def rebuild(spec: dict, load: Loader) -> Job:
    """The job a spec describes (Job.spec, e.g. read back from JSON in another
    process); a spec of another version than this code computes is refused."""
    kind = KINDS.get(spec.get("kind"))
    if kind is None:
        raise ValueError(f"unknown job kind {spec.get('kind')!r}; known: {', '.join(KINDS)}")
    if spec.get("version") != kind.version:
        raise ValueError(f"this is a {spec['kind']} job of version {spec.get('version')}; "
                         f"this code computes version {kind.version}")
    return kind.build(load, **spec["args"])
