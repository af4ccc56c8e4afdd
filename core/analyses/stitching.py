"""Model stitching: the front of one network, a 1x1 convolution, the end of another.

Balogh & Jelasity (ICML 2023) stitch CIFAR ResNet-18s at a stage output: the
front of model A up to the stage, a 1x1 convolution with bias (no norm, no
activation), and the rest of model B after the same stage. Both donors stay
frozen. Task-loss matching trains the stitching layer on the clean task loss
(Adam, lr 1e-3, weight decay 1e-4, batch 128, 30 epochs, lr x0.1 at 1/3 and
2/3); direct matching (their AAAI 2025 follow-up) fits it in closed form by
least squares to B's own activation at that stage, every pixel a sample.
The stitched network is then scored on clean and adversarial test images.

A stitched model is an ordinary nn.Module from [0, 1] images to logits, so
`core.attacks.pgd` and `core.attacks.accuracy` take it as they take a Probe.

Below the computation, the stitching matrix's analysis: its jobs (a cell, a donor's
accuracy, a whole matrix), their cost, its command line, sweep grids and page settings.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import argparse
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import data, jobs
from core.analyses import Analysis, Command, Page, Sweep, attacks, register
from core.analyses.cka import linear_cka
from core.analyses.unforeseen import JPEG, Gabor, Snow
from core.data import (ImageFolder, ImageTensorDataset, batch_sizes, batches, datasets,
                       require_labels)
from core.errors import IncompatibleModelError, RobustLensError, UnknownLayerError
from core.jobs.results import write_json
from core.jobs.runner import run_printed
from core.models import zoo
from core.models.probe import Probe, check_input_size
from core.progress import Event, Reporter, report, span
from core.views import DEFAULT_A, FOLDER_HELP, Setting

Loader = ImageTensorDataset | Iterable[tuple[torch.Tensor, torch.Tensor]]  # what data.batches reads

METHODS = ("task", "direct")
# the stitching layer's start: PyTorch's default (the paper's random), the identity, a
# random permutation of the channels (the paper's "perm"), or least squares ("direct",
# the paper's pseudo-inverse)
INITS = ("random", "identity", "permutation", "direct")
START_NAMES = {"random": "random", "identity": "identity", "permutation": "permutation",
               "direct": "least squares"}   # how the page, the cells and captions name them
# the stitcher's own adversarial training, as the paper's trainers define it: Madry's PGD
# on a share alpha of each batch, or TRADES with its weight beta
ADVERSARIAL = ("madry", "trades")


class StitchingError(RobustLensError, ValueError):
    """Two networks cannot be stitched as asked (shapes, widths, devices, data)."""


# ------------------------------------------------------------------ stitch points

def stitch_points(probe: Probe) -> list[str]:
    """Where `probe` can be cut: the stem, every residual block output, the
    pooled representation (every default tap on its chain except the logits)."""
    chain = probe.chain_layers()
    if not chain:
        return []
    return [n for n in probe.layers if n in chain and n != chain[-1]]


def stage_ends(probe: Probe) -> list[str]:
    """The stitch points at stage boundaries: the stem (the point before the first
    block) and the last block of each stage (a block is named STAGE.INDEX: layer1.2,
    block1.layer.3, layer.0.block.9). Networks of one family but different depths
    (ResNet-18 and -50, WRN-28-10 and WRN-70-16) have as many, in the same places."""
    ends: list[str] = []
    stem: str | None = None
    for name in stitch_points(probe):
        stage = re.sub(r"\.\d+$", "", name)
        if stage == name:            # not a block: the stem, or a point after the blocks
            if not ends:
                stem = name
            continue
        if ends and re.sub(r"\.\d+$", "", ends[-1]) == stage:
            ends[-1] = name
        else:
            ends.append(name)
    return ([stem] if stem else []) + ends


def common_stitch_points(front: Probe, end: Probe) -> list[str]:
    """Stitch points both models have with the same spatial size, in forward order."""
    fs, es = front.layer_shapes(), end.layer_shapes()
    ends = set(stitch_points(end))
    return [n for n in stitch_points(front) if n in ends and fs[n][1:] == es[n][1:]]


def _model_name(probe: Probe) -> str:
    return probe.name or type(probe.model).__name__


def _check_point(probe: Probe, layer: str, role: str) -> tuple[int, ...]:
    """The output shape of stitch point `layer`; UnknownLayerError if it is not one."""
    if not probe.has_chain():
        raise UnknownLayerError(f"the {role} model {_model_name(probe)} is not a chain of "
                                "stages, so it cannot be stitched")
    points = stitch_points(probe)
    if layer not in points:
        near = difflib.get_close_matches(str(layer), points, n=2)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise UnknownLayerError(
            f"{layer!r} is not a stitch point of the {role} model {_model_name(probe)}{hint}; "
            f"choose one of {', '.join(points)}")
    return probe.layer_shapes()[layer]


class LowRankStitch(nn.Module):
    """A 1x1 convolution of rank r: `down` to r channels (no bias), `up` to the end's
    width (with bias); the paper's start: both orthogonal, the bias zero."""

    def __init__(self, in_channels: int, out_channels: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_channels, rank, 1, bias=False)
        self.up = nn.Conv2d(rank, out_channels, 1, bias=True)
        nn.init.orthogonal_(self.down.weight)
        nn.init.orthogonal_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(h))


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


# ------------------------------------------------------------------ the model

class StitchedModel(nn.Module):
    """front[: layer] -> 1x1 conv (with bias) -> end[end_layer :].

    Input: NCHW images in [0, 1] (the front applies its own normalisation);
    output: the end model's logits. The donors are shared, not copied, and
    `train()` switches only the stitching layer: the donors keep their mode.
    """

    def __init__(self, front: Probe, end: Probe, layer: str,
                 end_layer: str | None = None, rank: int | None = None) -> None:
        super().__init__()
        end_layer = end_layer or layer
        fshape = _check_point(front, layer, "front")
        eshape = _check_point(end, end_layer, "end")
        if len(fshape) != len(eshape) or fshape[1:] != eshape[1:]:
            raise StitchingError(
                f"cannot stitch {_model_name(front)} at {layer} (output {_fmt_shape(fshape)}) "
                f"to {_model_name(end)} at {end_layer} (input {_fmt_shape(eshape)}): a 1x1 "
                "convolution keeps the spatial size, so it must match")
        if front.device != end.device:
            raise StitchingError(f"the front model is on {front.device} and the end model on "
                                 f"{end.device}; put both on one device")
        self.front, self.end = front, end
        self.layer, self.end_layer = layer, end_layer
        self.in_channels, self.out_channels = int(fshape[0]), int(eshape[0])
        widest = min(self.in_channels, self.out_channels)
        if rank is not None and not 1 <= rank <= widest:
            raise StitchingError(f"a low-rank stitch at {layer} takes a rank from 1 to {widest} "
                                 f"(the narrower of {self.in_channels} and "
                                 f"{self.out_channels} channels), not {rank}")
        self.rank = rank
        self.stitch = (nn.Conv2d(self.in_channels, self.out_channels, 1, bias=True)
                       if rank is None else LowRankStitch(self.in_channels, self.out_channels,
                                                          rank)).to(front.device)
        self.name = f"{_model_name(front)}[..{layer}] -> {_model_name(end)}[{end_layer}..]"
        self.training = False
        self.stitch.eval()

    @property
    def device(self) -> torch.device:
        return next(self.stitch.parameters()).device

    def train(self, mode: bool = True) -> "StitchedModel":
        """Switch the stitching layer only; the donors' modes are left alone."""
        self.training = mode
        self.stitch.train(mode)
        return self

    def transfer(self, h: torch.Tensor) -> torch.Tensor:
        """Map front activations (N, C, H, W) or pooled (N, C) to the end's space."""
        if h.ndim == 2:
            return self.stitch(h[:, :, None, None]).flatten(1)
        return self.stitch(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.front.tap(self.layer) as front_half:
            h = front_half(x)
        return self.end.forward_from(self.end_layer, self.transfer(h))

    def _square(self, start: str) -> None:
        if self.in_channels != self.out_channels:
            raise StitchingError(
                f"an {start} start needs equal widths; {self.layer} has {self.in_channels} "
                f"channels in the front and {self.out_channels} in the end")
        if self.rank is not None and self.rank < self.in_channels:
            raise StitchingError(f"an {start} start has full rank, {self.in_channels}; a "
                                 f"rank-{self.rank} stitch starts random or by least squares")

    def identity_init(self) -> "StitchedModel":
        """Weight = identity, bias = 0: for a model stitched to itself this is the model."""
        self._square("identity")
        return self.set_linear(torch.eye(self.in_channels), torch.zeros(self.out_channels))

    def permutation_init(self, seed: int = 0) -> "StitchedModel":
        """Weight = a seeded random permutation of the channels, bias = 0 (the paper's
        "perm")."""
        self._square("permutation")
        order = data.shuffled_order(self.in_channels, seed)
        return self.set_linear(torch.eye(self.in_channels)[order],
                               torch.zeros(self.out_channels))

    def set_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> "StitchedModel":
        """Load a linear map: weight (out, in) and bias (out,); a low-rank stitch takes
        the map's best rank-r approximation (its r largest singular values)."""
        weight = weight.to(self.device, torch.float32).reshape(self.out_channels,
                                                               self.in_channels)
        with torch.no_grad():
            if self.rank is None:
                self.stitch.weight.copy_(weight.reshape(self.stitch.weight.shape))
                self.stitch.bias.copy_(bias.reshape(-1))
                return self
            u, sv, vh = torch.linalg.svd(weight.double(), full_matrices=False)
            root = sv[:self.rank].sqrt()
            self.stitch.down.weight.copy_((root[:, None] * vh[:self.rank])
                                          .reshape(self.stitch.down.weight.shape))
            self.stitch.up.weight.copy_((u[:, :self.rank] * root)
                                        .reshape(self.stitch.up.weight.shape))
            self.stitch.up.bias.copy_(bias.reshape(-1))
        return self

    def linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stitch as one linear map: weight (out, in) and bias (out,)."""
        with torch.no_grad():
            if self.rank is None:
                return (self.stitch.weight.reshape(self.out_channels, self.in_channels).clone(),
                        self.stitch.bias.clone())
            up = self.stitch.up.weight.reshape(self.out_channels, self.rank)
            return (up @ self.stitch.down.weight.reshape(self.rank, self.in_channels),
                    self.stitch.up.bias.clone())

    def identity(self) -> dict:
        """What result keys use to name this stitched model."""
        return {"front": self.front.identity(), "end": self.end.identity(),
                "layer": self.layer, "end_layer": self.end_layer,
                **({"rank": self.rank} if self.rank is not None else {})}


# ------------------------------------------------------------------ data helpers

def _limit(max_batches: int | None, batch_size: int) -> int | None:
    """max_batches as a number of images (the first batches of the epoch's order)."""
    return None if max_batches is None else max_batches * batch_size


def data_identity(loader: Loader | None) -> dict | None:
    """How results name a data set: by its content where it has an identity (an
    ImageTensorDataset, an ImageFolder), else its type and size (None when unknown)."""
    if loader is None:
        return None
    if isinstance(loader, (ImageTensorDataset, ImageFolder)):
        return loader.identity()
    n = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    return {"source": type(loader).__name__, "n": n}


@contextlib.contextmanager
def _modes(*pairs: tuple[nn.Module, bool]) -> Iterator[None]:
    """Set train/eval modes for the block (later pairs win) and restore them after,
    writing only to modules not in the asked mode: the shared donors, in eval already,
    are read by other sessions meanwhile."""
    changed = []
    for m, mode in pairs:
        for sub in m.modules():
            if sub.training != mode:
                changed.append((sub, sub.training))
                sub.training = mode
    try:
        yield
    finally:
        for sub, mode in reversed(changed):
            sub.training = mode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ least squares

class NormalEquations:
    """Least squares B ~ A W + b accumulated over batches in float64.

    Rows of A (n, d_in) and B (n, d_out) are samples; only d x d sums are kept,
    so memory is bounded by one batch whatever the number of rows.
    """

    def __init__(self, d_in: int, d_out: int, device: torch.device | str = "cpu") -> None:
        self.d_in, self.d_out = d_in, d_out
        # float64 is not supported on Apple MPS: accumulate on the CPU there
        dev = torch.device(device)
        self.device = torch.device("cpu") if dev.type == "mps" else dev
        self.ata = torch.zeros(d_in, d_in, dtype=torch.float64, device=self.device)
        self.atb = torch.zeros(d_in, d_out, dtype=torch.float64, device=self.device)
        self.sum_a = torch.zeros(d_in, dtype=torch.float64, device=self.device)
        self.sum_b = torch.zeros(d_out, dtype=torch.float64, device=self.device)
        self.btb = torch.zeros((), dtype=torch.float64, device=self.device)
        self.n = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add rows: a (n, d_in), b (n, d_out)."""
        if a.shape[0] != b.shape[0] or a.shape[1] != self.d_in or b.shape[1] != self.d_out:
            raise StitchingError(f"least squares expects ({self.d_in}, {self.d_out}) columns, "
                                 f"got {tuple(a.shape)} and {tuple(b.shape)}")
        a = a.detach().to(self.device, torch.float64)
        b = b.detach().to(self.device, torch.float64)
        self.ata += a.T @ a
        self.atb += a.T @ b
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.btb += torch.dot(b.reshape(-1), b.reshape(-1))
        self.n += a.shape[0]

    def _augmented(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[A 1]^T [A 1] and [A 1]^T B."""
        d = self.d_in
        g = torch.empty(d + 1, d + 1, dtype=torch.float64, device=self.device)
        g[:d, :d], g[:d, d], g[d, :d], g[d, d] = self.ata, self.sum_a, self.sum_a, self.n
        r = torch.cat([self.atb, self.sum_b[None]], 0)
        return g, r

    def solve(self, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (d_in, d_out), b (d_out,)) minimising ||A W + b - B||^2 + lam ||W||^2,
        lam = ridge x the mean diagonal of A^T A (the bias is not penalised)."""
        if self.n == 0:
            raise StitchingError("least squares got no data")
        g, r = self._augmented()
        scale = float(torch.diagonal(self.ata).mean()) if self.d_in else 0.0
        lam = ridge * scale if scale > 0 else ridge
        reg = torch.full((self.d_in + 1,), lam, dtype=torch.float64, device=self.device)
        reg[-1] = 0.0
        try:
            x = torch.linalg.solve(g + torch.diag(reg), r)
        except RuntimeError:  # singular even with the ridge: the minimum-norm solution
            x = torch.linalg.lstsq(g.cpu() + torch.diag(reg.cpu()), r.cpu(),
                                   driver="gelsd").solution.to(self.device)
        return x[:-1], x[-1]

    def reduced_rank(self, w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The least-squares map of rank `rank` (reduced-rank regression, the bias free):
        the full solution `w` projected onto the top principal directions of its fitted
        values. Returns (W (d_in, d_out), b (d_out,))."""
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        cov_a = self.ata / self.n - torch.outer(mean_a, mean_a)
        fitted = w.T @ cov_a @ w
        _, vectors = torch.linalg.eigh((fitted + fitted.T) / 2)
        top = vectors[:, -rank:]
        w_r = w @ top @ top.T
        return w_r, mean_b - mean_a @ w_r

    def relative_error(self, w: torch.Tensor, b: torch.Tensor) -> float:
        """||A W + b - B||_F / ||B||_F on the accumulated rows (from the sums, so
        values below ~1e-7 are at float64's floor)."""
        g, r = self._augmented()
        x = torch.cat([w.to(self.device, torch.float64), b.to(self.device, torch.float64)[None]], 0)
        sq = (x * (g @ x)).sum() - 2 * (x * r).sum() + self.btb
        denom = float(self.btb)
        if denom <= 0:
            return 0.0 if float(sq) <= 0 else math.inf
        return math.sqrt(max(float(sq), 0.0) / denom)


def _rows(h: torch.Tensor) -> torch.Tensor:
    """Activations -> one row per pixel (N*H*W, C), or (N, C) for pooled features."""
    return h if h.ndim == 2 else h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


def _same_stage(stitched: StitchedModel) -> bool:
    return stitched.front is stitched.end and stitched.layer == stitched.end_layer


@contextlib.contextmanager
def _halves(stitched: StitchedModel) -> Iterator[tuple[Callable, Callable]]:
    """The front's and the end's own activation at the stitch (Probe.tap)."""
    with stitched.front.tap(stitched.layer) as front, stitched.end.tap(stitched.end_layer) as end:
        yield front, end


def compare_representations(stitched: StitchedModel, loader: Loader, n: int | None = None,
                            batch_size: int = 256, cka_images: int = 0) -> dict:
    """The stitched representation, stitch(front activation), against the end model's
    own at the matching layer, on (the first n images of) `loader`: "relative_l2",
    ||stitched - end||_F / ||end||_F, and "cka", linear CKA (biased HSIC) of the two
    with each image's activation one vector, on the first `cka_images` of them."""
    dev = stitched.device
    diff_sq, ref_sq = 0.0, 0.0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    room = cka_images
    with torch.no_grad(), _modes((stitched, False)), _halves(stitched) as (front, end):
        for x, _y in batches(loader, batch_size, dev, limit=n):
            check_input_size(x, stitched.front, stitched.end)
            a = front(x)
            b = a if _same_stage(stitched) else end(x)
            t = stitched.transfer(a)
            diff_sq += float((t - b).double().pow(2).sum())
            ref_sq += float(b.double().pow(2).sum())
            if room > 0:
                kept.append((t[:room].flatten(1).cpu(), b[:room].flatten(1).cpu()))
                room -= len(kept[-1][0])
    relative = (0.0 if diff_sq == 0 else math.inf) if ref_sq == 0 else math.sqrt(diff_sq / ref_sq)
    out: dict[str, Any] = {"relative_l2": relative}
    if kept:
        stitched_rows = torch.cat([k for k, _ in kept])
        out.update(cka=linear_cka(stitched_rows, torch.cat([e for _, e in kept])),
                   cka_images=len(stitched_rows))
    return out


def representation_error(stitched: StitchedModel, loader: Loader, n: int | None = None,
                         batch_size: int = 256) -> float:
    """||stitch(front activation) - end activation||_F / ||end activation||_F at the
    matching layer on (the first n images of) `loader`: how far the stitched
    representation is from the one the end model expects, for either method."""
    return compare_representations(stitched, loader, n, batch_size)["relative_l2"]


def spectrum(stitched: StitchedModel) -> dict:
    """The stitch's singular values (largest first) and its effective rank, exp of the
    entropy of the normalised singular values (Roy & Vetterli 2007): the number of
    directions it really uses, from 1 to its rank."""
    weight, _ = stitched.linear()
    values = torch.linalg.svdvals(weight.double().cpu())
    p = values / values.sum() if float(values.sum()) > 0 else values
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    return {"singular_values": [round(float(v), 6) for v in values],
            "effective_rank": math.exp(entropy)}


def direct_match(stitched: StitchedModel, loader: Loader, batch_size: int = 128,
                 max_batches: int | None = None, ridge: float = 1e-6,
                 progress: Reporter | None = None, profile: bool = False,
                 seed: int = 0) -> dict:
    """Set the stitching layer to the least-squares map from the front's activation
    to the end's own activation at the matching layer. Returns the fit's record.

    A data set is read in seeded random batches, so that max_batches takes a
    random sample (CIFAR-10 is stored class by class)."""
    dev = stitched.device
    t_start = time.perf_counter()
    neq = NormalEquations(stitched.in_channels, stitched.out_channels, dev)
    timing = {"front_s": 0.0, "end_s": 0.0, "accumulate_s": 0.0, "solve_s": 0.0}
    limit = _limit(max_batches, batch_size)
    sizes = batch_sizes(loader, batch_size, limit)
    total = len(sizes) if sizes is not None else None
    seen = 0
    with torch.no_grad(), _modes((stitched.front, False), (stitched.end, False)), \
            _halves(stitched) as (front, end):
        for i, (x, _y) in enumerate(batches(loader, batch_size, dev, seed, limit)):
            check_input_size(x, stitched.front, stitched.end)
            t0 = time.perf_counter()
            a = front(x)
            if profile:
                _sync(dev)
            t1 = time.perf_counter()
            b = a if _same_stage(stitched) else end(x)
            if profile:
                _sync(dev)
            t2 = time.perf_counter()
            neq.add(_rows(a), _rows(b))
            if profile:
                _sync(dev)
            t3 = time.perf_counter()
            timing["front_s"] += t1 - t0
            timing["end_s"] += t2 - t1
            timing["accumulate_s"] += t3 - t2
            seen += len(x)
            report(progress, i + 1, total or i + 1, f"direct matching: {seen} images")
        t0 = time.perf_counter()
        w, b = neq.solve(ridge)
        if stitched.rank is not None:
            w, b = neq.reduced_rank(w, stitched.rank)
        stitched.set_linear(w.T.float(), b.float())
        timing["solve_s"] = time.perf_counter() - t0
        error = neq.relative_error(w, b)
    return {"method": "direct", "dm_error": error, "n_train": seen, "rows": neq.n,
            "ridge": ridge, "seconds": time.perf_counter() - t_start,
            "timing": {k: round(v, 4) for k, v in timing.items()}}


# ------------------------------------------------------------------ fitting

def fit(front: Probe, end: Probe, layer: str, loader: Loader, method: str = "task", *,
        epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-4,
        batch_size: int = 128, adapt_bn: bool = False, init: str = "random",
        end_layer: str | None = None, ridge: float = 1e-6,
        progress: Reporter | None = None, seed: int = 0, max_batches: int | None = None,
        init_batches: int | None = None, log_every: int | None = None,
        profile: bool = False, rank: int | None = None, adversarial: str | None = None,
        alpha: float = 1.0, beta: float = 1.0, train_attack: attacks.PGD | None = None,
        ) -> tuple[StitchedModel, dict]:
    """Stitch `front` to `end` at `layer` and fit the stitching layer.

    method="task": cross-entropy on clean training data through the frozen end
    (Adam, lr x0.1 at 1/3 and 2/3 of the steps, a seeded shuffle each epoch);
    init "random" (PyTorch's default, seeded; a low-rank stitch: orthogonal factors),
    "identity", "permutation" (a seeded random permutation) or "direct" (least
    squares first). rank=r: a stitch of rank r (two 1x1 convolutions through r
    channels; least squares then fits the best rank-r map). adversarial="madry"
    replaces the first `alpha` share of each batch by `train_attack` examples against
    the whole stitched network (default PGD-10 Linf 8/255, step 2/255, no random
    start, the paper's); "trades" adds beta x KL(stitched(x) || stitched(x')) for
    TRADES's examples x' at the attack's radius, step and steps. adapt_bn=True lets
    a private copy of the end model's BatchNorm layers run in train mode (batch
    statistics, running averages updated), as the original code did; the shared end
    model is never changed.
    The data are read in seeded random batches, a new order every epoch
    (core.data.batches). max_batches caps the batches per epoch (direct: in
    total); init_batches caps those of the direct init (default: max_batches).

    method="direct": closed-form least squares onto the end's activation at
    `end_layer` (each pixel a sample, with bias); epochs, lr etc. are unused.

    Returns (stitched model in eval mode, history). The history holds the
    settings, the seconds spent, a time breakdown, the training curve (mean
    loss and accuracy every `log_every` steps, default ~50 points) and per-epoch
    loss/accuracy, or for direct matching the relative error ||AW-B||/||B||.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    if method == "task" and epochs < 1:
        raise ValueError("epochs must be at least 1")
    if adversarial is not None and adversarial not in ADVERSARIAL:
        raise ValueError(f"adversarial must be one of {ADVERSARIAL} or None, not {adversarial!r}")
    if adversarial and method == "direct":
        raise StitchingError("adversarial training of the stitching layer needs task-loss "
                             "matching: direct matching is a closed-form fit")
    if adversarial and adapt_bn:   # the attack would move the end's BatchNorm statistics
        raise StitchingError("adversarial training of the stitching layer keeps the end "
                             "model's BatchNorm statistics: turn adapt_bn off")
    if adapt_bn and method == "task":
        end = _private_copy(end)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the stitching layer's default init, reproducibly
        stitched = StitchedModel(front, end, layer, end_layer, rank)

    if method == "direct":
        hist = direct_match(stitched, loader, batch_size, max_batches, ridge, progress, profile,
                            seed)
        hist.update({"seed": seed, **({"rank": rank} if rank is not None else {})})
        return stitched.eval(), hist

    sizes = batch_sizes(loader, batch_size, _limit(max_batches, batch_size))
    if sizes is None:
        raise StitchingError("task-loss training makes several passes with a schedule: pass "
                             "an ImageTensorDataset or a sized, re-iterable loader (a list "
                             "of batches, a DataLoader), not a one-shot iterator")
    if not sizes:
        raise StitchingError("the training data are empty")
    steps_per_epoch = len(sizes)
    init_record = None
    train_progress = progress
    if init == "identity":
        stitched.identity_init()
    elif init == "permutation":
        stitched.permutation_init(seed)
    elif init == "direct":  # the first quarter of the progress bar
        init_record = direct_match(stitched, loader, batch_size,
                                   init_batches if init_batches is not None else max_batches,
                                   ridge, span(progress, 0, 0.25), profile, seed)
        train_progress = span(progress, 0.25, 0.75)
    adversary = (None if adversarial is None else
                 Adversary(adversarial, train_attack or TRAIN_ATTACK, alpha, beta))
    hist = _train_task(stitched, loader, epochs, steps_per_epoch, lr, weight_decay,
                       batch_size, adapt_bn, seed, max_batches, log_every, train_progress,
                       profile, adversary)
    hist.update({"init": init, "seed": seed,
                 **({"rank": rank} if rank is not None else {}),
                 **({"adversarial": adversary.describe()} if adversary else {})})
    if init_record is not None:
        hist["init_dm_error"] = init_record["dm_error"]
        hist["init_images"] = init_record["n_train"]
        hist["seconds"] += init_record["seconds"]
        hist["timing"]["init_s"] = round(init_record["seconds"], 4)
    return stitched.eval(), hist


# the paper's attack for training a stitcher adversarially: PGD-10 Linf 8/255, step 2/255,
# from the clean image
TRAIN_ATTACK = attacks.PGD("linf", 8 / 255, 2 / 255, 10, random_start=False)


@dataclass(frozen=True)
class Adversary:
    """How a stitcher is trained adversarially: "madry" (the share `alpha` of each batch
    replaced by `attack`'s examples) or "trades" (TRADES's examples at the attack's
    radius, step and steps; the KL term weighted by `beta`)."""
    kind: str
    attack: attacks.PGD
    alpha: float = 1.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.kind == "madry" and not 0 < self.alpha <= 1:
            raise StitchingError(f"the attack ratio alpha is the share of each batch that is "
                                 f"attacked, above 0 and at most 1, not {self.alpha}")
        if self.kind == "trades" and (self.beta < 0 or self.attack.norm != "linf"):
            raise StitchingError("TRADES takes a weight beta of at least 0 and a Linf attack")

    def describe(self) -> str:
        if self.kind == "madry":
            return f"Madry: {self.attack.describe()} on {self.alpha:.0%} of each batch"
        a = self.attack
        return (f"TRADES beta {self.beta:g}: {a.steps} steps, Linf eps {a.eps * 255:g}/255, "
                f"step {a.step_size * 255:g}/255")

    def loss(self, attacked: Callable, trained: Callable, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits of the images trained on) for one batch: the attack runs through
        `attacked` (the whole stitched network), the loss through `trained` (the same,
        with a front that builds no graph)."""
        if self.kind == "madry":
            k = round(self.alpha * len(x))
            x = torch.cat([attacks.perturb(self.attack, attacked, x[:k], y[:k]), x[k:]])
            logits = trained(x)
            return F.cross_entropy(logits, y), logits
        a = self.attack
        with torch.enable_grad():
            x_adv = attacks.trades_examples(attacked, x, a.eps, a.step_size, a.steps, generator)
        logits = trained(x)
        kl = F.kl_div(F.log_softmax(trained(x_adv), 1), F.softmax(logits, 1),
                      reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * kl, logits


def _private_copy(end: Probe) -> Probe:
    """A copy of the end model whose BatchNorm statistics may change."""
    own = copy.deepcopy(end)
    own._fingerprint = None
    own.card = {**own.card, "note": "BatchNorm statistics adapted during stitching"}
    return own


def _lr_factor(step: int, total: int) -> float:
    """x0.1 at 1/3 and again at 2/3 of the steps (the papers' epoch 10 and 20 of 30)."""
    return 0.1 ** sum(step >= -(-k * total // 3) for k in (1, 2))


def _train_task(stitched: StitchedModel, loader: Loader, epochs: int, steps_per_epoch: int,
                lr: float, weight_decay: float, batch_size: int, adapt_bn: bool, seed: int,
                max_batches: int | None, log_every: int | None, progress: Reporter | None,
                profile: bool, adversary: Adversary | None = None) -> dict:
    dev = stitched.device
    front, end = stitched.front, stitched.end
    total = steps_per_epoch * epochs
    log_every = log_every or max(1, total // 50)
    opt = torch.optim.Adam(stitched.stitch.parameters(), lr=lr, weight_decay=weight_decay)
    curve: dict[str, list] = {"step": [], "epoch": [], "loss": [], "accuracy": [], "lr": []}
    epoch_loss, epoch_acc = [], []
    timing = {"data_s": 0.0, "front_s": 0.0, "end_s": 0.0, "step_s": 0.0}
    step, seen = 0, 0
    t_start = time.perf_counter()
    with _modes((front, False), (end, adapt_bn), (stitched.stitch, True)), \
            front.tap(stitched.layer) as front_half:
        for epoch in range(epochs):
            e_loss = e_correct = e_n = 0.0
            w_loss = w_correct = w_n = 0.0
            t0 = time.perf_counter()
            for x, y in batches(loader, batch_size, dev, seed, _limit(max_batches, batch_size),
                                epoch):
                if step == 0:   # once: a check per step would wait for the GPU each time
                    require_labels(y, "task-loss stitching")
                check_input_size(x, front, end)
                factor = _lr_factor(step, total)
                for g in opt.param_groups:
                    g["lr"] = lr * factor
                t1 = time.perf_counter()
                if adversary is None:
                    with torch.no_grad():  # the front is frozen: no graph needed
                        h = front_half(x)
                if profile:
                    _sync(dev)
                t2 = time.perf_counter()
                if adversary is None:
                    logits = end.forward_from(stitched.end_layer, stitched.transfer(h))
                    loss = F.cross_entropy(logits, y)
                else:   # the attack sees the whole stitched network
                    def whole(z: torch.Tensor) -> torch.Tensor:
                        return end.forward_from(stitched.end_layer,
                                                stitched.transfer(front_half(z)))

                    def trained(z: torch.Tensor) -> torch.Tensor:
                        with torch.no_grad():
                            h = front_half(z)
                        return end.forward_from(stitched.end_layer, stitched.transfer(h))
                    generator = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + step)
                    loss, logits = adversary.loss(whole, trained, x, y, generator)
                opt.zero_grad(set_to_none=True)
                # gradients for the stitch only: no weight gradient of the shared models
                # is computed, and no flag of theirs is touched
                loss.backward(inputs=list(stitched.stitch.parameters()))
                if profile:
                    _sync(dev)
                t3 = time.perf_counter()
                opt.step()
                n = len(y)
                loss_v = float(loss.detach()) * n
                correct = float((logits.detach().argmax(1) == y).sum())
                t4 = time.perf_counter()
                timing["data_s"] += t1 - t0
                timing["front_s"] += t2 - t1
                timing["end_s"] += t3 - t2
                timing["step_s"] += t4 - t3
                e_loss, e_correct, e_n = e_loss + loss_v, e_correct + correct, e_n + n
                w_loss, w_correct, w_n = w_loss + loss_v, w_correct + correct, w_n + n
                step += 1
                if step % log_every == 0 or step == total:
                    curve["step"].append(step)
                    curve["epoch"].append(round(step / steps_per_epoch, 4))
                    curve["loss"].append(w_loss / w_n)
                    curve["accuracy"].append(w_correct / w_n)
                    curve["lr"].append(lr * factor)
                    w_loss = w_correct = w_n = 0.0
                report(progress, step, total,
                       f"epoch {epoch + 1}/{epochs}, loss {e_loss / e_n:.3f}, "
                       f"accuracy {e_correct / e_n:.3f}")
                t0 = time.perf_counter()
            epoch_loss.append(e_loss / max(e_n, 1))
            epoch_acc.append(e_correct / max(e_n, 1))
            seen = int(e_n)
    return {"method": "task", "epochs": epochs, "steps": total, "batch_size": batch_size,
            "lr": lr, "weight_decay": weight_decay, "adapt_bn": adapt_bn, "n_train": seen,
            "curve": curve, "epoch_loss": epoch_loss, "epoch_accuracy": epoch_acc,
            "seconds": time.perf_counter() - t_start,
            "timing": {k: round(v, 4) for k, v in timing.items()}}


# ------------------------------------------------------------------ evaluation

def _accuracy(model: nn.Module, loader: Loader, attack: Callable | None, batch_size: int,
              limit: int | None, progress: Reporter | None, label: str) -> tuple[float, int]:
    """Accuracy on the first `limit` images of the seeded order, and their number."""
    seen = {"n": 0}

    def counted(e: Event) -> None:
        seen["n"] = int(e.done)
        report(progress, e.done, e.total, f"{label}: {int(e.done)} images")
    acc = attacks.accuracy(model, loader, attack, next(model.parameters()).device, counted,
                           batch_size=batch_size, limit=limit)
    return acc, seen["n"]


def evaluate(stitched: nn.Module, loader: Loader, attack: attacks.PGD | None = None, *,
             robust_n: int | None = None, test_n: int | None = None, batch_size: int = 256,
             progress: Reporter | None = None) -> dict:
    """Clean accuracy of any [0,1]->logits model, and robust accuracy under `attack`
    (on the first `robust_n` test images when given: attacks are slow on a CPU).
    A data set is read in seeded random batches; test_n and robust_n take the
    first images of that order, so the robust images are among the clean ones.

    Returns {"clean_accuracy", "robust_accuracy" (None without an attack), "n",
    "n_robust", "attack" (its description), "seconds"}.
    """
    t0 = time.perf_counter()
    has_attack = attack is not None
    with _modes((stitched, False)):
        clean, n = _accuracy(stitched, loader, None, batch_size, test_n,
                             span(progress, 0, 0.2 if has_attack else 1.0), "clean")
        t1 = time.perf_counter()
        robust, n_robust = None, None
        if has_attack:
            limit = min(x for x in (robust_n, test_n, n) if x is not None)
            robust, n_robust = _accuracy(stitched, loader, attack, batch_size, limit,
                                         span(progress, 0.2, 0.8), attack.describe())
    t2 = time.perf_counter()
    return {"clean_accuracy": clean, "robust_accuracy": robust, "n": n, "n_robust": n_robust,
            "attack": attack.describe() if has_attack else None,
            "seconds": {"clean": round(t1 - t0, 4), "robust": round(t2 - t1, 4)}}


def evaluate_all(stitched: StitchedModel, loader: Loader, attack: attacks.PGD | None = None,
                 **options: Any) -> dict:
    """evaluate() for the front donor, the end donor and the stitched model."""
    return {"front": evaluate(stitched.front, loader, attack, **options),
            "end": evaluate(stitched.end, loader, attack, **options),
            "stitched": evaluate(stitched, loader, attack, **options)}


# ------------------------------------------------------------------ cells and matrices

def cell_inputs(front: Probe, end: Probe, layer: str, method: str, *, epochs: int = 30,
                train_loader: Loader | None = None, test_loader: Loader | None = None,
                attack: attacks.PGD | None = None, test_n: int | None = None,
                robust_n: int | None = None, seed: int = 0, **fit_options: Any) -> dict:
    """Everything a stitch cell's result depends on: a results-store key."""
    opts = {k: v for k, v in sorted(fit_options.items()) if k not in ("progress", "profile")}
    return {"front": front.identity(), "end": end.identity(), "layer": layer,
            "end_layer": opts.pop("end_layer", None) or layer, "method": method,
            "epochs": epochs if method == "task" else None, "seed": seed,
            "train": data_identity(train_loader), "test": data_identity(test_loader),
            "test_n": test_n, "robust_n": robust_n,
            "attack": attack.to_dict() if attack is not None else None, "options": opts}


# linear CKA between the stitched and the end representation: on this many test images
# (the first of those under attack), each image's activation one vector
CKA_IMAGES = 500


def stitch_cell(front: Probe, end: Probe, layer: str, method: str = "task",
                train_loader: Loader | None = None, test_loader: Loader | None = None,
                attack: attacks.PGD | None = None, epochs: int = 30, *,
                test_n: int | None = None, robust_n: int | None = None, seed: int = 0,
                progress: Reporter | None = None,
                more_tests: Mapping[str, Loader] | None = None, **fit_options: Any) -> dict:
    """Fit one stitching layer and score it: one cell of a stitching matrix.
    `more_tests` ({name: test data}): score it on these too, under "more_tests"
    (cross-task stitching: the test sets of both tasks).

    Returns plain values: layer, method, clean/robust accuracy, DM error (the
    least-squares fit's relative error on the training data, for direct matching
    or the direct init of task matching), the relative distance of the stitched
    representation from the end model's own on the first robust_n (else test_n)
    test images (for either method) and their linear CKA on the first CKA_IMAGES of
    those, the stitch's singular values and effective rank, image counts, seconds and
    the fit's history (training curve, recipe). The papers' code reports squared
    relative errors: square these.
    """
    if train_loader is None or test_loader is None:
        raise StitchingError("a stitch cell needs training data and test data")
    fit_share = 0.7 if method == "task" else 0.3
    stitched, hist = fit(front, end, layer, train_loader, method, epochs=epochs, seed=seed,
                         progress=span(progress, 0, fit_share, prefix=f"{layer}: "),
                         **fit_options)
    tests = {"": test_loader, **(more_tests or {})}
    share = (1 - fit_share) / len(tests)
    scored = {name: evaluate(stitched, loader, attack, test_n=test_n, robust_n=robust_n,
                             progress=span(progress, fit_share + k * share, share,
                                           prefix=f"{layer}{' on ' + name if name else ''}: "))
              for k, (name, loader) in enumerate(tests.items())}
    ev = scored.pop("")
    repr_n = robust_n if robust_n is not None else test_n
    compared = compare_representations(stitched, test_loader, repr_n,
                                       cka_images=min(CKA_IMAGES, repr_n or CKA_IMAGES))
    return {"layer": layer, "end_layer": stitched.end_layer, "method": method,
            "clean_accuracy": ev["clean_accuracy"], "robust_accuracy": ev["robust_accuracy"],
            "dm_error": hist.get("dm_error", hist.get("init_dm_error")),
            "test_representation_error": compared["relative_l2"],
            "test_cka": compared.get("cka"), "cka_images": compared.get("cka_images"),
            **spectrum(stitched),
            "n_train": hist["n_train"], "n_test": ev["n"], "n_robust": ev["n_robust"],
            "fit_seconds": round(hist["seconds"], 3),
            "eval_seconds": {k: v for k, v in ev["seconds"].items()},
            **({"more_tests": {name: {k: e[k] for k in ("clean_accuracy", "robust_accuracy",
                                                        "n", "n_robust")}
                               for name, e in scored.items()}} if scored else {}),
            "history": hist}


@dataclass
class StitchResult:
    """A (pair x layer) grid of stitching results, with the inputs that made it.

    Arrays are (pairs, layers) floats, NaN where a cell is not computed (or, for
    `robust`, when there is no attack). `histories[p][l]` is the cell's fit record.
    """
    pairs: list[dict]                 # {"front": identity, "end": identity, "label": str,
    #                                    "points": [[layer, end layer], ...] where they differ}
    layers: list[str]
    method: str
    settings: dict                    # epochs, seed, data, attack, fit options
    clean: np.ndarray
    robust: np.ndarray
    dm_error: np.ndarray              # least-squares error on the training data
    repr_error: np.ndarray            # stitched vs end representation on test data
    seconds: np.ndarray
    histories: list[list[dict | None]]
    front_accuracy: list[dict | None] = field(default_factory=list)
    end_accuracy: list[dict | None] = field(default_factory=list)
    cka: np.ndarray | None = None             # stitched vs end representation, linear CKA
    effective_rank: np.ndarray | None = None  # of the stitching layer's map

    @classmethod
    def empty(cls, pairs: list[dict], layers: Sequence[str], method: str,
              settings: dict) -> "StitchResult":
        shape = (len(pairs), len(layers))
        nan = lambda: np.full(shape, np.nan)  # noqa: E731
        return cls(list(pairs), list(layers), method, dict(settings), nan(), nan(), nan(),
                   nan(), nan(), [[None] * shape[1] for _ in pairs], [None] * shape[0],
                   [None] * shape[0], nan(), nan())

    def set_cell(self, pair: int, layer: int | str, cell: dict) -> None:
        """Store a stitch_cell() result at (pair, layer)."""
        j = self.layers.index(layer) if isinstance(layer, str) else layer
        nan = float("nan")
        self.clean[pair, j] = cell["clean_accuracy"]
        robust = cell.get("robust_accuracy")
        self.robust[pair, j] = nan if robust is None else robust
        self.dm_error[pair, j] = nan if cell.get("dm_error") is None else cell["dm_error"]
        for array, key in ((self.repr_error, "test_representation_error"),
                           (self.cka, "test_cka"), (self.effective_rank, "effective_rank")):
            if array is not None:   # cells stored before similarity was measured lack some
                array[pair, j] = nan if cell.get(key) is None else cell[key]
        self.seconds[pair, j] = cell.get("fit_seconds", nan) + sum(
            (cell.get("eval_seconds") or {}).values())
        self.histories[pair][j] = cell.get("history")

    def values(self, metric: str) -> np.ndarray:
        """The cells' clean or robust accuracy ("clean", "robust"), either relative
        to the end model's own ("clean_rel", "robust_rel"; NaN where that is unknown),
        or the stitched representation's similarity to the end model's ("cka",
        "relative_l2") or the stitch's "effective_rank" (NaN where a cell lacks it)."""
        similar = {"cka": self.cka, "relative_l2": self.repr_error,
                   "effective_rank": self.effective_rank}
        if metric in similar:
            array = similar[metric]
            return np.full(self.clean.shape, np.nan) if array is None else array
        kind = metric.removesuffix("_rel")
        values = self.robust if kind == "robust" else self.clean
        if metric.endswith("_rel"):
            key = f"{kind}_accuracy"
            ends = [np.nan if not (ref and ref.get(key)) else ref[key]
                    for ref in self.end_accuracy]
            values = values / np.array(ends)[:, None]
        return values

    def to_csv(self, values: np.ndarray, rows: Sequence[tuple[str, str, str]]) -> str:
        """A (pairs x layers) array of it as CSV, a row per (name, front, end)."""
        lines = ["pair,front,end," + ",".join(self.layers)]
        for names, row in zip(rows, values):
            lines.append(",".join([*names] + ["" if np.isnan(v) else f"{v:.4f}" for v in row]))
        return "\n".join(lines) + "\n"

    def missing(self) -> list[tuple[int, int]]:
        """(pair, layer) indices of cells not computed yet."""
        return [(i, j) for i in range(len(self.pairs)) for j in range(len(self.layers))
                if np.isnan(self.clean[i, j])]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def to_dict(self) -> dict:
        """Plain dicts, lists, numbers, strings and numpy arrays (core.results stores them)."""
        return {"kind": "stitching", "pairs": self.pairs, "layers": self.layers,
                "method": self.method, "settings": self.settings,
                "clean": self.clean, "robust": self.robust, "dm_error": self.dm_error,
                "repr_error": self.repr_error, "seconds": self.seconds, "histories": self.histories,
                "front_accuracy": self.front_accuracy, "end_accuracy": self.end_accuracy,
                "cka": self.cka, "effective_rank": self.effective_rank}

    @classmethod
    def from_dict(cls, d: dict) -> "StitchResult":
        arr = lambda k: np.asarray(d[k], dtype=np.float64)  # noqa: E731
        return cls(list(d["pairs"]), list(d["layers"]), d["method"], dict(d["settings"]),
                   arr("clean"), arr("robust"), arr("dm_error"), arr("repr_error"),
                   arr("seconds"),
                   [list(row) for row in d["histories"]],
                   list(d.get("front_accuracy") or [None] * len(d["pairs"])),
                   list(d.get("end_accuracy") or [None] * len(d["pairs"])),
                   *(arr(k) if d.get(k) is not None else None
                     for k in ("cka", "effective_rank")))


# how a metric of the matrix is drawn: number format, colour range (None: up to the widest
# stitch), colours; the ones a reader wants high are green
METRIC_SCALES: dict[str, tuple[str, float, float | None, str]] = {
    "clean": (".0%", 0.0, 1.0, "RdYlGn"), "robust": (".0%", 0.0, 1.0, "RdYlGn"),
    "clean_rel": (".0%", 0.0, 1.2, "RdYlGn"), "robust_rel": (".0%", 0.0, 1.2, "RdYlGn"),
    "cka": (".2f", 0.0, 1.0, "RdYlGn"), "relative_l2": (".2f", 0.0, 1.5, "RdYlGn_r"),
    "effective_rank": (".0f", 1.0, None, "viridis"),
}


def metric_scale(metric: str, values: np.ndarray) -> tuple[str, float, float, str]:
    """(format, low, high, colours) of a matrix metric over these values."""
    fmt, low, high, colours = METRIC_SCALES[metric]
    if high is None:
        high = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    return fmt, low, max(high, low + 1e-9), colours


def _pairs(pairs_or_front: Probe | Sequence[tuple[Probe, Probe]],
           end: Probe | None) -> list[tuple[Probe, Probe]]:
    if isinstance(pairs_or_front, nn.Module):
        if end is None:
            raise StitchingError("matrix(front, end, ...) needs an end model")
        return [(pairs_or_front, end)]  # type: ignore[list-item]
    if end is not None:
        raise StitchingError("pass either (front, end) or a list of (front, end) pairs")
    pairs = [tuple(p) for p in pairs_or_front]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise StitchingError("pairs must be a non-empty list of (front, end) models")
    return pairs  # type: ignore[return-value]


def _score(evaluation: dict | None) -> dict | None:
    """What a matrix keeps of a donor's evaluate() record."""
    if evaluation is None:
        return None
    return {k: evaluation[k] for k in ("clean_accuracy", "robust_accuracy")}


@dataclass
class Grid:
    """What a stitching matrix holds: a row per (front, end) pair, a column per
    layer, and the donors (each model once) scored on their own. stitching.matrix
    computes its cells directly, the app (core.jobs.stitch_matrix) as stored jobs:
    both lay them out and assemble them here. A column is one point in every pair:
    points[pair][column] is its (front layer, end layer), the same name in models
    of one architecture, the same stage boundary in models of different depths."""
    pairs: list[tuple[Probe, Probe]]
    layers: list[str]        # column names: the layers cut, or the stages (layer1, block2)
    points: list[list[tuple[str, str]]]

    @classmethod
    def of(cls, pairs: Sequence[tuple[Probe, Probe]], layers: Sequence[str] | None = None
           ) -> "Grid":
        """Default columns: the stem and the block outputs that every pair shares (the
        papers' grid; the pooled representation is a stitch point too, if asked for);
        where the models differ in depth or family, their stage boundaries, column k
        the k-th boundary of each model (named by stage: layer1, block2). Named
        layers are cut at that name in both models. Every cell is checked here,
        before anything is trained."""
        pairs = list(pairs)
        models = [m for pair in pairs for m in pair]
        chains = [stitch_points(m) for m in models]
        if layers is not None:
            names, points = list(layers), [[(n, n) for n in layers] for _ in pairs]
        elif all(chain == chains[0] for chain in chains):
            common = [set(common_stitch_points(f, e)) for f, e in pairs]
            names = [n for n in chains[0]
                     if all(n in c for c in common) and n != models[0].representation_layer]
            points = [[(n, n) for n in names] for _ in pairs]
        else:
            ends = {m.fingerprint(): stage_ends(m) for m in models}
            if len({len(e) for e in ends.values()}) > 1:
                raise StitchingError(
                    "these models have different numbers of stages, so their stitch points "
                    "cannot be lined up: " + "; ".join(
                        f"{_model_name(m)}: {', '.join(ends[m.fingerprint()]) or 'none'}"
                        for m in dict.fromkeys(models)))
            # after the blocks: the points every model has by name (a WRN's final relu)
            last = chains[0].index(ends[models[0].fingerprint()][-1])
            after = [n for n in chains[0][last + 1:] if all(n in chain for chain in chains)]
            rows = [list(zip(ends[f.fingerprint()], ends[e.fingerprint()]))
                    + [(n, n) for n in after] for f, e in pairs]

            def fits(j: int) -> bool:   # in every pair: one spatial size, not the pooled end
                return all(f.layer_shapes()[row[j][0]][1:] == e.layer_shapes()[row[j][1]][1:]
                           and row[j][0] != f.representation_layer
                           for (f, e), row in zip(pairs, rows))
            kept = [j for j in range(len(rows[0])) if fits(j)]
            points = [[row[j] for j in kept] for row in rows]
            names = [re.sub(r"(\.layer|\.block)?\.\d+$", "", a) for a, _ in points[0]]
        if not names:
            raise StitchingError(
                "these models share no stitch point of one spatial size: "
                + "; ".join(f"{_model_name(m)}: {', '.join(stitch_points(m)) or 'none'}"
                            for m in dict.fromkeys(models)))
        grid = cls(pairs, names, points)
        for (f, e), row in zip(grid.pairs, grid.points):
            for layer, end_layer in row:
                StitchedModel(f, e, layer, end_layer)
        return grid

    def column_labels(self) -> list[str]:
        """What a figure calls each column: 'stem' for the first stitch point."""
        first = stitch_points(self.pairs[0][0])[:1]
        return ["stem" if row_point[0] in first else name
                for name, row_point in zip(self.layers, self.points[0])]

    @property
    def donors(self) -> list[Probe]:
        """Every model of the pairs once, in order of appearance."""
        seen: dict[str, Probe] = {}
        for f, e in self.pairs:
            seen.setdefault(f.fingerprint(), f)
            seen.setdefault(e.fingerprint(), e)
        return list(seen.values())

    def labels(self) -> list[str]:
        return [f"{_model_name(f)} -> {_model_name(e)}" for f, e in self.pairs]

    def assemble(self, method: str, settings: dict, cell: Callable[[int, int], dict | None],
                 score: Callable[[Probe], dict | None]) -> StitchResult:
        """The StitchResult of cell(pair, layer) (a stitch_cell() record, or None when
        not computed) and score(donor) (an evaluate() record, or None)."""
        info = [{"front": f.identity(), "end": e.identity(), "label": label,
                 **({"points": [list(p) for p in row]} if any(a != b for a, b in row) else {})}
                for (f, e), label, row in zip(self.pairs, self.labels(), self.points)]
        result = StitchResult.empty(info, self.layers, method, settings)
        for i, (f, e) in enumerate(self.pairs):
            result.front_accuracy[i] = _score(score(f))
            result.end_accuracy[i] = _score(score(e))
            for j in range(len(self.layers)):
                value = cell(i, j)
                if value is not None:
                    result.set_cell(i, j, value)
        return result


def matrix(pairs_or_front: Probe | Sequence[tuple[Probe, Probe]], end: Probe | None = None,
           layers: Sequence[str] | None = None, *, method: str = "task",
           train_loader: Loader | None = None, test_loader: Loader | None = None,
           attack: attacks.PGD | None = None, epochs: int = 30,
           test_n: int | None = None, robust_n: int | None = None, seed: int = 0,
           progress: Reporter | None = None, **fit_options: Any) -> StitchResult:
    """Stitch every pair at every layer (default: Grid.of's) and score the cells
    and the donors. progress: an Event per cell and donor."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if train_loader is None or test_loader is None:
        raise StitchingError("matrix() needs train_loader and test_loader")
    unknown = sorted(set(fit_options) - set(inspect.signature(fit).parameters))
    if unknown:   # before the donors' scores, which take minutes
        raise TypeError(f"matrix() passes {', '.join(unknown)} to fit(), which takes no such "
                        "option")
    grid = Grid.of(_pairs(pairs_or_front, end), layers)
    settings = {"epochs": epochs if method == "task" else None, "seed": seed,
                "train": data_identity(train_loader), "test": data_identity(test_loader),
                "test_n": test_n, "robust_n": robust_n,
                "attack": attack.describe() if attack is not None else None,
                "attack_params": attack.to_dict() if attack is not None else None,
                "fit_options": {k: v for k, v in sorted(fit_options.items()) if k != "profile"}}
    total = len(grid.pairs) * len(grid.layers) + len(grid.donors)
    done = 0
    scores: dict[str, dict] = {}
    for model in grid.donors:
        scores[model.fingerprint()] = evaluate(
            model, test_loader, attack, test_n=test_n, robust_n=robust_n,
            progress=span(progress, done, 1, total, f"{_model_name(model)}: "))
        done += 1
    cells: dict[tuple[int, int], dict] = {}
    for i, ((f, e), label) in enumerate(zip(grid.pairs, grid.labels())):
        for j, (layer, end_layer) in enumerate(grid.points[i]):
            cells[i, j] = stitch_cell(f, e, layer, method, train_loader, test_loader, attack,
                                      epochs, test_n=test_n, robust_n=robust_n, seed=seed,
                                      progress=span(progress, done, 1, total, f"{label} "),
                                      end_layer=end_layer, **fit_options)
            done += 1
            report(progress, done, total,
                   f"{label} at {layer}: clean {cells[i, j]['clean_accuracy']:.3f}")
    return grid.assemble(method, settings, lambda i, j: cells[i, j],
                         lambda model: scores[model.fingerprint()])


# ======================================================================= jobs

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


# the matrix's rows when the person names no robust model
STITCH_ROBUST, STITCH_STANDARD = "resnet18-linf-8", "resnet18-standard-s0"
STITCH_STANDARD_2, STITCH_ROBUST_2 = "resnet18-standard-s1", "resnet18-l2-1.0"


def default_stitch_pairs() -> list[tuple[str, str]]:
    """The matrix rows for the shipped zoo, in STITCH_PAIRS order."""
    r1, r2, s1, s2 = STITCH_ROBUST, STITCH_ROBUST_2, STITCH_STANDARD, STITCH_STANDARD_2
    return [(r1, s1), (s1, r1), (s1, s2), (r1, r2)]


# On an image folder (models of another data set: an ImageNet validation folder) one
# folder is split in its fixed shuffle: the first train_images (at most half of it)
# train the stitching layer, the next test_images (at most) test it; robust accuracy
# under RobustBench's ImageNet threat, Linf 4/255.
FOLDER_STITCH_RECIPE = {**STITCH_RECIPE, "test_images": 10_000,
                        "attack": attacks.PGD("linf", 4 / 255, 1 / 255, 20).for_accuracy()}


# What a recipe may set beyond the shipped one: a low-rank stitch, the stitcher's
# adversarial training (its attack ratio alpha, TRADES's beta, its attack). At these values
# a setting stays out of the result key, so that cells stored before it existed still count.
RECIPE_EXTRAS: dict[str, Any] = {"rank": None, "adversarial": None, "alpha": 1.0, "beta": 1.0,
                                 "train_attack": TRAIN_ATTACK}
# Named recipes, each over the base (CIFAR-10's or an image folder's): "short", the shipped
# cells' (a least-squares start, one epoch on 10,000 images; what a CPU affords), and
# "paper", Balogh & Jelasity's (a random start, 30 epochs on all 50,000 training images)
RECIPES: dict[str, dict[str, Any]] = {
    "short": {},
    "paper": {"epochs": 30, "init": "random", "init_batches": None, "train_images": 50_000},
}
Recipe = str | Mapping[str, Any] | None


# What robust accuracy may be measured under: the recipe's PGD-20, or one of the CKA
# paper's unforeseen attacks at its evaluation parameters (a recipe's "attack" may name one)
ROBUST_ATTACKS: dict[str, Any] = {"snow": Snow(), "gabor": Gabor(), "jpeg": JPEG()}
ROBUST_ATTACK_LABELS = {"": "PGD-20 Linf", "snow": "Snow (unforeseen)",
                        "gabor": "Gabor (unforeseen)", "jpeg": "JPEG (unforeseen)"}


def _attack(value: Any) -> Any:
    if isinstance(value, str):
        if value not in ROBUST_ATTACKS:
            raise StitchingError(f"robust accuracy is measured under PGD or one of "
                                 f"{', '.join(ROBUST_ATTACKS)}, not {value!r}")
        return ROBUST_ATTACKS[value]
    return value if hasattr(value, "to_dict") else attacks.from_dict(value)


def stitch_recipe(recipe: Recipe, folder: str | None = None) -> dict:
    """A whole stitching recipe, its attacks as PGDs: None, a name of RECIPES, or a dict
    of settings over the base (the base recipe's name under "recipe", default "short")
    for CIFAR-10 or for an image folder. Raises StitchingError on a setting out of range."""
    base = FOLDER_STITCH_RECIPE if folder else STITCH_RECIPE
    given = {"recipe": recipe} if isinstance(recipe, str) else dict(recipe or {})
    name = given.pop("recipe", "short")
    if name not in RECIPES:
        raise StitchingError(f"no stitching recipe is called {name!r}; the recipes are "
                             f"{', '.join(RECIPES)}")
    unknown = sorted(set(given) - set(base) - set(RECIPE_EXTRAS))
    if unknown:
        raise StitchingError(f"a stitching recipe has no setting {', '.join(unknown)}; it "
                             f"sets {', '.join([*base, *RECIPE_EXTRAS])}")
    full = {**base, **RECIPE_EXTRAS, **RECIPES[name], **given}
    full["attack"], full["train_attack"] = _attack(full["attack"]), _attack(full["train_attack"])
    _check_recipe(full)
    return full


def _check_recipe(r: dict) -> None:
    def whole(key: str, low: int) -> bool:
        return isinstance(r[key], int) and not isinstance(r[key], bool) and r[key] >= low
    problems = [f"{key} must be a whole number of at least {low}, not {r[key]!r}"
                for key, low in (("epochs", 1), ("train_images", 1), ("batch_size", 1),
                                 ("robust_images", 0)) if not whole(key, low)]
    if r["init"] not in INITS:
        problems.append(f"the start (init) is one of {', '.join(INITS)}, not {r['init']!r}")
    if r["rank"] is not None and not whole("rank", 1):
        problems.append(f"rank must be a whole number of at least 1, not {r['rank']!r}")
    elif r["rank"] is not None and r["init"] in ("identity", "permutation"):
        problems.append(f"an {r['init']} start has full rank: a rank-{r['rank']} stitch "
                        "starts random or from least squares")
    if r["adversarial"] not in (None, *ADVERSARIAL):
        problems.append(f"the stitcher's adversarial training is {' or '.join(ADVERSARIAL)} "
                        f"(or none), not {r['adversarial']!r}")
    elif r["adversarial"]:
        try:
            Adversary(r["adversarial"], r["train_attack"], r["alpha"], r["beta"])
        except StitchingError as e:
            problems.append(str(e))
        train, test = r["train_attack"], r["attack"]
        # an unforeseen attack measures another threat, not the trained one: no comparison
        if isinstance(test, attacks.PGD) and (
                (test.norm, test.eps) != (train.norm, train.eps) or test.steps <= train.steps):
            problems.append(f"robust accuracy is measured with a stronger attack than the "
                            f"stitcher was trained with, at its radius: {test.describe()} "
                            f"is not stronger than {train.describe()}")
    if problems:
        raise StitchingError("; ".join(problems) + ".")


def _recipe_inputs(recipe: dict, method: str) -> dict:
    """The recipe as a result key names it: only what the fit reads (direct matching
    reads the data and the rank), extras only at values other than RECIPE_EXTRAS'."""
    adversarial = recipe["adversarial"] if method == "task" else None
    relevant = {"rank": True, "adversarial": True, "alpha": adversarial == "madry",
                "beta": adversarial == "trades", "train_attack": bool(adversarial)}
    extras = {k: recipe[k] for k, default in RECIPE_EXTRAS.items()
              if relevant[k] and recipe[k] != default}
    keep = {k: v for k, v in recipe.items() if k != "attack" and k not in RECIPE_EXTRAS}
    if method == "direct":  # only the data matter to a least-squares fit
        keep = {"train_images": recipe["train_images"]}
        extras.pop("adversarial", None)
    if "train_attack" in extras:
        extras["train_attack"] = extras["train_attack"].to_dict()
    return {**keep, **extras, "attack": recipe["attack"].to_dict()}


def plain_recipe(recipe: Recipe) -> Recipe:
    """A recipe as job arguments hold it: plain data (its attacks as dicts)."""
    if not isinstance(recipe, Mapping):
        return recipe
    return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in recipe.items()}


def cell_recipe(cell: Mapping[str, Any]) -> dict:
    """What a stored cell was fitted with, read from its history (cells stored before
    these fields existed included): start, epochs, training images, the stitcher's
    attack and rank. Direct matching has no start, epochs or attack."""
    hist = cell.get("history") or {}
    task = cell.get("method") == "task"
    return {"start": START_NAMES.get(hist.get("init"), hist.get("init")) if task else None,
            "epochs": hist.get("epochs") if task else None,
            "train_images": hist.get("n_train", cell.get("n_train")),
            "stitcher_attack": hist.get("adversarial") if task else None,
            "rank": hist.get("rank")}


def describe_recipe(recipe: dict, method: str, train_images: int | None = None) -> str:
    """One sentence's worth: how the stitching layers of a matrix are fitted (on
    `train_images`, where the data hold fewer than the recipe asks)."""
    rank = f"rank-{recipe['rank']} " if recipe["rank"] else ""
    train = train_images or recipe["train_images"]
    if method == "direct":
        return f"{rank}least squares on {train:,} training images"
    name = START_NAMES[recipe["init"]].replace(" ", "-")
    start = f"{'an' if name[0] in 'aeiou' else 'a'} {name} start"
    adversary = ("" if not recipe["adversarial"] else "; adversarially: " + Adversary(
        recipe["adversarial"], recipe["train_attack"], recipe["alpha"], recipe["beta"]
    ).describe())
    epochs = recipe["epochs"]
    return (f"{rank}stitch from {start}, then Adam lr {recipe['lr']:g}, weight "
            f"decay {recipe['weight_decay']:g}, batch {recipe['batch_size']}, {epochs} "
            f"epoch{'s' if epochs != 1 else ''} on {train:,} training images{adversary}")


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
    source = jobs.image_folder(analysis, folder, *probes)
    if source is None:
        return StitchData(jobs.cifar10_images("train", recipe["train_images"]), jobs.test_images(None),
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


def _fit_options(recipe: dict, method: str) -> dict:
    """fit()'s options from a whole recipe (direct matching reads the batch and rank)."""
    if method == "direct":
        return {"batch_size": recipe["batch_size"], "rank": recipe["rank"]}
    return {k: recipe[k] for k in ("batch_size", "lr", "weight_decay", "adapt_bn", "init",
                                   "init_batches", "rank", "adversarial", "alpha", "beta",
                                   "train_attack")}


def stitch_cell_job(load: jobs.Loader, front: str, end: str, layer: str, method: str = "task",
                    recipe: Recipe = None, folder: str | None = None, *,
                    end_layer: str | None = None, where: StitchData | None = None) -> jobs.Job:
    """One cell of the stitching matrix: front[..layer] -> 1x1 conv -> end[end_layer..]
    (default: the same layer), trained and tested on CIFAR-10, or on the two parts of
    an image `folder` (`where`: its stitch_data, when a whole matrix made it once)."""
    other_end = {"end_layer": end_layer} if end_layer not in (None, layer) else {}
    args = {"front": front, "end": end, "layer": layer, "method": method,
            "recipe": plain_recipe(recipe), **({"folder": folder} if folder else {}),
            **other_end}
    recipe = stitch_recipe(recipe, folder)
    pf, pe = load(front), load(end)
    where = where or stitch_data("Stitching", recipe, folder, pf, pe)
    inputs = {"front": pf.identity(), "end": pe.identity(), "layer": layer, **other_end,
              "method": method, "recipe": _recipe_inputs(recipe, method), "seed": 0,
              "train": where.train_key, "test": where.test_key}

    def run(progress: Reporter) -> dict:
        return stitch_cell(pf, pe, layer, method, where.train(), where.test(),
                           recipe["attack"], recipe["epochs"], robust_n=recipe["robust_images"],
                           progress=progress, **other_end, **_fit_options(recipe, method))
    at = layer if not other_end else f"{layer} / {end_layer}"
    return jobs.make("stitch_cell", inputs, run,
                f"stitch {pf.name} -> {pe.name} at {at} ({method} matching)", args)


def accuracy_job(load: jobs.Loader, spec: str, recipe: Recipe = None,
                 folder: str | None = None, *, where: StitchData | None = None) -> jobs.Job:
    """Clean (the test images) and robust (the first robust_images) accuracy of a model,
    on CIFAR-10's test set or on the test part of an image `folder` (`where`: as for
    stitch_cell_job)."""
    args = {"spec": spec, "recipe": plain_recipe(recipe), **({"folder": folder} if folder else {})}
    recipe = stitch_recipe(recipe, folder)
    probe = load(spec)
    where = where or stitch_data("Measuring accuracy", recipe, folder, probe)
    inputs = {"model": probe.identity(), "test": where.test_key,
              "robust_images": recipe["robust_images"], "attack": recipe["attack"].to_dict()}

    def run(progress: Reporter) -> dict:
        return evaluate(probe, where.test(), recipe["attack"],
                                  robust_n=recipe["robust_images"], progress=progress)
    return jobs.make("accuracy", inputs, run, f"accuracy of {probe.name}", args)


# cross-task stitching scores on (the first of the fixed shuffle of) this many test images
# of each data set
CROSS_TEST_IMAGES = 10_000


def cross_task_job(load: jobs.Loader, front: str, end: str, layer: str, method: str = "task",
                   recipe: Recipe = None, *, train_set: str, test_sets: Sequence[str],
                   end_layer: str | None = None) -> jobs.Job:
    """Cross-task stitching (Balogh & Jelasity's find_cross_dataset_transform): a front
    and an end model trained on different data sets of one image size, the stitching
    layer trained on `train_set`'s training images (the end model's outputs read as
    that set's classes), clean and robust accuracy on the test images of each of
    `test_sets` (core.data.datasets names: cifar10, svhn, cifar100, mnist,
    fashion-mnist)."""
    if not test_sets:
        raise StitchingError("cross-task stitching needs at least one test set")
    other_end = {"end_layer": end_layer} if end_layer not in (None, layer) else {}
    args = {"front": front, "end": end, "layer": layer, "method": method,
            "recipe": plain_recipe(recipe), "train_set": train_set,
            "test_sets": list(test_sets), **other_end}
    recipe = stitch_recipe(recipe)
    pf, pe = load(front), load(end)
    for probe in (pf, pe):
        if probe.input_size != datasets.SIZE:
            raise IncompatibleModelError(
                f"cross-task stitching reads the data sets at {datasets.SIZE} px, and "
                f"{probe.name} takes {probe.input_size} px images")
    for name in dict.fromkeys((train_set, *test_sets)):
        if datasets.classes(name) > pe.num_classes:
            raise IncompatibleModelError(
                f"{name} has {datasets.classes(name)} classes and the end model "
                f"{pe.name} {pe.num_classes} outputs: a stitched network answers with the "
                "end model's outputs, one per class")
    shuffled = {"order": "fixed-shuffle-0"}
    tests = [{**datasets.identity(name, "test"), **shuffled, "n": CROSS_TEST_IMAGES}
             for name in test_sets]
    inputs = {"front": pf.identity(), "end": pe.identity(), "layer": layer, **other_end,
              "method": method, "recipe": _recipe_inputs(recipe, method), "seed": 0,
              "train": {**datasets.identity(train_set, "train"), **shuffled,
                        "n": recipe["train_images"]},
              "test": tests[0], "more_tests": tests[1:]}

    def test_data(name: str) -> ImageTensorDataset:
        test = datasets.load(name, "test")
        return data.fixed_subset(test, min(len(test), CROSS_TEST_IMAGES))

    def run(progress: Reporter) -> dict:
        train = data.fixed_subset(datasets.load(train_set, "train"), recipe["train_images"])
        cell = stitch_cell(pf, pe, layer, method, train, test_data(test_sets[0]),
                           recipe["attack"], recipe["epochs"], robust_n=recipe["robust_images"],
                           progress=progress,
                           more_tests={name: test_data(name) for name in test_sets[1:]},
                           **other_end, **_fit_options(recipe, method))
        first = {"clean_accuracy": cell["clean_accuracy"], "n": cell["n_test"],
                 "robust_accuracy": cell["robust_accuracy"], "n_robust": cell["n_robust"]}
        return {**cell, "train_set": train_set,
                "tests": {test_sets[0]: first, **cell.get("more_tests", {})}}
    return jobs.make("stitch_cross", inputs, run,
                     f"stitch {pf.name} -> {pe.name} at {layer}, trained on {train_set}", args)


@dataclass
class StitchMatrix:
    """A stitching matrix as jobs: a cell job per (pair, layer) of a Grid and an
    accuracy job per donor. `matrix` lays out and assembles the same Grid, computing
    the cells directly."""
    grid: Grid
    method: str
    recipe: dict
    cells: list[list[jobs.Job]]             # [pair][layer]
    donors: dict[str, jobs.Job]             # model spec -> its accuracy job

    def jobs(self) -> list[jobs.Job]:
        return [j for row in self.cells for j in row] + list(self.donors.values())

    def result(self, get: Callable[[jobs.Job], Any]) -> StitchResult:
        """The StitchResult of the jobs' results, get(job) (None: not computed)."""
        by_fingerprint = {job.inputs["model"]["fingerprint"]: job for job in self.donors.values()}
        return self.grid.assemble(self.method, _recipe_inputs(self.recipe, self.method),
                                  lambda i, j: get(self.cells[i][j]),
                                  lambda probe: get(by_fingerprint[probe.fingerprint()]))


def stitch_matrix(load: jobs.Loader, pairs: Sequence[tuple[str, str]], method: str = "task",
                  layers: Sequence[str] | None = None, recipe: Recipe = None,
                  folder: str | None = None) -> StitchMatrix:
    """The jobs of a stitching matrix of model specs (rows: (front, end) pairs;
    default layers: Grid.of's), on CIFAR-10 or an image `folder`."""
    probes = {s: load(s) for pair in pairs for s in pair}
    grid = Grid.of([(probes[f], probes[e]) for f, e in pairs], layers)
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

# ----------------------------------------------------------------- the page's rows

def stitch_rows(s: Mapping[str, Any], robust: list[str], standard: list[str],
                chosen_a: bool) -> list[tuple[str, str]]:
    """The four (front, end) rows of the stitching matrix, in STITCH_PAIRS order.

    The robust model: st_r, else model A if the person chose a robust one (chosen_a),
    else the Linf 8/255 model. The robust -> robust row is the reference pair
    (Linf 8/255 -> L2 1.0) unless st_r2 names the second robust model."""
    def first(*cands: str, pool: list[str], avoid: str = "") -> str:
        return next((c for c in cands if c and c in pool and c != avoid),
                    next((c for c in pool if c != avoid), pool[0]))
    r = first(s.get("st_r", ""), s["a"] if chosen_a else "", STITCH_ROBUST, pool=robust)
    st = first(s.get("st_s", ""), STITCH_STANDARD, pool=standard)
    st2 = first(s.get("st_s2", ""), STITCH_STANDARD_2, pool=standard, avoid=st)
    if s.get("st_r2"):
        pair = (r, first(s["st_r2"], pool=robust, avoid=r))
    else:
        front = first(STITCH_ROBUST, pool=robust)
        pair = (front, first(STITCH_ROBUST_2, pool=robust, avoid=front))
    return [(r, st), (st, r), (st, st2), pair]


def page_recipe(s: Mapping[str, Any]) -> Recipe:
    """The recipe a view of the page names: its recipe and the advanced settings that
    differ from it (None: the shipped one)."""
    chosen = {"init": s.get("st_init") or None,
              "epochs": int(s["st_epochs"]) if s.get("st_epochs") else None,
              "train_images": int(s["st_train"]) if s.get("st_train") else None,
              "rank": int(s["st_rank"]) if s.get("st_rank") else None,
              "adversarial": s.get("st_adv") or None, "attack": s.get("st_attack") or None}
    if chosen["adversarial"] == "madry":
        chosen["alpha"] = float(s.get("st_alpha") or 1)
    if chosen["adversarial"] == "trades":
        chosen["beta"] = float(s.get("st_beta") or 1)
    recipe = {"recipe": s.get("st_recipe") or "short",
              **{k: v for k, v in chosen.items() if v is not None}}
    return None if recipe == {"recipe": "short"} else recipe


def stitch_plan(load: jobs.Loader, s: Mapping[str, Any], rows: list[tuple[str, str]]
                ) -> StitchMatrix:
    """The stitching matrix's jobs, on CIFAR-10 or the view's image folder, at the view's
    recipe."""
    return stitch_matrix(load, rows, s["st_method"], recipe=page_recipe(s),
                         folder=s.get("st_folder") or None)


def view_jobs(load: jobs.Loader, s: Mapping[str, Any]) -> list[jobs.Job]:
    """The jobs of a view of the page, with the shipped zoo's robust and standard models."""
    cards = {n: zoo.card(n) for n in zoo.names()}
    robust = [n for n, c in cards.items() if zoo.is_robust(c)]
    standard = [n for n, c in cards.items() if not zoo.is_robust(c)]
    return stitch_plan(load, s, stitch_rows(s, robust, standard, s["a"] != DEFAULT_A)).jobs()


# --------------------------------------------------------------------- costs

def _evaluation_passes(job: jobs.Job) -> tuple[float, float, int, dict]:
    """Forward and gradient passes of scoring on the test images (clean, then the attack
    on the first robust_images), the test count and the recipe."""
    recipe = stitch_recipe(job.spec["args"]["recipe"], job.spec["args"].get("folder"))
    test = job.inputs["test"]["n"]
    robust = min(recipe["robust_images"] or test, test)
    return test + robust, robust * jobs.attack_steps(recipe["attack"].to_dict()), robust, recipe


def cross_cost(job: jobs.Job) -> jobs.Cost:
    """A cell's cost, with the scoring repeated on each further test set."""
    cell = cell_cost(job)
    forward, gradient, _, _ = _evaluation_passes(job)
    more = len(job.inputs["more_tests"])
    return jobs.Cost({spec: (f + more * forward / 2, g + more * gradient / 2)
                      for spec, (f, g) in cell.passes.items()})


def accuracy_cost(job: jobs.Job) -> jobs.Cost:
    """An accuracy attack is counted at full length, though it stops at an image once that
    is misclassified (bench/estimates.py: within 10% of the run, up to 1.5x above it for
    a standard model)."""
    forward, gradient, _, _ = _evaluation_passes(job)
    return jobs.Cost({job.models[0]: (forward, gradient)})


def cell_cost(job: jobs.Job) -> jobs.Cost:
    """Scoring as for accuracy, plus the fit: a least-squares pass over the training images
    (direct), or the least-squares start and epochs of training through the end model
    (task); the stitched representation against the end model's. A stitched pass runs
    the front to the layer and the end from it: half of each; training runs the front
    without gradients."""
    forward, gradient, robust, recipe = _evaluation_passes(job)
    train, trained = job.inputs["train"]["n"], 0
    if job.inputs["method"] == "direct":
        forward += train
    else:
        start = ((recipe["init_batches"] or 0) * recipe["batch_size"]
                 if recipe["init"] == "direct" else 0)
        forward += min(start, train)
        trained = recipe["epochs"] * train
        # an adversarial stitcher: the attack's steps through the whole stitched network
        steps = recipe["train_attack"].steps
        if recipe["adversarial"] == "madry":
            gradient += trained * recipe["alpha"] * steps
        elif recipe["adversarial"] == "trades":   # + the clean answer, + the adversarial loss
            gradient += trained * steps
            forward += trained
            trained *= 2
    forward += robust
    front, end = job.models
    passes = {front: ((forward + trained) / 2, gradient / 2)}
    f, g = passes.get(end, (0.0, 0.0))
    passes[end] = (f + forward / 2, g + (gradient + trained) / 2)
    return jobs.Cost(passes)


# -------------------------------------------------------------- command line

def _cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--front", action="append", help="front model(s); with --end, one pair each")
    p.add_argument("--end", action="append", help="end model(s), in the order of --front")
    p.add_argument("--layers", default="all", help="'all' stitch points or a comma list")
    p.add_argument("--method", default="both", choices=["task", "direct", "both"])
    p.add_argument("--recipe", default="short", choices=list(RECIPES),
                   help="short: a least-squares start, 1 epoch on 10,000 images (the shipped "
                        "cells); paper: a random start, 30 epochs on all 50,000")
    p.add_argument("--init", choices=INITS, help="the stitching layer's start (task loss)")
    p.add_argument("--epochs", type=int, help="task-loss training epochs")
    p.add_argument("--train-images", type=int, help="training images")
    p.add_argument("--rank", type=int, help="a low-rank stitching layer of this rank")
    p.add_argument("--adversarial", choices=ADVERSARIAL,
                   help="train the stitching layer adversarially: madry (PGD-10 Linf 8/255 on "
                        "a share alpha of each batch) or trades (weight beta)")
    p.add_argument("--alpha", type=float, help="madry: the share of each batch attacked "
                                                  "(default 1)")
    p.add_argument("--beta", type=float, help="trades: the weight of the KL term (default 1)")
    p.add_argument("--robust-attack", choices=list(ROBUST_ATTACKS),
                   help="robust accuracy under this unforeseen attack instead of PGD-20")
    p.add_argument("--train-set", choices=datasets.NAMES,
                   help="cross-task stitching: train the stitching layer on this data set's "
                        "training images (front and end trained on different data sets)")
    p.add_argument("--test-set", action="append", choices=datasets.NAMES,
                   help="cross-task stitching: score on this data set's test images (repeat "
                        "for both tasks; default: the training set)")
    p.add_argument("--device")
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.add_argument("--out", help="write the cells as JSON here")


def _cli(args: argparse.Namespace) -> Any:
    """Stitching cells for model pairs (default: the four pairs of the shipped zoo)."""
    load = zoo.loader(args.device)
    if args.front or args.end:
        if not args.front or not args.end or len(args.front) != len(args.end):
            raise RobustLensError("give one --end for every --front")
        pairs = list(zip(args.front, args.end))
    else:
        pairs = default_stitch_pairs()
    methods = ["task", "direct"] if args.method == "both" else [args.method]
    layers = None if args.layers == "all" else args.layers.split(",")
    chosen = {"init": args.init, "epochs": args.epochs, "train_images": args.train_images,
              "rank": args.rank, "adversarial": args.adversarial, "alpha": args.alpha,
              "beta": args.beta, "attack": args.robust_attack}
    recipe = {"recipe": args.recipe, **{k: v for k, v in chosen.items() if v is not None}}
    if args.train_set or args.test_set:
        return _cli_cross_task(args, load, pairs, methods, layers, recipe)
    matrices = [stitch_matrix(load, pairs, method, layers, recipe) for method in methods]
    out: dict = {"recipe": {m.method: describe_recipe(m.recipe, m.method) for m in matrices},
                 "pairs": [{"front": f, "end": e, "cells": {}} for f, e in pairs],
                 "accuracy": {s: run_printed(job, args.force)
                              for s, job in sorted(matrices[0].donors.items())}}
    for m in matrices:
        for row, cell_jobs in zip(out["pairs"], m.cells):
            for layer, job in zip(m.grid.layers, cell_jobs):
                cell = run_printed(job, args.force)
                row["cells"][f"{m.method}/{layer}"] = {
                    **{k: cell.get(k) for k in ("clean_accuracy", "robust_accuracy",
                                                "dm_error", "test_representation_error",
                                                "test_cka", "effective_rank")},
                    "recipe": cell_recipe(cell)}
    return write_json(out, args.out) if args.out else out


def _cli_cross_task(args: argparse.Namespace, load: jobs.Loader, pairs: list[tuple[str, str]],
                    methods: list[str], layers: list[str] | None, recipe: dict) -> Any:
    """Cross-task cells: accuracy on each test set per pair, method and layer."""
    if not args.train_set:
        raise RobustLensError("cross-task stitching needs --train-set (the data set the "
                              "stitching layer learns on)")
    tests = args.test_set or [args.train_set]
    grid = Grid.of([(load(f), load(e)) for f, e in pairs], layers)
    out: dict = {"train_set": args.train_set, "test_sets": tests,
                 "recipe": {m: describe_recipe(stitch_recipe(recipe), m) for m in methods},
                 "pairs": [{"front": f, "end": e, "cells": {}} for f, e in pairs]}
    for method in methods:
        for row, (f, e), points in zip(out["pairs"], pairs, grid.points):
            for layer, end_layer in points:
                cell = run_printed(cross_task_job(load, f, e, layer, method, recipe,
                                                  train_set=args.train_set, test_sets=tests,
                                                  end_layer=end_layer), args.force)
                row["cells"][f"{method}/{layer}"] = {
                    "tests": cell["tests"], "test_cka": cell.get("test_cka"),
                    "effective_rank": cell.get("effective_rank"), "recipe": cell_recipe(cell)}
    return write_json(out, args.out) if args.out else out


# ---------------------------------------------------------------------- sweeps

def _grid(options: Mapping[str, Any], models: list[str], load: jobs.Loader) -> list[jobs.Job]:
    """stitching: {pairs: all | [[front, end], ...], layers: all | [...], method: [task,
    direct], folder}: the whole matrix of the pairs, per method."""
    from core.jobs import sweep
    layers = options.get("layers", "all")
    rows = sweep.pairs(options.get("pairs"), models, True, "stitching")
    return [job for method in sweep.listed(options.get("method", "task"), "stitching.method")
            for job in stitch_matrix(load, rows, method,
                                     None if layers == "all" else
                                     sweep.listed(layers, "stitching.layers"),
                                     folder=options.get("folder")).jobs()]


def _accuracy_grid(options: Mapping[str, Any], models: list[str], load: jobs.Loader
                   ) -> list[jobs.Job]:
    """accuracy: true: clean and robust accuracy of every model (the matrix's recipe)."""
    return [accuracy_job(load, m) for m in models]


# ----------------------------------------------------------------------- page

SETTINGS = (
    Setting("st_r", "", "Robust model", help="Empty: model A when you chose a robust "
            "one in the sidebar, else the Linf 8/255 model."),
    Setting("st_s", "", "Standard model", help="Empty: standard seed 0."),
    Setting("st_s2", "", "Second standard model"),
    Setting("st_r2", "", "Second robust model"),
    Setting("st_method", "task", "Matching", METHODS,
            {"task": "task loss", "direct": "direct"},
            help="Task loss: the stitching layer is trained with cross-entropy through "
                 "the frozen end model. Direct: a closed-form least-squares fit to the end "
                 "model's own activation at that layer (every pixel a sample)."),
    Setting("st_metric", "robust", "Cells show", tuple(METRIC_SCALES),
            {"clean": "clean accuracy", "robust": "robust accuracy",
             "clean_rel": "clean, relative to the end model",
             "robust_rel": "robust, relative to the end model",
             "cka": "CKA, stitched vs end representation",
             "relative_l2": "relative L2, stitched vs end representation",
             "effective_rank": "effective rank of the stitch"},
            help="CKA and relative L2 compare the stitched representation with the one the "
                 "end model computes itself at that layer, on test images; the effective rank "
                 "counts the directions the stitching layer really uses. Cells stored before "
                 "these were measured show a dash: compute them again with --force on the "
                 "command line."),
    Setting("st_recipe", "short", "Recipe", tuple(RECIPES),
            {"short": "short", "paper": "paper's"},
            help="Short: a least-squares start, then 1 epoch on 10,000 training images, what "
                 "the shipped cells use. The paper's: a random start, 30 epochs on all 50,000 "
                 "(a GPU job). Direct matching reads only the training images."),
    Setting("st_init", "", "Start", ("", *INITS),
            {"": "the recipe's", **START_NAMES},
            help="Where task-loss training starts: PyTorch's random init, the identity or a "
                 "random permutation of the channels (equal widths only), or the "
                 "least-squares fit."),
    Setting("st_epochs", "", "Epochs", ("", "1", "3", "10", "30")),
    Setting("st_train", "", "Training images", ("", "1000", "10000", "50000")),
    Setting("st_rank", "", "Rank", ("", "1", "2", "4", "8", "16", "32", "64", "128"),
            {"": "full"}, help="A low-rank stitching layer: the map goes through this many "
                               "channels (least squares: the best map of that rank)."),
    Setting("st_adv", "", "Adversarial stitcher", ("", *ADVERSARIAL),
            {"": "no", "madry": "Madry (PGD)", "trades": "TRADES"},
            help="Train the stitching layer on attacked images (PGD-10 Linf 8/255, step "
                 "2/255, against the whole stitched network), as the paper's trainers do: "
                 "Madry replaces a share alpha of each batch, TRADES adds beta x the KL "
                 "divergence between the answers on clean and attacked images. Robust "
                 "accuracy is then measured with the stronger PGD-20 with a random start."),
    Setting("st_alpha", "1", "Attack ratio alpha", ("1", "0.75", "0.5", "0.25")),
    Setting("st_attack", "", "Robust accuracy under", ("", *ROBUST_ATTACKS), ROBUST_ATTACK_LABELS,
            help="The attack of the robust accuracy: PGD-20 (the best iterate per image), or "
                 "one of the unforeseen attacks of Cianfarani et al. 2022 at their evaluation "
                 "settings (snow, Gabor noise, JPEG coefficients; 10 steps, the last iterate)."),
    Setting("st_beta", "1", "TRADES beta", ("1", "3", "6")),

    Setting("st_cell", [0, 0], "Cell"),
    Setting("st_folder", "", "Image folder", help=FOLDER_HELP + " Its fixed shuffle "
            "gives the stitching layer's training images and, after them, the test images.",
            server_path=True),
)

register(Analysis(
    "stitching",
    kinds={"stitch_cell": jobs.Kind(stitch_cell_job, models=("front", "end"),
                                    reads=("train", "test"), cost=cell_cost),
           "stitch_cross": jobs.Kind(cross_task_job, models=("front", "end"), shipped=False,
                                     cost=cross_cost),
           "accuracy": jobs.Kind(accuracy_job, reads=("test",), cost=accuracy_cost)},
    commands=(Command("stitch", _cli_arguments, _cli),),
    sweeps=(Sweep("stitching", _grid), Sweep("accuracy", _accuracy_grid)),
    pages=(Page("stitching", "pages/stitching.py", "Stitching matrix",
                ":material/join_inner:", 2, SETTINGS, view_jobs,
                summary="The front of one network, a trained 1x1 convolution, the back of another:"
                        " can the end model use the front model's representation?",
                about="The front of one network up to a layer, a trained 1x1 convolution, and the "
                      "rest of another network. Both donors are frozen: only the stitching layer "
                      "learns. Task-loss matching trains it with cross-entropy through the end "
                      "model; direct matching fits it by least squares to the end model's own "
                      "activation (Balogh & Jelasity's AAAI 2025 follow-up). Click a cell for its "
                      "details.",
                paper="Balogh & Jelasity, On the Functional Similarity of Robust and "
                      "Non-Robust Neural Representations, ICML 2023",
                cite="Balogh & Jelasity, ICML 2023"),),
))
