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
layers, images by gallery key, or as pixels where uploaded) from which `rebuild`
makes it again, in another process or on another machine.

The kinds are registered by the analyses (core.analyses): each module there builds
its jobs with `make`, declares its kinds' versions and costs (`Kind`, `Cost`), and
`seconds` turns a cost into a time on this machine's measured speed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from core import data
from core.data import images
from core.errors import BadImageError, IncompatibleModelError
from core.jobs.results import make_key, plain
from core.models.probe import Probe

Loader = Callable[[str], Probe]


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


@dataclass(frozen=True)
class Cost:
    """What a job computes, for a time estimate: images through each model's forward
    pass and through its forward and backward pass {spec: (forward, gradient)}, and
    optimisation steps x images of its first model (steps)."""
    passes: dict[str, tuple[float, float]] = field(default_factory=dict)
    steps: int = 0


def no_cost(job: Job) -> Cost:
    return Cost()


@dataclass(frozen=True)
class Kind:
    build: Callable[..., Job]         # build(load, **spec args) -> Job
    version: int = 1                  # bump when the computation changes
    shipped: bool = True              # precompute --to-assets copies it into assets/
    models: tuple[str, ...] = ("spec",)   # the build arguments that name models
    reads: tuple[str, ...] = ()       # the CIFAR-10 splits it reads (none on an image folder)
    cost: Callable[[Job], Cost] = no_cost


# kind name -> Kind, filled by the analyses as they are imported (core.analyses.register)
KINDS: dict[str, Kind] = {}


def kinds() -> dict[str, Kind]:
    """Every registered kind (importing the analyses registers them)."""
    import core.analyses  # noqa: F401
    return KINDS


def make(kind: str, inputs: dict, run: Callable[..., Any], label: str, args: dict,
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


def picture(image: str | Any, size: int) -> tuple[Any, Any]:
    """An image a job starts from, at a model's input size, and how the job's spec names
    it: a gallery key (data.image_for) by the key, anything else (an upload) by its pixels."""
    if isinstance(image, str):
        found = data.image_for(image, None, size)
        if found is None:
            raise BadImageError(f"no image {image!r}: name a shipped sample (foolbox-00 .. "
                                "foolbox-19), a photo or a test image (test-N)")
        return images.fit(found[0], size), image
    fitted = images.fit(image, size)
    return fitted, images.to_uint8(fitted)


def view_image(key: str, uploads: Mapping[str, Any] | None, size: int) -> Any | None:
    """A view's image as a job takes it: a gallery key as the key, an upload (of this
    session) as its pixels; None where there is no such image."""
    found = data.image_for(key, uploads, size)
    if found is None:
        return None
    return found[0] if key.startswith(images.UPLOAD_PREFIX) else key


LAYER_SETS = ("blocks", "all")


def layer_list(probe: Probe, layers: str | Sequence[str]) -> list[str]:
    """A model's taps by set name (blocks: its block outputs; all: every layer) or a list."""
    if layers == "blocks":
        return probe.layers
    if layers == "all":
        return probe.all_layers
    return probe.check_layers(layers)


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


# ---------------------------------------------------------------- estimates

def seconds(job_list: Sequence[Job], pass_seconds: Callable[[str], tuple[float, float]],
            step_seconds: Callable[[str], float], stored: Callable[[Job], Any]) -> float:
    """How long jobs take here, with their needs not stored yet: each kind's cost (passes
    through each model, optimisation steps of the first) x the measured seconds of one
    forward pass, one forward and backward pass (pass_seconds(spec)) and one
    optimisation step of one image (step_seconds(spec)) on this device."""
    total = 0.0
    for job in job_list:
        cost = KINDS[job.kind].cost(job)
        if cost.steps:
            total += step_seconds(job.models[0]) * cost.steps
        for spec, (forward, gradient) in cost.passes.items():
            forward_s, gradient_s = pass_seconds(spec)
            total += forward * forward_s + gradient * gradient_s
        total += seconds([n for n in job.needs.values() if stored(n) is None], pass_seconds,
                         step_seconds, stored)
    return total


def attack_steps(attack: dict) -> int:
    """Forward and backward passes of one image under a PGD attack: one a step."""
    return int(attack["steps"])


def optimisation_cost(job: Job) -> Cost:
    """An optimisation job's cost: its steps x its images (indices, frames, a list of
    images, else one)."""
    pictures = job.inputs.get("images")
    count = (len(job.inputs.get("indices", [])) or job.inputs.get("frames")
             or (len(pictures) if isinstance(pictures, list) else 1))
    return Cost(steps=int(job.inputs.get("steps") or 0) * count)


# ---------------------------------------------------------------------- kinds

def is_current(kind: str, inputs: dict) -> bool:
    """Whether a stored result is of a kind this code computes, at its version."""
    known = kinds()
    return kind in known and inputs.get("version", 1) == known[kind].version


def rebuild(spec: dict, load: Loader) -> Job:
    """The job a spec describes (Job.spec, e.g. read back from JSON in another
    process); a spec of another version than this code computes is refused."""
    kind = kinds().get(spec.get("kind"))
    if kind is None:
        raise ValueError(f"unknown job kind {spec.get('kind')!r}; known: {', '.join(KINDS)}")
    if spec.get("version") != kind.version:
        raise ValueError(f"this is a {spec['kind']} job of version {spec.get('version')}; "
                         f"this code computes version {kind.version}")
    return kind.build(load, **spec["args"])


# builders that moved to their analyses (DESIGN.md's names stay importable from here)
_MOVED = {"cka": ("cka_job", "adversarial_job", "INPUT_CHOICES", "INPUT_LABELS"),
          "stitching": ("stitch_cell_job", "accuracy_job", "stitch_matrix", "stitch_data",
                        "StitchData", "StitchMatrix", "STITCH_RECIPE", "FOLDER_STITCH_RECIPE",
                        "STITCH_PAIRS", "default_stitch_pairs", "stitch_recipe"),
          "inversion": ("inversion_job", "quality_job", "feature_grid_job", "test_outputs_job",
                        "top_images_job", "add_feature_job", "interpolation_job", "explain_job",
                        "browser_features")}


def __getattr__(name: str) -> Any:
    for analysis, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"core.analyses.{analysis}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
