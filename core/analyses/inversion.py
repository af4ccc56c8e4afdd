"""Representation inversion and its relatives (Engstrom et al., 2019) as one loop.

Inversion, feature visualisation, feature addition, interpolation and the
misclassification insight are the same optimisation over input pixels with a
different objective. The loop (`optimize`) is built from four small pieces, in
the style of lucent and the robustness library:

- objective: features at a tap (N, ...) -> per-image loss (N,), minimised:
  `representation_distance` (||R(x') - R(x)||_2 / ||R(x)||_2) and
  `feature_activation` (minus one component, i.e. maximise it);
- parameterisation: the pixels themselves, in [0, 1]; `start_images` draws the
  seed ("noise" = 0.5 + N(0, 1)/20 as in the paper, "gray", or given images);
- step rule: `NormGrad` (the paper's L2-normalised gradient step) or `Adam`
  (per-pixel Adam with a cosine-decayed learning rate: reaches the same loss
  in far fewer steps, see bench/inversion.py);
- constraint: `Constraint`, an L2 ball of radius eps around the seed, then a
  clamp to [0, 1].

How a run goes (method, steps, step size, radius, fake ReLU, threads, frame
interval) is one value, `Settings`; `Settings.for_task(task, method)` holds the
defaults of each task ("invert", "visualize", "add"). The public functions take
a `settings=` or, as a front, the usual keywords (steps=, method=, eps=, ...).

Every image in a batch is optimised independently (each step rule acts per
image and the model is in eval mode), so a batch of targets costs one batched
forward/backward per step. Results are deterministic given `generator_seed`
(bitwise on CPU; on CUDA up to cuDNN's non-deterministic backward kernels).

Speed (measured in bench/inversion.py, not guessed): the loop runs the model
only up to the tap (`Probe.tap`: a chain stage is reached through
`Probe.forward_to`, with no hooks; any other module through a hook that stops
the forward pass), and on CPU it runs with one intra-op thread by default
(`Settings.threads=1`; None keeps the process's setting): per-image
convolutions of a 32x32 input gain little from threads, and on a CPU shared
with other work two threads were 6x slower than one (up to 100x for a tiny
model, OpenMP threads spinning against each other). Inputs larger than
SMALL_INPUT (224 px ImageNet models) run on the process's threads: there the
convolutions are large enough to share. On CUDA each step's forward, loss and
backward are one captured CUDA graph, replayed (`Settings.cuda_graph`): a step of
a few images launches hundreds of small kernels, and launching them one by one
took 2-3x as long as the replay for a 224 px ResNet-50 on an H200 (8.8-14.4 ms
against 4.4 ms a step, bench/imagenet_inversion.py).

Progress is a core.progress.Event per step (the mean loss, and the images as a
preview on frame steps). A progress callback may raise to cancel a run; the
model is left as it was.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core import data, jobs
from core.analyses import Analysis, Command, Page, Sweep, register
from core.data import batch_sizes, batches, images
from core.data.images import norms
from core.errors import ComponentError, RobustLensError
from core.jobs.runner import run_printed
from core.models import zoo
from core.models.probe import Probe, check_input_size
from core.progress import Reporter, report
from core.views import FOLDER_HELP, Setting, image_settings

Objective = Callable[[torch.Tensor], torch.Tensor]
Features = Callable[[torch.Tensor], torch.Tensor]   # x -> the output of a tap, in the graph

METHODS = ("adam", "normgrad")
SEEDS = ("noise", "gray")
# (steps, step size) per task and method, read through Settings.for_task (the app
# reads the default steps here). normgrad: the paper's settings (inversion step
# 0.1; visualisation step 1, 200 steps; addition step 0.1, 800 steps). adam: step
# size is the peak learning rate; 150 steps keep two width-32 ResNet-18s under
# 10 s for one 32x32 image on a busy CPU, and on an L2-robust model reach the
# loss (inversion), activation (visualisation, addition) of the paper's normgrad
# runs of 1000, 200 and 800 steps.
DEFAULTS = {
    "invert": {"adam": (150, 0.015), "normgrad": (1000, 0.1)},
    "visualize": {"adam": (150, 0.05), "normgrad": (200, 1.0)},
    "add": {"adam": (150, 0.02), "normgrad": (800, 0.1)},
    "interpolate": {"adam": (150, 0.015), "normgrad": (1000, 0.1)},
    "explain": {"adam": (150, 0.02), "normgrad": (800, 0.1)},
}
# L2 radii (pixels in [0, 1]) that keep a task near its start, chosen by looking at the
# shipped models' images: a robust model adds a feature *to* a sample (most keep their
# class) and interpolates through plausible images rather than saturated colour; the
# Engstrom et al. ImageNet radius of 40 is about 5.7 at 32x32 by per-pixel RMS. Other
# tasks are unconstrained (an explanation shows the feature as far as it goes).
RADII = {"add": 3.0, "interpolate": 4.0}
# At 224 px (ImageNet models): the paper's radius where it gives one, else the 32 px
# radius scaled by the side (the same per-pixel RMS change).
PAPER_IMAGENET_RADII = {"add": 40.0}


def radius(task: str, input_size: int = 32) -> float | None:
    """The L2 radius of a task at an input size (None: unconstrained)."""
    if input_size >= 224 and task in PAPER_IMAGENET_RADII:
        return PAPER_IMAGENET_RADII[task]
    return RADII[task] * input_size / 32 if task in RADII else None


# ------------------------------------------------------------------ objectives

def representation_distance(target: torch.Tensor) -> Objective:
    """||f - target||_2 / ||target||_2 per image, on flattened features (N, D)."""
    target = target.detach().flatten(1)
    scale = target.norm(dim=1).clamp_min(1e-12)

    def objective(features: torch.Tensor) -> torch.Tensor:
        return (features.flatten(1) - target).norm(dim=1) / scale
    return objective


def feature_activation(index: int | Sequence[int] | torch.Tensor) -> Objective:
    """Minus component `index` (one per image, or one for all) of the features:
    minimising it maximises that unit. A conv feature map (N, C, H, W) counts
    its channel `index`, averaged over space."""
    idx = torch.as_tensor(index, dtype=torch.long).flatten()

    def objective(features: torch.Tensor) -> torch.Tensor:
        nonlocal idx
        f = features.flatten(2).mean(2) if features.ndim > 2 else features
        idx = idx.to(f.device)  # once: a no-op from then on
        picks = idx.expand(f.shape[0]) if idx.numel() == 1 else idx
        return -f.gather(1, picks[:, None]).squeeze(1)
    return objective


# ------------------------------------------------------------------ step rules

class StepRule(Protocol):
    """One descent step on pixels x (in place) from the gradient of the loss."""

    def start(self, x: torch.Tensor, steps: int) -> None: ...

    def __call__(self, x: torch.Tensor, grad: torch.Tensor, step: int) -> None: ...


@dataclass
class NormGrad:
    """The paper's step: x <- x - step_size * g / ||g||_2, per image."""
    step_size: float = 0.1

    def start(self, x: torch.Tensor, steps: int) -> None:
        pass

    def __call__(self, x: torch.Tensor, grad: torch.Tensor, step: int) -> None:
        x.sub_(grad / norms(grad), alpha=self.step_size)


@dataclass
class Adam:
    """Per-pixel Adam with a cosine-decayed learning rate (from lr to 0).

    The gradient is first scaled to unit RMS per image, which makes the step
    independent of the loss's scale (a normalised distance of 1e-3 and an
    activation of 1e3 behave alike) and keeps Adam's epsilon meaningless.
    """
    lr: float = 0.015
    betas: tuple[float, float] = (0.9, 0.999)
    _m: torch.Tensor | None = field(default=None, init=False, repr=False)
    _v: torch.Tensor | None = field(default=None, init=False, repr=False)
    _steps: int = field(default=1, init=False, repr=False)

    def start(self, x: torch.Tensor, steps: int) -> None:
        self._m, self._v, self._steps = torch.zeros_like(x), torch.zeros_like(x), max(steps, 1)

    def __call__(self, x: torch.Tensor, grad: torch.Tensor, step: int) -> None:
        assert self._m is not None and self._v is not None, "call start() first"
        b1, b2 = self.betas
        g = grad * (math.sqrt(grad[0].numel()) / norms(grad))
        self._m.mul_(b1).add_(g, alpha=1 - b1)
        self._v.mul_(b2).addcmul_(g, g, value=1 - b2)
        lr = self.lr * 0.5 * (1 + math.cos(math.pi * step / self._steps))
        t = step + 1
        denom = (self._v / (1 - b2 ** t)).sqrt_().add_(1e-8)
        x.addcdiv_(self._m, denom, value=-lr / (1 - b1 ** t))


def make_step_rule(method: str, step_size: float) -> StepRule:
    if method == "adam":
        return Adam(lr=step_size)
    if method == "normgrad":
        return NormGrad(step_size=step_size)
    raise ValueError(f"method must be one of {METHODS}, not {method!r}")


# ------------------------------------------------------------------ constraint

@dataclass
class Constraint:
    """Stay within L2 distance eps of `center` (per image), then inside [0, 1]."""
    center: torch.Tensor
    eps: float = 1000.0

    def __call__(self, x: torch.Tensor) -> None:
        # two points of [0,1]^D are at most sqrt(D) apart: a larger ball is no constraint
        if self.eps < math.sqrt(x[0].numel()):
            delta = x - self.center
            delta.mul_((self.eps / norms(delta)).clamp(max=1.0))
            x.copy_(self.center + delta)
        x.clamp_(0, 1)


# ------------------------------------------------------------ parameterisation

def start_images(seed: str | torch.Tensor, n: int, shape: Sequence[int],
                 generator_seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """n starting images (n, *shape) in [0, 1]: "noise" (0.5 + N(0,1)/20, clamped),
    "gray" (0.5), or given images (C,H,W) / (1,C,H,W) / (n,C,H,W)."""
    if isinstance(seed, str):
        if seed == "noise":
            gen = torch.Generator().manual_seed(int(generator_seed))
            x = 0.5 + torch.randn((n, *shape), generator=gen) / 20
        elif seed == "gray":
            x = torch.full((n, *shape), 0.5)
        else:
            raise ValueError(f"seed must be one of {SEEDS} or a tensor of images, not {seed!r}")
        return x.clamp_(0, 1).to(device)
    x = _as_batch(seed, "seed")
    if x.shape[0] not in (1, n) or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"seed images {tuple(x.shape)} do not fit {n} images of shape {tuple(shape)}")
    return x.expand(n, *shape).to(device, torch.float32).clamp(0, 1).contiguous()


def _as_batch(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not torch.is_tensor(images):
        raise TypeError(f"{what} must be a tensor, not {type(images).__name__}")
    x = images.detach()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} must be (3, H, W) or (N, 3, H, W) in [0, 1], not {tuple(images.shape)}")
    return x.float()


# --------------------------------------------------------------------- results

@dataclass
class InversionResult:
    """What an optimisation produced, with the settings that produced it.

    images: (N, 3, H, W) in [0, 1], on the CPU; loss: (N,) final objective per
    image (for inversion the normalised representation distance; for feature
    objectives minus the activation); loss_curve: (steps + 1, N), the objective
    at every iterate from the seed (row 0) to the result; frames: (step,
    images) previews, the seed first and the result last.
    """
    images: torch.Tensor
    loss: torch.Tensor
    loss_curve: torch.Tensor
    frames: list[tuple[int, torch.Tensor]]
    settings: dict

    def to_dict(self) -> dict[str, Any]:
        """Plain values and tensors (what core.results stores)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["frames"] = [[step, images] for step, images in self.frames]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InversionResult":
        return cls(images=d["images"], loss=d["loss"], loss_curve=d["loss_curve"],
                   frames=[(int(s), im) for s, im in d["frames"]], settings=dict(d["settings"]))


# ------------------------------------------------------------------ settings

@dataclass(frozen=True)
class Settings:
    """How one optimisation runs; Settings.for_task holds each task's defaults."""
    method: str = "adam"
    steps: int = 150
    step_size: float = 0.015             # adam: peak learning rate; normgrad: step length
    eps: float = 1000.0                  # radius of the L2 ball around the start
    fake_relu: bool = True               # the ReLU feeding the representation: identity in backward
    threads: int | None = 1              # CPU intra-op threads for inputs up to SMALL_INPUT px
    #                                      (None: as set); larger inputs use the process's
    frame_every: int | None = None       # steps between previews (default steps // 10)
    cuda_graph: bool = True              # on CUDA, replay each step as one captured graph

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.steps < 0:
            raise ValueError("steps must be non-negative")
        if not (self.eps > 0 and self.step_size > 0):   # a negative one reverses the step
            raise ValueError(f"eps and step_size must be positive, not {self.eps} and "
                             f"{self.step_size}")

    @classmethod
    def for_task(cls, task: str, method: str = "adam", steps: int | None = None,
                 step_size: float | None = None, input_size: int = 32,
                 **options: Any) -> "Settings":
        """The defaults of `task` (a key of DEFAULTS) for `method` and a model's input
        size (the radius, see `radius`); steps and step_size given (not None) and any
        other field in `options` replace them."""
        if task not in DEFAULTS:
            raise ValueError(f"task must be one of {tuple(DEFAULTS)}, not {task!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        d_steps, d_size = DEFAULTS[task][method]
        r = radius(task, input_size)
        options.setdefault("eps", cls.eps if r is None else r)
        return cls(method, d_steps if steps is None else int(steps),
                   d_size if step_size is None else float(step_size), **options)

    def step_rule(self) -> StepRule:
        return make_step_rule(self.method, self.step_size)

    def record(self, layer: str) -> dict:
        """What a result keeps of the settings (threads, frames and graphs change no value)."""
        return {"method": self.method, "steps": self.steps, "step_size": self.step_size,
                "layer": layer, "eps": self.eps, "fake_relu": self.fake_relu}


def _settings(task: str, settings: Settings | None, method: str | None, steps: int | None,
              options: dict, model: Probe) -> Settings:
    """The settings of one call: `settings` (else the task's defaults for `method` at
    the model's input size) with the keywords given; steps=None and step_size=None
    keep the value."""
    if settings is None:
        return Settings.for_task(task, method or "adam", steps, input_size=model.input_size,
                                 **options)
    changes = {k: v for k, v in options.items() if not (k == "step_size" and v is None)}
    if method is not None:
        changes["method"] = method
    if steps is not None:
        changes["steps"] = int(steps)
    return dataclasses.replace(settings, **changes)


# ------------------------------------------------------------------------ loop

SMALL_INPUT = 64   # px: below this, one CPU thread per run is fastest (see the module notes)

@contextlib.contextmanager
def cpu_threads(n: int | None, device: torch.device) -> Iterator[None]:
    """Run with n intra-op threads on the CPU (restored afterwards); None or a
    non-CPU device leaves the setting alone."""
    if n is None or device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _run(model: Probe, settings: Settings, layer: str | None) -> Iterator[Features]:
    """One public call: the settings' CPU threads and the tap at `layer` (default the
    representation), which is where the layer name is checked."""
    threads = settings.threads if model.input_size <= SMALL_INPUT else None
    with cpu_threads(threads, model.device), model.tap(layer) as features:
        yield features


def seconds_per_step(model: Probe, layer: str | None = None) -> float:
    """Measured seconds of one inversion step on one image at the model's input size
    on its device (after a warm-up run): what a page multiplies by the steps to say
    how long a run will take before it starts."""
    x = torch.rand(1, 3, model.input_size, model.input_size,
                   generator=torch.Generator().manual_seed(0))
    settings = Settings(steps=1, frame_every=1)
    invert(model, x, layer=layer, settings=settings)

    def run_seconds(steps: int) -> float:
        start = time.perf_counter()
        invert(model, x, layer=layer, settings=dataclasses.replace(settings, steps=steps))
        return time.perf_counter() - start
    # the difference leaves out what a run pays once (the target's forward, a CUDA graph's capture)
    once, four = run_seconds(1), run_seconds(4)
    # a busy machine can time the longer run shorter: then 4 steps, a last forward and the target's
    return (four - once) / 3 if four > once else four / 5.5


LossAndGrad = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
# one capture at a time in a process: two runs side by side capture in turn
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def _own_stream(device: torch.device, graph: bool) -> Iterator[None]:
    """With graphs (on CUDA), run on a stream of this run's own (a capture needs one, and
    another thread's work on the default stream is then no part of it)."""
    if not graph:
        yield
        return
    with torch.cuda.device(device):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)


def _loss_and_grad(objective: Objective, features: Features, like: torch.Tensor,
                   graph: bool) -> LossAndGrad:
    """x -> (per-image loss, its gradient with respect to x), for images shaped like
    `like`. With `graph` (on CUDA, inside _own_stream), one captured graph replayed per
    step: a step of a few images is bound by kernel launches (a 224 px ResNet-50: 2-3x
    faster). A model that cannot be captured (it reads values on the CPU) runs eagerly."""
    def eager(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            xi = x.detach().requires_grad_()
            loss = objective(features(xi))
            grad, = torch.autograd.grad(loss.sum(), xi)
        return loss.detach(), grad

    if not graph:
        return eager
    static = like.detach().clone().requires_grad_()
    for _ in range(2):     # cuDNN's and the objective's first-call set-up, not captured
        eager(static)
    cuda_graph = torch.cuda.CUDAGraph()
    try:
        # thread_local: another thread's work meanwhile does not spoil this capture
        with _CAPTURE_LOCK, torch.enable_grad(), torch.cuda.graph(
                cuda_graph, stream=torch.cuda.current_stream(), capture_error_mode="thread_local"):
            loss = objective(features(static))
            grad, = torch.autograd.grad(loss.sum(), static)
    except RuntimeError:
        return eager

    def replay(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            static.copy_(x)
        cuda_graph.replay()
        return loss.detach().clone(), grad   # the graph's outputs are overwritten by the next step
    return replay


def optimize(model: Probe, objective: Objective, start: torch.Tensor, settings: Settings,
             features: Features, progress: Reporter | None = None,
             record: dict | None = None) -> InversionResult:
    """Minimise objective(features(x)) over pixels x from `start`.

    Each step: features at the tap (`features`, from Probe.tap), per-image loss,
    gradient with respect to the pixels, step rule, constraint (L2 ball of radius
    settings.eps around `start`, then [0, 1]). Progress: an Event at every step
    (done = step, with the mean loss), with the images as preview on frame steps
    (step 0, the seed, first; every settings.frame_every steps; the last step).
    record: what the result's settings say besides settings.record(). Runs on the
    caller's CPU threads (the public functions set them).
    """
    device = model.device
    steps = settings.steps
    x = start.detach().to(device, torch.float32).clone()
    constrain = Constraint(x.clone(), settings.eps)
    constrain(x)
    step_rule = settings.step_rule()
    step_rule.start(x, steps)
    every = settings.frame_every or max(1, steps // 10)
    frames: list[tuple[int, torch.Tensor]] = []
    curve: list[torch.Tensor] = []
    graph = settings.cuda_graph and steps > 0 and device.type == "cuda"
    with model.fake_relu(settings.fake_relu), _own_stream(device, graph):
        loss_and_grad = _loss_and_grad(objective, features, x, graph)
        for step in range(steps + 1):
            last = step == steps
            if last:
                with torch.no_grad():
                    loss = objective(features(x))
            else:
                loss, grad = loss_and_grad(x)
            curve.append(loss)
            mean = loss.mean()
            frame = x.detach().clone() if step % every == 0 or last else None
            if not last:
                with torch.no_grad():
                    step_rule(x, grad, step)
                    constrain(x)
            # read the loss and frame once the step is queued: a GPU works on meanwhile
            shot = None if frame is None else frame.cpu()
            if shot is not None:
                frames.append((step, shot))
            loss_now = float(mean)
            report(progress, step, steps, f"step {step}/{steps}, loss {loss_now:.4f}", loss_now,
                   shot)
    return InversionResult(images=x.detach().cpu(), loss=curve[-1].float().cpu(),
                           loss_curve=torch.stack(curve).float().cpu(), frames=frames,
                           settings=dict(record or {}))


def _seed_label(seed: str | torch.Tensor) -> str:
    return seed if isinstance(seed, str) else "images"


# ------------------------------------------------------------------ public API

def invert(model: Probe, target: torch.Tensor, seed: str | torch.Tensor = "noise",
           steps: int | None = None, progress: Reporter | None = None, *,
           layer: str | None = None, method: str | None = None, generator_seed: int = 0,
           settings: Settings | None = None, **options: Any) -> InversionResult:
    """Find images whose features at `layer` match those of the target images.

    target: (N, 3, H, W) or (3, H, W) in [0, 1]; each is inverted from
    its own seed ("noise", "gray", or images). layer: any tap name (default
    the penultimate representation). method "adam" (fast, default steps 150)
    or "normgrad" (the paper's L2-normalised step 0.1, default 1000 steps).
    settings: a Settings (default Settings.for_task("invert", method)); options
    change its fields (step_size, eps, fake_relu, threads, frame_every,
    cuda_graph). The result's loss is ||R(x') - R(x)||_2 / ||R(x)||_2 per image.
    """
    targets = _as_batch(target, "target")
    s = _settings("invert", settings, method, steps, options, model)
    layer = layer or model.representation_layer
    with _run(model, s, layer) as features:
        with torch.no_grad():
            objective = representation_distance(features(targets.to(model.device)))
        start = start_images(seed, targets.shape[0], targets.shape[1:], generator_seed,
                             model.device)
        return optimize(model, objective, start, s, features, progress,
                        {"task": "invert", "model": model.name, "seed": _seed_label(seed),
                         "generator_seed": generator_seed, "n": targets.shape[0],
                         **s.record(layer)})


def visualize_feature(model: Probe, index: int | Sequence[int], seed: str | torch.Tensor = "noise",
                      steps: int | None = None, method: str | None = None,
                      progress: Reporter | None = None, *, layer: str | None = None,
                      generator_seed: int = 0, size: int | None = None,
                      settings: Settings | None = None, **options: Any) -> InversionResult:
    """Images that maximise component(s) `index` of the representation (or of
    channel `index` of a conv layer), one image per index, from noise or seed
    images. The result's loss is minus the activation reached. settings and
    options as for `invert` (defaults: Settings.for_task("visualize", method))."""
    indices = [int(i) for i in torch.as_tensor(index).flatten().tolist()]
    s = _settings("visualize", settings, method, steps, options, model)
    layer = layer or model.representation_layer
    with _run(model, s, layer) as features:
        _check_index(model, layer, indices)
        side = size or model.input_size
        start = start_images(seed, len(indices), (3, side, side) if isinstance(seed, str)
                             else _as_batch(seed, "seed").shape[1:], generator_seed, model.device)
        return optimize(model, feature_activation(indices), start, s, features, progress,
                        {"task": "visualize", "model": model.name, "index": indices,
                         "seed": _seed_label(seed), "generator_seed": generator_seed,
                         **s.record(layer)})


def add_feature(model: Probe, images: torch.Tensor, index: int | Sequence[int],
                steps: int | None = None, method: str | None = None,
                progress: Reporter | None = None, *, layer: str | None = None,
                settings: Settings | None = None, **options: Any) -> InversionResult:
    """Push component(s) `index` up starting from real images, so that the
    feature appears in them (one index for all images, or one per image).
    loss_curve[0] is minus the starting activation, loss minus the final one.
    settings and options as for `invert` (defaults: Settings.for_task("add", method))."""
    x = _as_batch(images)
    indices = [int(i) for i in torch.as_tensor(index).flatten().tolist()]
    if len(indices) not in (1, x.shape[0]):
        raise ValueError(f"give one index or one per image ({x.shape[0]}), not {len(indices)}")
    s = _settings("add", settings, method, steps, options, model)
    layer = layer or model.representation_layer
    with _run(model, s, layer) as features:
        _check_index(model, layer, indices)
        return optimize(model, feature_activation(indices), x, s, features, progress,
                        {"task": "add", "model": model.name, "index": indices,
                         "n": x.shape[0], **s.record(layer)})


def interpolate(model: Probe, a: torch.Tensor, b: torch.Tensor, frames: int = 10,
                seed: str | torch.Tensor = "mix", steps: int | None = None,
                method: str | None = None, progress: Reporter | None = None, *,
                layer: str | None = None, generator_seed: int = 0,
                settings: Settings | None = None, **options: Any) -> InversionResult:
    """Invert (1 - t) R(a) + t R(b) for `frames` values of t from 0 to 1.

    seed "mix" starts frame t from (1 - t) a + t b in pixel space (the paper's
    choice); "noise", "gray" or images start every frame from that. Frame 0
    reconstructs R(a) and the last R(b). settings["t"] lists the t values.
    settings and options as for `invert` (defaults: Settings.for_task("interpolate", method)).
    """
    if frames < 2:
        raise ValueError("interpolation needs at least 2 frames")
    xa, xb = _as_batch(a, "a"), _as_batch(b, "b")
    if xa.shape[0] != 1 or xb.shape != xa.shape:
        raise ValueError(f"a and b must be one image each of the same shape, not "
                         f"{tuple(xa.shape)} and {tuple(xb.shape)}")
    s = _settings("interpolate", settings, method, steps, options, model)
    layer = layer or model.representation_layer
    t = torch.linspace(0, 1, frames)
    with _run(model, s, layer) as features:
        with torch.no_grad():
            ends = features(torch.cat([xa, xb]).to(model.device)).flatten(1).float()
        tc = t.to(ends.device)[:, None]
        objective = representation_distance((1 - tc) * ends[0] + tc * ends[1])
        if isinstance(seed, str) and seed == "mix":
            tv = t.view(-1, 1, 1, 1)
            start = ((1 - tv) * xa.cpu() + tv * xb.cpu()).to(model.device)
        else:
            start = start_images(seed, frames, xa.shape[1:], generator_seed, model.device)
        result = optimize(model, objective, start, s, features, progress,
                          {"task": "interpolate", "model": model.name,
                           "seed": _seed_label(seed), "generator_seed": generator_seed,
                           "frames": frames, **s.record(layer)})
    result.settings["t"] = t.tolist()
    return result


def representations(model: Probe, data: Any, batch_size: int = 256,
                    layer: str | None = None, progress: Reporter | None = None) -> torch.Tensor:
    """Features (N, D) on the CPU of every image in `data`, in its order.

    data: anything core.data.batches reads (a (N, 3, H, W) tensor, an
    ImageTensorDataset, a Dataset of (x, y), a list of data.Sample, or an
    iterable of x or (x, y) batches). layer: default the penultimate
    representation (other taps are flattened).
    """
    sizes = batch_sizes(data, batch_size)
    total = sum(sizes) if sizes is not None else None
    out, done = [], 0
    with model.tap(layer) as features, torch.no_grad():
        # the order of the data is the answer's order (top-activating indices)
        for x, _ in batches(data, batch_size, model.device, shuffle_seed=None):
            check_input_size(x, model)
            out.append(features(x).flatten(1).float().cpu())
            done += x.shape[0]
            report(progress, done, total or done, f"representations: {done} images")
    if not out:
        raise ValueError("representations() got no images")
    return torch.cat(out)


class TopActivations(NamedTuple):
    indices: torch.Tensor   # (k,) positions in the data, most activating first
    values: torch.Tensor    # (k,) the component's value at those positions


def top_activating(source: torch.Tensor | tuple[Probe, Any], index: int, k: int = 9,
                   bottom: bool = False, batch_size: int = 256) -> TopActivations:
    """The k images where component `index` is largest (bottom=True: smallest).

    source: representations (N, D), or (model, data) to compute them with
    `representations`. Sorted by the component, descending (ascending for
    bottom); ties keep data order.
    """
    reps = source if torch.is_tensor(source) else representations(*source, batch_size=batch_size)
    if reps.ndim != 2:
        raise ValueError(f"representations must be (N, D), not {tuple(reps.shape)}")
    if not 0 <= index < reps.shape[1]:
        raise ComponentError(f"component {index} is out of range: the representation has "
                             f"{reps.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be positive, not {k}")
    column = reps[:, index]
    order = torch.sort(column, descending=not bottom, stable=True).indices[:k]
    return TopActivations(order, column[order])


def explain_misclassification(model: Probe, image: torch.Tensor, label: int,
                              steps: int | None = None, method: str | None = None,
                              progress: Reporter | None = None, *, top: int = 5,
                              settings: Settings | None = None, **options: Any) -> dict[str, Any]:
    """What makes the model predict what it predicts for `image`.

    contributions[i] = W[pred, i] * R(x)_i, the share of component i in the
    predicted class's logit (W the last linear layer); the arg-max component
    is then increased with `add_feature` to show what the model "sees".
    Returns a dict: label, predicted, misclassified, probabilities (C,),
    contributions (D,), component, contribution, top_components (the `top`
    largest), image (3, H, W) after adding the component, and result (the
    InversionResult of that addition). settings and options as for `add_feature` (defaults:
    Settings.for_task("explain", method)).
    """
    x = _as_batch(image)
    if x.shape[0] != 1:
        raise ValueError("explain_misclassification takes one image")
    s = _settings("explain", settings, method, steps, options, model)
    classifier = model.head
    with cpu_threads(s.threads, model.device), torch.no_grad():
        rep = model.representation(x.to(model.device)).float()[0]
        logits = model(x.to(model.device)).float()[0]
    predicted = int(logits.argmax())
    contributions = (classifier.weight[predicted].detach().float() * rep).cpu()
    component = int(contributions.argmax())
    result = add_feature(model, x, component, progress=progress, settings=s)
    return {"label": int(label), "predicted": predicted, "misclassified": predicted != int(label),
            "probabilities": logits.softmax(0).cpu(), "contributions": contributions,
            "component": component, "contribution": float(contributions[component]),
            "top_components": contributions.topk(min(top, contributions.numel())).indices.tolist(),
            "image": result.images[0], "result": result}


# ------------------------------------------------------------ quality measures

def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image ((N,) for batches, a scalar
    for single images; on the CPU); identical images give inf."""
    x, y, single = _pair(a, b)
    mse = (x - y).pow(2).flatten(1).mean(1)
    out = (10 * torch.log10(data_range ** 2 / mse)).float()
    return out[0] if single else out


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
         window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, in float64 internally.

    Gaussian window `window` x `window`, std `sigma`, K1 = 0.01, K2 = 0.03,
    population (co)variances, statistics at every position where the window
    fits inside the image ("valid"), averaged over positions and channels. This
    equals skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=0).
    """
    x, y, single = _pair(a, b)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {window}px window")
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2)
                  / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(1).float()
    return out[0] if single else out


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    single = a.ndim == 3
    # on the CPU in float64: exact, and MPS has no float64
    x = (a[None] if single else a).detach().cpu().double()
    y = (b[None] if single else b).detach().cpu().double()
    return x, y, single


# --------------------------------------------------------------------- helpers

def _check_index(model: Probe, layer: str, indices: list[int]) -> None:
    if not indices:
        raise ComponentError("name at least one component")
    shape = model.layer_shapes().get(layer)
    size = shape[0] if shape else None
    bad = [i for i in indices if i < 0 or (size is not None and i >= size)]
    if bad:
        raise ComponentError(f"component {bad[0]} is out of range: {layer} has {size} "
                             "components")


# ======================================================================= jobs

def _task_settings(task: str, method: str, steps: int | None, probe: Probe) -> Settings:
    return Settings.for_task(task, method, steps, input_size=probe.input_size)


def _with_frames_at_ends(settings: Settings) -> Settings:
    """Only the seed and the result as frames: a batch shown as one grid."""
    return dataclasses.replace(settings, frame_every=settings.steps)


def inversion_job(load: jobs.Loader, spec: str, image: Any, layer: str | None = None,
                  method: str = "adam", steps: int | None = None, seed: str = "noise",
                  generator_seed: int = 0) -> jobs.Job:
    """Reconstruct `image` (a gallery key or pixels) from model `spec`'s representation
    (Engstrom et al. 2019)."""
    probe = load(spec)
    image, named = jobs.picture(image, probe.input_size)
    args = {"spec": spec, "image": named, "layer": layer, "method": method,
            "steps": steps, "seed": seed, "generator_seed": generator_seed}
    layer = layer or probe.representation_layer
    settings = _task_settings("invert", method, steps, probe)
    inputs = {"model": probe.identity(), "image": images.image_id(image), "layer": layer,
              "method": method, "steps": settings.steps, "step_size": settings.step_size,
              "seed": seed, "generator_seed": generator_seed, "eps": settings.eps}

    def run(progress: Reporter) -> dict:
        x = images.to_tensor(image)[None]
        res = invert(probe, x, seed, progress=progress, layer=layer,
                               generator_seed=generator_seed, settings=settings)
        out = res.to_dict()
        out.update(psnr=float(psnr(res.images, x)[0]),
                   ssim=float(ssim(res.images, x)[0]),
                   l2=float((res.images - x).flatten().norm()))
        return out
    return jobs.make("inversion", inputs, run, f"inversion of {inputs['image'][:6]} by {probe.name}",
                args)


def quality_job(load: jobs.Loader, spec: str, method: str = "adam", steps: int | None = None) -> jobs.Job:
    """Mean reconstruction quality over the 20 shipped samples of the model's data set
    (CIFAR-10 test or ImageNet validation images; batched)."""
    args = {"spec": spec, "method": method, "steps": steps}
    probe = load(spec)
    pictures = [images.fit(s.image, probe.input_size)
                for s in data.samples(probe.kind) or data.cifar_samples()]
    settings = _with_frames_at_ends(_task_settings("invert", method, steps, probe))
    inputs = {"model": probe.identity(), "images": [images.image_id(p) for p in pictures],
              "method": method, "steps": settings.steps, "step_size": settings.step_size,
              "seed": "noise", "generator_seed": 0, "layer": probe.representation_layer}

    def run(progress: Reporter) -> dict:
        x = torch.stack([images.to_tensor(p) for p in pictures])
        res = invert(probe, x, progress=progress, settings=settings)
        p, s = psnr(res.images, x), ssim(res.images, x)
        return {"psnr": p, "ssim": s, "loss": res.loss, "images": res.images,
                "mean_psnr": float(p.mean()), "mean_ssim": float(s.mean()),
                "mean_loss": float(res.loss.mean())}
    return jobs.make("inversion_quality", inputs, run,
                f"reconstruction quality of {probe.name} on the 20 samples", args)


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


def feature_grid_job(load: jobs.Loader, spec: str, indices: list[int], method: str = "adam",
                     steps: int | None = None) -> jobs.Job:
    """One visualisation per feature index, maximised from noise (batched)."""
    args = {"spec": spec, "indices": list(indices), "method": method, "steps": steps}
    probe = load(spec)
    settings = _with_frames_at_ends(_task_settings("visualize", method, steps, probe))
    inputs = {"model": probe.identity(), "indices": list(indices), "method": method,
              "steps": settings.steps, "step_size": settings.step_size, "seed": "noise",
              "generator_seed": 0, "fake_relu": settings.fake_relu}

    def run(progress: Reporter) -> dict:
        res = visualize_feature(probe, indices, "noise", progress=progress,
                                          settings=settings)
        return {"indices": list(indices), "images": res.images, "activation": -res.loss}
    return jobs.make("feature_grid", inputs, run,
                f"visualising {len(indices)} feature{'s' * (len(indices) != 1)} of {probe.name}",
                args)


def _images_in_order(analysis: str, folder: str | None, probe: Probe,
                     where: data.ImageFolder | None = None) -> tuple[dict, Any]:
    """The test set (or an image folder at the model's input size, `where` if the
    caller built it already) read in its own order: how results of every image name
    it, and a maker of the data set."""
    source = where or jobs.image_folder(analysis, folder, probe)
    if source is None:
        return jobs.test_images(None), lambda: data.cifar10("test")
    return {"folder": source.identity(), "order": "files"}, lambda: source


def test_outputs_job(load: jobs.Loader, spec: str, folder: str | None = None, *,
                     where: data.ImageFolder | None = None) -> jobs.Job:
    """Representation (float16), prediction and label of every test image (or image of
    `folder`; `where`: that folder, already built), in its order (top_images_job gives
    indices into it)."""
    probe = load(spec)
    named, images = _images_in_order("Reading the images' representations", folder, probe, where)
    inputs = {"model": probe.identity(), "images": named}

    def run(progress: Reporter) -> dict:
        test = images()
        reps = representations(probe, test, progress=progress)
        with torch.no_grad():
            preds = probe.head(reps.to(probe.device)).argmax(1).cpu()
        return {"reps": reps.half(), "predicted": preds.to(torch.int16),
                "labels": test.labels.to(torch.int16)}
    return jobs.make("test_outputs", inputs, run, f"representations of the test set by {probe.name}",
                {"spec": spec, **({"folder": folder} if folder else {})})


def top_images_job(load: jobs.Loader, spec: str, indices: list[int], k: int = 9,
                   folder: str | None = None, *, where: data.ImageFolder | None = None) -> jobs.Job:
    """Indices into the test set (class-major order) or the image `folder` (its files'
    order; `where`: that folder, already built, which the page shows) of the k most and
    least activating images of each feature: numbers only, shippable without the data."""
    probe = load(spec)
    # the folder is listed and hashed once, for this job and the one it needs
    where = where or jobs.image_folder("Finding top-activating images", folder, probe)
    named, _ = _images_in_order("Finding top-activating images", folder, probe, where)
    inputs = {"model": probe.identity(), "indices": list(indices), "k": k, "images": named}

    def run(progress: Reporter, outputs: dict) -> dict:
        r = outputs["reps"].float()
        out = {}
        for i in indices:
            top = top_activating(r, i, k)
            bottom = top_activating(r, i, k, bottom=True)
            out[str(i)] = {"top": top.indices.to(torch.int32), "top_values": top.values,
                           "bottom": bottom.indices.to(torch.int32),
                           "bottom_values": bottom.values}
        return out
    return jobs.make("top_images", inputs, run, f"top-activating images for {probe.name}",
                {"spec": spec, "indices": list(indices), "k": k,
                 **({"folder": folder} if folder else {})},
                {"outputs": test_outputs_job(load, spec, folder, where=where)})


def add_feature_job(load: jobs.Loader, spec: str, image: Any, index: int, method: str = "adam",
                    steps: int | None = None) -> jobs.Job:
    probe = load(spec)
    image, named = jobs.picture(image, probe.input_size)
    args = {"spec": spec, "image": named, "index": int(index),
            "method": method, "steps": steps}
    settings = _task_settings("add", method, steps, probe)
    inputs = {"model": probe.identity(), "image": images.image_id(image), "index": int(index),
              "method": method, "steps": settings.steps, "step_size": settings.step_size,
              "fake_relu": settings.fake_relu, "eps": settings.eps}

    def run(progress: Reporter) -> dict:
        x = images.to_tensor(image)[None]
        res = add_feature(probe, x, int(index), progress=progress, settings=settings)
        with torch.no_grad():
            classes = probe(torch.cat([x, res.images]).to(probe.device)).argmax(1).tolist()
        out = res.to_dict()
        out.update(before=float(-res.loss_curve[0, 0]), after=float(-res.loss[0]),
                   predicted_before=classes[0], predicted=classes[1])
        return out
    return jobs.make("add_feature", inputs, run, f"adding feature {index} with {probe.name}", args)


def interpolation_job(load: jobs.Loader, spec: str, image_a: Any, image_b: Any,
                      frames: int = 10, method: str = "adam", steps: int | None = None
                      ) -> jobs.Job:
    probe = load(spec)
    (image_a, named_a), (image_b, named_b) = (jobs.picture(i, probe.input_size)
                                              for i in (image_a, image_b))
    args = {"spec": spec, "image_a": named_a, "image_b": named_b, "frames": frames,
            "method": method, "steps": steps}
    settings = _task_settings("interpolate", method, steps, probe)
    inputs = {"model": probe.identity(), "a": images.image_id(image_a),
              "b": images.image_id(image_b), "frames": frames, "method": method,
              "steps": settings.steps, "step_size": settings.step_size, "seed": "mix",
              "eps": settings.eps}

    def run(progress: Reporter) -> dict:
        res = interpolate(probe, images.to_tensor(image_a)[None],
                          images.to_tensor(image_b)[None], frames, seed="mix",
                          progress=progress, settings=settings)
        return res.to_dict()
    return jobs.make("interpolation", inputs, run, f"interpolating with {probe.name}", args)


def explain_job(load: jobs.Loader, spec: str, image: Any, label: int, method: str = "adam",
                steps: int | None = None) -> jobs.Job:
    probe = load(spec)
    image, named = jobs.picture(image, probe.input_size)
    args = {"spec": spec, "image": named, "label": int(label),
            "method": method, "steps": steps}
    settings = _task_settings("explain", method, steps, probe)
    inputs = {"model": probe.identity(), "image": images.image_id(image), "label": int(label),
              "method": method, "steps": settings.steps, "step_size": settings.step_size}

    def run(progress: Reporter) -> dict:
        out = explain_misclassification(probe, images.to_tensor(image), int(label),
                                                  progress=progress, settings=settings)
        out["result"] = out["result"].to_dict()
        return out
    return jobs.make("explain", inputs, run, f"explaining {probe.name}'s prediction", args)

# --------------------------------------------------------------- the pages' jobs

def inversion_steps(s: Mapping[str, Any]) -> int:
    """The steps of an inversion view: the chosen number, else the optimiser's default."""
    return int(s["inv_steps"]) if s.get("inv_steps") else DEFAULTS["invert"][s["inv_method"]][0]


def inversion_jobs(load: jobs.Loader, s: Mapping[str, Any],
                   uploads: Mapping[str, Any] | None = None) -> list[jobs.Job]:
    """The two reconstructions of the chosen image (none if it is not found)."""
    out = []
    for m in (s["a"], s["b"]):
        image = jobs.view_image(s["inv_img"], uploads, load(m).input_size)
        if image is None:
            return []
        out.append(inversion_job(load, m, image, s["inv_layer"], s["inv_method"],
                                 inversion_steps(s), "noise", int(s["inv_seed"])))
    return out


def quality_jobs(load: jobs.Loader, s: Mapping[str, Any]) -> list[jobs.Job]:
    return [quality_job(load, m) for m in (s["a"], s["b"])]


def inversion_view_jobs(load: jobs.Loader, s: Mapping[str, Any]) -> list[jobs.Job]:
    return inversion_jobs(load, s) + quality_jobs(load, s)


def with_component(load: jobs.Loader, s: Mapping[str, Any], index: int) -> list[str]:
    """Models A and B, those whose representation has component `index` (features are
    numbered in model A's; a narrower B has fewer)."""
    return [m for m in (s["a"], s["b"]) if index < load(m).representation_size]


def feature_class(probe: Probe, index: int) -> str:
    """The class a component of the representation weighs most towards (last layer)."""
    return probe.classes[int(probe.head.weight.detach()[:, index].argmax())]


def misclassified_test(outputs: Mapping[str, Any], n: int = 40) -> tuple[list[int], int]:
    """n of the test images a model gets wrong (a seeded draw), from its test_outputs
    job's result, and how many it gets wrong in all."""
    wrong = np.nonzero((outputs["predicted"] != outputs["labels"]).numpy())[0]
    return np.random.default_rng(0).permutation(wrong)[:n].tolist(), len(wrong)


def top_contributions(explained: Mapping[str, Any], k: int = 10) -> dict[str, list]:
    """The k components contributing most to an explained prediction, largest first."""
    contrib = np.asarray(explained["contributions"])
    top = np.argsort(contrib)[::-1][:k]
    return {"feature": [str(i) for i in top], "contribution": [float(contrib[i]) for i in top]}


def misclassified_samples(probe: Probe) -> list[tuple[data.Sample, int]]:
    """The shipped samples of the model's data set it gets wrong, with its predictions."""
    return [(s, p) for s, p in zoo.sample_predictions(probe) if p != s.label]


def manipulation_jobs(load: jobs.Loader, s: Mapping[str, Any],
                      uploads: Mapping[str, Any] | None = None) -> list[jobs.Job]:
    """The jobs of the open tab (a deck slide shows one tab)."""
    probe = load(s["a"])
    feats = browser_features(probe)
    tab = s["mf_tab"]
    if tab == "Feature browser":
        feat = int(s["mf_feat"][1:]) if s["mf_feat"].startswith("f") else feats[0]
        out = [feature_grid_job(load, s["a"], feats)]
        out += [feature_grid_job(load, m, [feat]) for m in with_component(load, s, feat)]
        folder = s.get("mf_folder") or None
        if probe.kind != "cifar10" and not folder:
            return out                       # no images to rank: the tab asks for a folder
        return out + [top_images_job(load, s["a"], feats, folder=folder)]

    def image(key: str, m: str) -> Any | None:
        return jobs.view_image(key, uploads, load(m).input_size)
    if tab == "Feature addition":
        index = s["mf_add_index"] if s["mf_add_index"] is not None else (
            int(s["mf_feat"][1:]) if s["mf_feat"].startswith("f") else feats[0])
        added = [(m, image(s["mf_add_img"], m)) for m in with_component(load, s, int(index))]
        return [] if any(a is None for _, a in added) else [
            add_feature_job(load, m, a, int(index)) for m, a in added]
    if tab == "Interpolation":
        ends = [(m, image(s["mf_ia"], m), image(s["mf_ib"], m)) for m in (s["a"], s["b"])]
        return [] if any(ia is None or ib is None for _, ia, ib in ends) else [
            interpolation_job(load, m, ia, ib) for m, ia, ib in ends]
    if s["mf_mis"]:
        found = data.image_for(s["mf_mis"], uploads, probe.input_size)
        return [] if found is None or found[2] is None else [
            explain_job(load, s["a"], image(s["mf_mis"], s["a"]), found[2])]
    wrong = misclassified_samples(probe)   # the tab's first image without the data set
    return [explain_job(load, s["a"], wrong[0][0].key, wrong[0][0].label)] if wrong else []


# -------------------------------------------------------------- command line

def _cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True,
                   help="model(s) to invert with (repeat for several)")
    p.add_argument("--image", action="append", required=True,
                   help="an image file, or a gallery key: foolbox-03, photo-astronaut, test-17")
    p.add_argument("--layer", help="tap to match (default: the penultimate representation)")
    p.add_argument("--method", default="adam", choices=list(METHODS))
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", help="folder for PNG strips (original + reconstructions)")


def _cli(args: argparse.Namespace) -> dict:
    """Reconstruct images from their representations (stored; PNGs with --out)."""
    from pathlib import Path

    from core.figures import exports
    load = zoo.loader(args.device)
    out: dict = {}
    for ref in args.image:
        path = Path(ref).expanduser()
        if path.is_file():
            image, title = images.load_upload(path.read_bytes()), path.name
            named: Any = image
        else:
            found = data.image_for(ref)
            if found is None:
                raise RobustLensError(f"{ref!r} is neither an image file nor a gallery key")
            image, title, named = found[0], found[1], ref
        results = [run_printed(inversion_job(load, m, named, args.layer, args.method,
                                             args.steps, "noise", args.seed))
                   for m in args.model]
        out[title] = {m: {k: r[k] for k in ("psnr", "ssim", "l2")} | {"loss": float(r["loss"][0])}
                      for m, r in zip(args.model, results)}
        if args.out:
            out[title]["png"] = exports.strip_file(
                args.out, Path(title).stem, [image] + [r["images"][0] for r in results],
                {"models": args.model, "image": title})
    return out


# ---------------------------------------------------------------------- sweeps

def _inversion_grid(options: Mapping[str, Any], models: list[str], load: jobs.Loader
                    ) -> list[jobs.Job]:
    """inversion: {images: [foolbox-00, ...], layer, method, steps}: each image
    reconstructed by each model."""
    from core.jobs import sweep
    keys = sweep.listed(options.get("images", "foolbox-00"), "inversion.images")
    for key in keys:
        sweep.image(key, 32)               # an unknown key is named before anything runs
    return [inversion_job(load, m, key, options.get("layer"), options.get("method", "adam"),
                          options.get("steps"))
            for m, key in itertools.product(models, keys)]


def _features_grid(options: Mapping[str, Any], models: list[str], load: jobs.Loader
                   ) -> list[jobs.Job]:
    """features: {indices: [0, 1, 2], method, steps}: the features visualised in each model."""
    from core.jobs import sweep
    indices = [int(i) for i in sweep.listed(options.get("indices", [0]), "features.indices")]
    return [feature_grid_job(load, m, indices, options.get("method", "adam"),
                             options.get("steps")) for m in models]


# ---------------------------------------------------------------------- pages

INVERSION_SETTINGS = (
    *image_settings("inv"),
    Setting("inv_layer", "avgpool", "Layer", help="The representation to match: the "
            "penultimate layer in the paper, or any earlier tap."),
    Setting("inv_method", "adam", "Optimiser", METHODS,
            {"adam": "fast (Adam, cosine schedule)",
             "normgrad": "paper (normalised gradient, step 0.1)"}),
    Setting("inv_steps", None, "Steps", bounds=(10, 10_000),
            help="Empty: the optimiser's own default."),
    Setting("inv_seed", 0, "Seed", bounds=(0, 10_000),
            help="Seed of the starting noise (0.5 + N(0,1)/20)."),
)
MANIPULATION_TABS = ("Feature browser", "Feature addition", "Interpolation", "Misclassification")
MANIPULATION_SETTINGS = (
    Setting("mf_tab", "Feature browser", "Tab", MANIPULATION_TABS),
    Setting("mf_feat", "", "Feature"),
    Setting("mf_add_img", "foolbox-00", "Image"),
    Setting("mf_add_index", None, "Feature to add", bounds=(0, 100_000),
            help="A component of the representation; empty: the feature chosen in the "
                 "browser."),
    Setting("mf_ia", "foolbox-00", "Image a"),
    Setting("mf_ib", "foolbox-03", "Image b"),
    Setting("mf_t", 0, "Frame", bounds=(0, 100)),
    Setting("mf_mis", "", "Misclassified image"),
    Setting("mf_folder", "", "Image folder", help=FOLDER_HELP + " The top-activating "
            "images are found among its images.", server_path=True),
)
PAPER = "Engstrom et al., Adversarial Robustness as a Prior for Learned Representations, 2019"

register(Analysis(
    "inversion",
    kinds={
        "inversion": jobs.Kind(inversion_job, cost=jobs.optimisation_cost),
        "inversion_quality": jobs.Kind(quality_job, cost=jobs.optimisation_cost),
        "feature_grid": jobs.Kind(feature_grid_job, cost=jobs.optimisation_cost),
        "test_outputs": jobs.Kind(test_outputs_job, shipped=False, reads=("test",)),
        "top_images": jobs.Kind(top_images_job, reads=("test",)),
        # 2: within L2 3.0 of the image (unconstrained before); reports the class before and after
        "add_feature": jobs.Kind(add_feature_job, version=2, cost=jobs.optimisation_cost),
        # 2: within L2 4.0 of the pixel mix (unconstrained before)
        "interpolation": jobs.Kind(interpolation_job, version=2, cost=jobs.optimisation_cost),
        "explain": jobs.Kind(explain_job, cost=jobs.optimisation_cost),
    },
    commands=(Command("invert", _cli_arguments, _cli),),
    sweeps=(Sweep("inversion", _inversion_grid), Sweep("features", _features_grid)),
    pages=(Page("inversion", "pages/inversion.py", "Representation inversion",
                ":material/flip:", 3, INVERSION_SETTINGS, inversion_view_jobs,
                summary="Click an image: each model rebuilds it from its representation alone",
                about="Each model gets only the image's representation R(x) (the penultimate "
                      "layer) and searches, from gray noise, for an input x' whose representation "
                      "matches: minimise ‖R(x') − R(x)‖ / ‖R(x)‖ by gradient descent in pixel "
                      "space, with no image prior. A robust model's reconstruction looks like the "
                      "image; a standard model's does not.",
                paper=PAPER, cite="Engstrom et al., 2019"),
           Page("manipulation", "pages/manipulation.py", "Feature manipulation",
                ":material/tune:", 4, MANIPULATION_SETTINGS, manipulation_jobs,
                summary="Visualise, find, add and blend the features of a representation",
                about="Gradient descent in pixel space, with no image prior: a robust model's "
                      "representation is close to human-meaningful features, a standard model's is"
                      " not. The last ReLU is an identity in the backward pass (\"fake ReLU\").",
                paper=PAPER, cite="Engstrom et al., 2019")),
))
