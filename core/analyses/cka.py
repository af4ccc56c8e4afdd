"""Centered kernel alignment (CKA): HSIC estimators, kernels, minibatch CKA matrices;
and the CKA explorer's analysis (its jobs, their cost, its command line, sweep grid
and page settings).

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L)) for kernel (Gram) matrices
of two representations of the same n inputs (Kornblith et al. 2019). Two HSIC
estimators:

- biased: tr(K H L H) / (n - 1)^2, H the centring matrix (Kornblith et al. 2019);
- unbiased: the U-statistic of Song et al. (2012), which minibatch CKA needs
  (Nguyen et al. 2021; Cianfarani et al. 2022): summed over batches it converges
  to the full-data value, while the biased one is dominated by batch-size bias.

Both are inner products of centred kernels: <HKH, HLH> / (n-1)^2 and
<U(K), U(L)> / (n(n-3)) with U the U-centring of Szekely & Rizzo (2014). That is
what makes a whole layer-by-layer matrix cheap: each layer's kernel is centred
once per batch and every pair's HSIC comes out of one matrix product.

Conventions:
- a constant layer (every example's output equal, up to the rounding of the
  activations' dtype) has a kernel that centres to zero; it is made exactly
  zero so that rounding cannot fake a dependence, and CKA is defined as 0
  whenever a self-HSIC is 0: defined, NaN-free, and "no shared structure";
- HSIC arithmetic is float64; in `cka_matrix` the Gram matrices themselves are
  products in the activations' dtype (float32: the costly step, see there);
- the RBF bandwidth is sigma = sigma_frac * the median pairwise distance, per
  representation and per batch.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from core import data, jobs
from core.analyses import Analysis, Command, Page, Sweep, register, similarity
from core.analyses.attacks import PGD, Attack, examples, perturb
from core.analyses.unforeseen import JPEG, Gabor, Snow, Unforeseen
from core.data import batch_sizes, batches
from core.jobs.results import write_json
from core.jobs.runner import run_printed
from core.models import zoo
from core.models.probe import Probe, check_input_size
from core.progress import Reporter, report
from core.views import DEFAULT_A, DEFAULT_B, FOLDER_HELP, Setting

Array = torch.Tensor | np.ndarray

KERNELS = ("linear", "rbf")
ADV_AGAINST = ("self", "a", "b")
_F64_EPS = torch.finfo(torch.float64).eps


# --------------------------------------------------------------------- kernels

def _as_features(X: Array) -> tuple[torch.Tensor, float]:
    """(n, ...) tensor or array -> (n, d) float64 (on the tensor's device) and
    the rounding precision of the input's own dtype."""
    t = X.detach() if torch.is_tensor(X) else torch.from_numpy(np.asarray(X))
    eps = torch.finfo(t.dtype).eps if t.is_floating_point() else _F64_EPS
    t = t.to(torch.float64)
    if t.ndim == 0 or t.shape[0] < 2:
        raise ValueError("CKA compares examples: it needs at least 2, not "
                         f"{len(t) if t.ndim else 0}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("a representation holds NaN or infinite values: CKA is undefined")
    return (t.reshape(t.shape[0], -1) if t.ndim != 1 else t[:, None]), eps


def _as_kernel(K: Array) -> torch.Tensor:
    """A user's kernel matrix as float64, symmetrised (both estimators assume symmetry)."""
    t = K.detach() if torch.is_tensor(K) else torch.from_numpy(np.asarray(K))
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"a kernel matrix must be square, not of shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    return (t + t.T) / 2


def _shifted_gram(X: torch.Tensor, eps: float) -> torch.Tensor:
    """(X - x_1)(X - x_1)^T; zero when every row equals the first up to rounding
    at precision eps (a constant layer).

    Subtracting one example changes no HSIC (centring removes any common shift)
    but keeps the product precise when a layer's mean dwarfs its spread, at
    about half the cost of subtracting the column means.
    """
    D = X - X[:1]
    G = D @ D.T
    if G.diagonal().amax() <= (16 * eps) ** 2 * X[0].square().sum():
        G.zero_()
    return G


def _mean_dominated(G: torch.Tensor) -> bool:
    """Whether under a quarter of a Gram's trace is spread about the mean: then
    centring cancels most of each entry and its rounding error (relative to the
    centred kernel) grows past 4x; a constant layer (spread 0) always is."""
    n = G.shape[0]
    trace = G.diagonal().sum()
    return bool(trace - G.sum() / n < 0.25 * trace)


def gram_linear(X: Array) -> torch.Tensor:
    """Linear kernel, (n, n) float64, of the features shifted by the first example:
    (X - x_1)(X - x_1)^T has the same HSIC with any kernel as X X^T, and is
    exactly zero for a constant X (up to the rounding of X's own dtype)."""
    return _shifted_gram(*_as_features(X))


def gram_rbf(X: Array, sigma_frac: float = 0.8) -> torch.Tensor:
    """Gaussian kernel exp(-|xi - xj|^2 / (2 sigma^2)), (n, n) float64, with
    sigma = sigma_frac * the median distance between distinct examples.

    Constant X gives the zero matrix (a constant kernel centres to zero; see
    the module notes).
    """
    return _rbf_from_gram(gram_linear(X), sigma_frac)


def _is_constant(K: torch.Tensor) -> bool:
    """All entries equal up to float64 rounding (such a kernel centres to zero)."""
    return bool(K.amax() - K.amin() <= 16 * _F64_EPS * K.abs().amax())


def _median_distance(d2: torch.Tensor) -> float:
    """Median distance over distinct pairs (numpy's convention: the mean of the two
    middle values) from a symmetric matrix of squared distances with a zero diagonal.

    Sorted, the n x n entries are the n diagonal zeros, then every pair twice; so the
    pairs' middle values sit at ranks n + m and n + m + 1, m = n(n-1)/2, and no
    mask or copy of the upper triangle is needed.
    """
    n = d2.shape[0]
    flat, rank = d2.reshape(-1), n + n * (n - 1) // 2
    lo, hi = flat.kthvalue(rank).values, flat.kthvalue(rank + 1).values
    return float((lo.sqrt() + hi.sqrt()) / 2)


def _rbf_from_gram(G: torch.Tensor, sigma_frac: float) -> torch.Tensor:
    """RBF kernel from a float64 (shifted) linear Gram."""
    if sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be positive, not {sigma_frac}")
    if not G.any():  # a constant layer
        return torch.zeros_like(G)
    sq = G.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * G).clamp_min_(0)
    d2.fill_diagonal_(0)
    median = _median_distance(d2)
    if median == 0:
        # most pairs coincide: the limit of a vanishing bandwidth
        return (d2 == 0).to(G.dtype)
    return d2.mul_(-1 / (2 * (sigma_frac * median) ** 2)).exp_()


# ------------------------------------------------------------------------ HSIC

def _min_n(unbiased: bool) -> int:
    return 4 if unbiased else 2


class _Kernels:
    """The kernels of several layers on one batch, (L, n, n) float64, centred in
    place: HKH (biased) or the U-centring (unbiased). Every pairwise HSIC is then
    an inner product of flattened kernels, so a whole layer-by-layer block is
    one matrix product."""

    def __init__(self, count: int, n: int, unbiased: bool, device: torch.device) -> None:
        if n < _min_n(unbiased):
            raise ValueError(f"{'unbiased' if unbiased else 'biased'} HSIC needs at least "
                             f"{_min_n(unbiased)} examples, got {n}")
        self.k = torch.empty(count, n, n, dtype=torch.float64, device=device)
        self.unbiased = unbiased
        self.norm = float(n * (n - 3)) if unbiased else float((n - 1) ** 2)

    def centre(self) -> None:
        """All layers at once: C = K - r 1^T - 1 r^T with r from the row sums
        (HKH: r = row mean - grand mean / 2; U-centring, zero diagonal:
        r = row sum / (n-2) - total / (2(n-1)(n-2)))."""
        k, n = self.k, self.k.shape[1]
        if self.unbiased:
            k.diagonal(dim1=1, dim2=2).zero_()
        row = k.sum(2)
        if self.unbiased:
            r = row / (n - 2) - row.sum(1, keepdim=True) / (2 * (n - 1) * (n - 2))
        else:
            r = row / n - row.sum(1, keepdim=True) / (2 * n * n)
        ones = torch.ones_like(r)
        # one fused pass over the kernels: a batched rank-2 update
        k.baddbmm_(torch.stack([r, ones], 2), torch.stack([ones, r], 1), alpha=-1)
        if self.unbiased:
            k.diagonal(dim1=1, dim2=2).zero_()

    def to(self, device: torch.device) -> "_Kernels":
        self.k = self.k.to(device)
        return self

    def cross(self, other: "_Kernels") -> torch.Tensor:
        """(len(self), len(other)) HSIC of every pair of layers."""
        return self.k.flatten(1) @ other.k.flatten(1).T / self.norm

    def self_hsic(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.k.flatten(1), dim=1).square() / self.norm


def _pair_hsic(K: torch.Tensor, L: torch.Tensor, unbiased: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2 x 2 HSICs of kernels K and L (cross, self)."""
    if K.shape != L.shape:
        raise ValueError(f"both sides must hold the same examples: {K.shape[0]} vs {L.shape[0]}")
    kernels = _Kernels(2, K.shape[0], unbiased, K.device)
    for i, M in enumerate((K, L)):
        # a constant kernel centres to zero; exactly, so rounding fakes no dependence
        kernels.k[i] = 0 if _is_constant(M) else M
    kernels.centre()
    return kernels.cross(kernels), kernels.self_hsic()


def hsic_biased(K: Array, L: Array) -> float:
    """tr(K H L H) / (n - 1)^2 for symmetric (n, n) kernels (Kornblith et al. 2019)."""
    return float(_pair_hsic(_as_kernel(K), _as_kernel(L), False)[0][0, 1])


def hsic_unbiased(K: Array, L: Array) -> float:
    """The unbiased HSIC estimator of Song et al. (2012), n >= 4, symmetric kernels."""
    return float(_pair_hsic(_as_kernel(K), _as_kernel(L), True)[0][0, 1])


def _cka(hab: torch.Tensor, haa: torch.Tensor, hbb: torch.Tensor) -> torch.Tensor:
    """CKA from cross and self HSICs; 0 where a self-HSIC is 0 (a constant layer)."""
    denom = (haa[:, None] * hbb[None, :]).sqrt()
    ok = denom > 0
    return torch.where(ok, hab / denom.where(ok, torch.ones_like(denom)),
                       torch.zeros_like(hab))


def _pair_cka(K: torch.Tensor, L: torch.Tensor, unbiased: bool) -> float:
    h, s = _pair_hsic(K, L, unbiased)
    return float(_cka(h[:1, 1:], s[:1], s[1:])[0, 0])


def centred_kernel(K: Array, unbiased: bool = False) -> torch.Tensor:
    """A kernel centred as HSIC centres it (HKH, or the U-centring with its zero
    diagonal): HSIC(K, L) is then <Kc, Lc> / a constant, and centring commutes with a
    permutation of the images (a permutation null needs one centring)."""
    K = _as_kernel(K)
    kernels = _Kernels(1, K.shape[0], unbiased, K.device)
    kernels.k[0] = 0 if _is_constant(K) else K
    kernels.centre()
    return kernels.k[0]


def centred_cka(Kc: torch.Tensor, Lc: torch.Tensor) -> float:
    """CKA of two kernels centred alike (centred_kernel)."""
    hab, haa, hbb = (torch.dot(u.flatten(), v.flatten()).view(1)
                     for u, v in ((Kc, Lc), (Kc, Kc), (Lc, Lc)))
    return float(_cka(hab.view(1, 1), haa, hbb)[0, 0])


def kernel_cka(K: Array, L: Array, unbiased: bool = False) -> float:
    """CKA of two representations given as their (n, n) kernels (Gram matrices)."""
    return _pair_cka(_as_kernel(K), _as_kernel(L), unbiased)


def linear_cka(X: Array, Y: Array, unbiased: bool = False) -> float:
    """Linear CKA of X (n, d1) and Y (n, d2), in float64; 0 if either is constant.
    Through the (n, n) kernels, or where d1 * d2 < n^2 through the features (the same
    estimators written with X^T Y: 10,000 images of 512 features need no 800 MB kernel)."""
    x, eps_x = _as_features(X)
    y, eps_y = _as_features(Y)
    if x.shape[1] * y.shape[1] >= x.shape[0] ** 2:
        return _pair_cka(_shifted_gram(x, eps_x), _shifted_gram(y, eps_y), unbiased)
    if len(x) != len(y):
        raise ValueError(f"both sides must hold the same examples: {len(x)} vs {len(y)}")
    if unbiased and len(x) < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 examples, got {len(x)}")
    # shifted by the first example as the kernels are (no HSIC changes), exactly zero
    # for a constant side
    sides = []
    for t, eps in ((x, eps_x), (y, eps_y)):
        d = t - t[:1]
        sides.append(torch.zeros_like(d) if d.square().sum(1).amax()
                     <= (16 * eps) ** 2 * t[0].square().sum() else d)
    h = _feature_hsics(*sides, unbiased)
    return float(_cka(h[0].view(1, 1), h[1].view(1), h[2].view(1))[0, 0])


def _feature_hsics(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """HSIC(K, L), HSIC(K, K), HSIC(L, L) of the linear kernels K = x x^T, L = y y^T up
    to one common factor, from the features: tr(K L) = |x^T y|^2 and K 1 = x (x^T 1).
    Biased: HKH's trace form on centred features. Unbiased (Song et al. 2012), K~ the
    kernel with a zero diagonal: tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1."""
    n = len(x)
    if not unbiased:
        xc, yc = x - x.mean(0), y - y.mean(0)
        return torch.stack([(a.T @ b).square().sum() for a, b in ((xc, yc), (xc, xc), (yc, yc))])
    parts = []
    for t in (x, y):
        diag = t.square().sum(1)                    # K's diagonal
        total = t.sum(0)
        parts.append((t, diag, total @ total - diag.sum(), t @ total - diag))

    def hsic(p: tuple, q: tuple) -> torch.Tensor:
        (a, da, sa, ra), (b, db, sb, rb) = p, q
        trace = (a.T @ b).square().sum() - (da * db).sum()
        return trace + sa * sb / ((n - 1) * (n - 2)) - 2 / (n - 2) * (ra @ rb)
    kx, ky = parts
    return torch.stack([hsic(kx, ky), hsic(kx, kx), hsic(ky, ky)])


def rbf_cka(X: Array, Y: Array, sigma_frac: float = 0.8, unbiased: bool = False) -> float:
    """RBF CKA of X (n, d1) and Y (n, d2), bandwidth sigma_frac * median distance,
    per representation; 0 if either is constant."""
    return _pair_cka(gram_rbf(X, sigma_frac), gram_rbf(Y, sigma_frac), unbiased)


# ---------------------------------------------------------------------- result

@dataclass
class CKAResult:
    """A CKA matrix and everything needed to say what it shows.

    matrix[i, j] is the minibatch CKA of layers_a[i] (model_a) and layers_b[j]
    (model_b); spread[i, j] the standard deviation over batches of the per-batch
    CKA (NaN with a single batch): how much one batch of `batch_size` images
    moves the value; the standard error of `matrix` is about spread / sqrt(n_batches).
    Another measure of core.analyses.similarity (`measure`, all images in one batch,
    feature maps entering as `maps` says) gives a result of the same shape.
    """
    matrix: np.ndarray
    spread: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    model_a: dict
    model_b: dict
    n: int
    n_batches: int
    kernel: str
    unbiased: bool
    batch_size: int
    sigma_frac: float | None  # RBF bandwidth fraction; None for the linear kernel
    attack_a: str
    attack_b: str
    adv_against: str
    seconds: float
    measure: str = "cka"            # "cka": the minibatch CKA of this module
    higher_is_similar: bool = True
    maps: str = "flatten"           # how a feature map enters the measure
    passes: int = 1                 # the minibatch CKA's passes over the images

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        self.spread = np.asarray(self.spread, dtype=np.float64)
        shape = (len(self.layers_a), len(self.layers_b))
        if self.matrix.shape != shape or self.spread.shape != shape:
            raise ValueError(f"matrix {self.matrix.shape} and spread {self.spread.shape} "
                             f"must both be {shape} (layers_a x layers_b)")

    def to_dict(self) -> dict[str, Any]:
        """Plain values and numpy arrays (what core.results stores)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(layers_a=list(self.layers_a), layers_b=list(self.layers_b),
                   model_a=dict(self.model_a), model_b=dict(self.model_b))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CKAResult":
        """Inverse of to_dict; arrays may also come back as lists or tensors."""
        def array(v: Any) -> np.ndarray:
            return (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)).astype(
                np.float64)
        return cls(**{**{f.name: d[f.name] for f in fields(cls) if f.name in d},
                      "matrix": array(d["matrix"]), "spread": array(d["spread"]),
                      "layers_a": list(d["layers_a"]), "layers_b": list(d["layers_b"])})

    def to_csv(self) -> str:
        """Long format, one row per layer pair: layer_a, layer_b, cka, spread."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["layer_a", "layer_b", "cka", "spread"])
        for i, la in enumerate(self.layers_a):
            for j, lb in enumerate(self.layers_b):
                writer.writerow([la, lb, repr(float(self.matrix[i, j])),
                                 repr(float(self.spread[i, j]))])
        return buf.getvalue()


# ---------------------------------------------------------------------- matrix

def describe_attack(attack: Attack | None) -> str:
    if attack is None:
        return "benign"
    return attack.describe() if hasattr(attack, "describe") else repr(attack)


# how a feature map enters the minibatch CKA: whole, or averaged over space (the paper's
# --pool_features for large images; vectors enter as they are)
MAPS = ("flatten", "pool")


def _layer_kernel(out: torch.Tensor, kernel: str, sigma_frac: float,
                  maps: str = "flatten") -> torch.Tensor:
    """One tap's (n, n) kernel from its output, which stays untouched."""
    X = (out.mean((2, 3)) if maps == "pool" and out.ndim == 4 else out).flatten(1)
    if X.dtype not in (torch.float32, torch.float64):
        X = X.float()  # half-precision Grams would lose the signal
    # the product is the costly step: in the activations' own precision, on the
    # raw activations unless their mean would swamp their spread in rounding
    G = X @ X.T
    if _mean_dominated(G):
        G = _shifted_gram(X, torch.finfo(X.dtype).eps)
    return _rbf_from_gram(G.double(), sigma_frac) if kernel == "rbf" else G


def _batch_kernels(model: Probe, x: torch.Tensor, layers: list[str], kernel: str,
                   unbiased: bool, sigma_frac: float, maps: str = "flatten") -> _Kernels:
    """One forward pass; every tap's kernel is taken inside its forward hook
    (Probe.features with reduce): activations are neither cloned nor kept, a
    kernel taken in the hook is safe from later in-place ops, and peak memory is
    the forward pass plus the (L, n, n) kernels, whatever the number of taps."""
    kernels = _Kernels(len(layers), x.shape[0], unbiased, model.device)
    taken = model.features(x.to(model.device), layers,
                           reduce=lambda _name, out: _layer_kernel(out, kernel, sigma_frac, maps))
    for i, name in enumerate(layers):
        kernels.k[i] = taken[name]
    kernels.centre()
    return kernels


def cka_matrix(model_a: Probe, model_b: Probe, loader: Any,
               layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
               kernel: str = "linear", unbiased: bool = True,
               attack_a: Attack | None = None, attack_b: Attack | None = None,
               adv_against: str = "self", sigma_frac: float = 0.8,
               progress: Reporter | None = None, batch_size: int = 1024, *,
               limit: int | None = None, shuffle_seed: int | None = 0,
               examples_a: torch.Tensor | None = None,
               examples_b: torch.Tensor | None = None,
               attack: Attack | None = None, passes: int = 1,
               maps: str = "flatten") -> CKAResult:
    """Minibatch CKA of every layer of model_a against every layer of model_b.

    CKA = sum_b HSIC(K_b, L_b) / sqrt(sum_b HSIC(K_b, K_b) * sum_b HSIC(L_b, L_b))
    over the batches of `loader` (Nguyen et al. 2021): anything core.data.batches
    reads. A data set is read in seeded random batches of `batch_size` (the first
    `limit` images of the order of shuffle_seed): a data set stored class by class
    read in order would give every batch a single class, and the minibatch
    estimate then measures something else. An iterable of (x, y) batches is read
    as it comes. Memory is one forward pass plus a (layers, n, n) float64 kernel
    stack per side, n the batch size: activations are reduced to their kernels
    inside the forward hooks, never kept, whatever the data size.

    attack_a / attack_b: None (benign inputs) or an attack callable as
    attack(model, x, y), e.g. attacks.PGD. adv_against says which model the
    adversarial examples are made against: "self" (each side its own model),
    "a" or "b" (that model, for every side with an attack). When both sides see
    the same inputs and model_a is model_b, one forward pass serves both.
    examples_a / examples_b: that side's adversarial examples made beforehand
    (attacks.examples with the same loader, batch_size, shuffle_seed and limit),
    used instead of running its attack again. attack: the same attack on both sides
    (the design's one-keyword form of attack_a = attack_b).

    passes: the paper's dataset passes: the same images read again passes - 1 times, each
    in another seeded batching (shuffled_order's next epochs over the images the first
    pass read; a data set read by index only), the HSICs summed over every batch of
    every pass; adversarial examples made beforehand are reused per image. maps:
    "flatten" (each feature map whole) or "pool" (averaged over space first, the paper's
    --pool_features for large images).

    Gram matrices are float32 products of the activations (of the activations
    minus the batch's first example where the mean dwarfs the spread, which
    keeps them precise), HSIC float64: CKA agrees with float64 to ~1e-6.
    progress: an Event after every batch, counting images.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    if attack is not None:
        if attack_a is not None or attack_b is not None:
            raise ValueError("give either attack (both sides) or attack_a / attack_b")
        attack_a = attack_b = attack
    if adv_against not in ADV_AGAINST:
        raise ValueError(f"adv_against must be one of {ADV_AGAINST}, not {adv_against!r}")
    if kernel == "rbf" and sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be positive, not {sigma_frac}")
    if not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be a whole number of at least 1, not {passes!r}")
    if passes > 1 and (shuffle_seed is None or not hasattr(loader, "subset")):
        raise ValueError("several passes re-batch a data set read by index in a seeded order")
    if maps not in MAPS:
        raise ValueError(f"a feature map enters CKA flattened or pooled, not {maps!r}")
    layers_a = model_a.check_layers(layers_a if layers_a is not None else model_a.layers)
    layers_b = model_b.check_layers(layers_b if layers_b is not None else model_b.layers)
    if not layers_a or not layers_b:
        raise ValueError("cka_matrix needs at least one layer on each side")
    min_n = _min_n(unbiased)

    def target(side: str) -> Probe:
        if adv_against == "self":
            return model_a if side == "a" else model_b
        return model_a if adv_against == "a" else model_b
    same_inputs = (attack_a is None and attack_b is None) or (
        attack_a is not None and attack_b is not None and target("a") is target("b")
        and (attack_a is attack_b or attack_a == attack_b))
    shared = model_a is model_b and same_inputs
    # each side's unique layers are computed once; idx maps requested -> computed
    names_a = list(dict.fromkeys(layers_a + layers_b if shared else layers_a))
    names_b = names_a if shared else list(dict.fromkeys(layers_b))
    idx_a = [names_a.index(n) for n in layers_a]
    idx_b = [names_b.index(n) for n in layers_b]

    sizes = batch_sizes(loader, batch_size, limit)
    total = sum(sizes) if sizes is not None else None
    small = [s for s in sizes or [] if s < min_n]
    if batch_size < min_n:
        raise ValueError(f"CKA needs at least {min_n} images per batch, not {batch_size}")
    if small:  # before any attack runs, not at the last batch
        raise ValueError(f"{total} images in batches of {batch_size} leave a batch of "
                         f"{small[0]}; CKA needs at least {min_n} per batch")
    for side, ex in (("a", examples_a), ("b", examples_b)):
        if ex is not None and total is not None and len(ex) != total:
            raise ValueError(f"examples_{side} holds {len(ex)} images for {total} in the data")

    def side_inputs(side: str, x: torch.Tensor, y: torch.Tensor,
                    where: torch.Tensor) -> torch.Tensor:
        attack, ex = (attack_a, examples_a) if side == "a" else (attack_b, examples_b)
        if attack is None:
            return x
        if ex is not None:
            return ex[where].to(x.device)
        model = target(side)
        return perturb(attack, model, x.to(model.device), y.to(model.device))

    device = model_a.device
    start = time.perf_counter()
    sum_ab = torch.zeros(len(layers_a), len(layers_b), dtype=torch.float64, device=device)
    sum_aa = torch.zeros(len(layers_a), dtype=torch.float64, device=device)
    sum_bb = torch.zeros(len(layers_b), dtype=torch.float64, device=device)
    per_batch: list[torch.Tensor] = []
    done, largest = 0, 0
    for x, y, where in _passes(loader, batch_size, device, shuffle_seed, limit, passes):
        check_input_size(x, model_a, model_b)
        if len(x) < min_n:
            raise ValueError(f"a batch of {len(x)} images is too small: "
                             f"{'unbiased' if unbiased else 'biased'} HSIC needs {min_n}")
        xa = side_inputs("a", x, y, where)
        ka = _batch_kernels(model_a, xa, names_a, kernel, unbiased, sigma_frac, maps)
        if shared:
            kb = ka
        else:
            xb = xa if same_inputs else side_inputs("b", x, y, where)
            kb = _batch_kernels(model_b, xb, names_b, kernel, unbiased, sigma_frac,
                                maps).to(device)
        hab = ka.cross(kb)[idx_a][:, idx_b]
        haa = ka.self_hsic()[idx_a]
        hbb = kb.self_hsic()[idx_b]
        del ka, kb
        sum_ab += hab
        sum_aa += haa
        sum_bb += hbb
        per_batch.append(_cka(hab, haa, hbb))
        done += len(x)
        largest = max(largest, len(x))
        whole = total * passes if total else done
        report(progress, done, whole, f"CKA: {done} of {whole} images")
    if not per_batch:
        raise ValueError("cka_matrix got no data")

    matrix = _cka(sum_ab, sum_aa, sum_bb).cpu().numpy()
    stacked = torch.stack(per_batch)
    spread = (stacked.std(0) if len(per_batch) > 1
              else torch.full_like(stacked[0], float("nan"))).cpu().numpy()
    return CKAResult(
        matrix=matrix, spread=spread, layers_a=layers_a, layers_b=layers_b,
        model_a=model_a.identity(), model_b=model_b.identity(), n=done // passes,
        n_batches=len(per_batch), kernel=kernel, unbiased=unbiased, batch_size=largest,
        sigma_frac=sigma_frac if kernel == "rbf" else None,
        attack_a=describe_attack(attack_a), attack_b=describe_attack(attack_b),
        adv_against=adv_against, seconds=time.perf_counter() - start, passes=passes,
        maps=maps)


def _passes(loader: Any, batch_size: int, device: torch.device, shuffle_seed: int | None,
            limit: int | None, passes: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, positions) of every batch of every pass: the first pass as core.data.batches
    reads the loader; the others re-batch the same images (its fixed subset) in the
    next seeded orders. positions: each image's place in the first pass's order."""
    done = 0
    for x, y in batches(loader, batch_size, device, shuffle_seed, limit):
        yield x, y, torch.arange(done, done + len(x))
        done += len(x)
    if passes > 1:
        images = data.fixed_subset(loader, done, shuffle_seed)
        for p in range(1, passes):
            order = data.shuffled_order(done, shuffle_seed, epoch=p)
            for s in range(0, done, batch_size):
                where = order[s:s + batch_size]
                x, y = next(batches(images.subset(where.tolist()), len(where), device, None))
                yield x, y, where


# ======================================================================= jobs

# Inputs a side of a comparison can see: benign images, or adversarial examples under
# the attacks of Cianfarani et al. 2022 (PGD, and the unforeseen snow, Gabor and JPEG)
INPUT_CHOICES: dict[str, PGD | Unforeseen | None] = {
    "benign": None,
    "linf": PGD.paper("linf"),
    "l2": PGD.paper("l2"),
    "snow": Snow(),
    "gabor": Gabor(),
    "jpeg": JPEG(),
}
INPUT_LABELS = {"benign": "benign", "linf": "PGD Linf 8/255", "l2": "PGD L2 1.0",
                "snow": "Snow (unforeseen)", "gabor": "Gabor (unforeseen)",
                "jpeg": "JPEG (unforeseen)"}


def input_attack(choice: str) -> PGD | Unforeseen | None:
    if choice not in INPUT_CHOICES:
        raise ValueError(f"inputs must be one of {list(INPUT_CHOICES)}, not {choice!r}")
    return INPUT_CHOICES[choice]


def cka_batch_size(n: int) -> int:
    """The paper's 1024, smaller for small n so that a cell has a spread over at
    least four batches."""
    return min(1024, max(250, n // 4))


def adversarial_job(load: jobs.Loader, spec: str, inputs: str, n: int = 10_000,
                    batch_size: int | None = None) -> jobs.Job:
    """PGD examples against model `spec` of the first n test images of the seeded
    order, made batch by batch as cka_job reads them: made once, shared by every
    CKA view that attacks this model."""
    batch_size = batch_size or cka_batch_size(n)
    probe, attack = load(spec), input_attack(inputs)
    jobs.on_cifar10("Adversarial CKA", probe)
    if attack is None:
        raise ValueError("benign inputs need no adversarial examples")
    key_inputs = {"model": probe.identity(), "attack": attack.to_dict(),
                  "batch_size": batch_size, "images": jobs.test_images(n)}

    def run(progress: Reporter) -> dict:
        return {"images": examples(probe, data.cifar10("test"), attack, batch_size,
                                   limit=n, progress=progress)}
    return jobs.make("adversarial_examples", key_inputs, run,
                     f"{INPUT_LABELS[inputs]} examples against {probe.name}, {n} images",
                     {"spec": spec, "inputs": inputs, "n": n, "batch_size": batch_size})


EXAMPLE_IMAGES = 8


def attack_examples_job(load: jobs.Loader, spec: str, inputs: str,
                        count: int = EXAMPLE_IMAGES) -> jobs.Job:
    """What an input choice looks like: the first `count` shipped CIFAR-10 samples
    (foolbox's), their adversarial examples against model `spec`, and its answers on
    both. Needs no data set."""
    probe, attack = load(spec), input_attack(inputs)
    jobs.on_cifar10("Adversarial examples", probe)
    if attack is None:
        raise ValueError("benign inputs need no adversarial examples")
    samples = data.cifar_samples()[:count]
    key_inputs = {"model": probe.identity(), "attack": attack.to_dict(),
                  "images": [s.key for s in samples]}

    def run(progress: Reporter) -> dict:
        attacked = examples(probe, samples, attack, len(samples), shuffle_seed=None,
                            progress=progress)
        clean = torch.stack([data.to_tensor(s.image) for s in samples])
        with torch.no_grad():
            answers = [probe(x.to(probe.device)).argmax(1).cpu().tolist()
                       for x in (clean, attacked)]
        return {"clean": clean, "attacked": attacked, "labels": [s.label for s in samples],
                "clean_answers": answers[0], "attacked_answers": answers[1],
                "classes": list(probe.classes)}
    return jobs.make("attack_examples", key_inputs, run,
                     f"{INPUT_LABELS[inputs]} on {len(samples)} samples against {probe.name}",
                     {"spec": spec, "inputs": inputs, "count": count})


def adversarial_needs(load: jobs.Loader, a: str, b: str, inputs_a: str, inputs_b: str,
                      adv_against: str, n: int, batch_size: int) -> dict[str, jobs.Job]:
    """The adversarial examples a view of a and b reads ({"examples_a": job, ...}), each
    side's made against the model adv_against names: its own, or a's or b's."""
    against = {"a": b if adv_against == "b" else a, "b": a if adv_against == "a" else b}
    return {f"examples_{side}": adversarial_job(load, against[side], choice, n, batch_size)
            for side, choice in (("a", inputs_a), ("b", inputs_b)) if choice != "benign"}


def cka_job(load: jobs.Loader, a: str, b: str, layers_a: str | list[str] = "blocks",
            layers_b: str | list[str] = "blocks", inputs_a: str = "benign",
            inputs_b: str = "benign", adv_against: str = "self", kernel: str = "linear",
            n: int = 10_000, batch_size: int | None = None, sigma_frac: float = 0.8,
            folder: str | None = None, passes: int = 1, maps: str = "flatten") -> jobs.Job:
    """Layer x layer CKA of model a against model b (see cka_matrix) on
    the first n test images of the seeded order (of CIFAR-10, or of the image
    `folder` at the models' input size), in seeded random batches; `passes` batchings
    of them, feature maps entering `maps` (flattened or pooled)."""
    if maps not in MAPS:
        raise ValueError(f"a feature map enters CKA flattened or pooled, not {maps!r}")
    if not isinstance(passes, int) or not 1 <= passes <= 10:
        raise ValueError(f"passes over the images: 1 to 10, not {passes!r}")
    # the paper's options, in the key only where they differ from the shipped results'
    options = {**({"passes": passes} if passes > 1 else {}),
               **({"maps": maps} if maps != "flatten" else {})}
    args = {"a": a, "b": b, "layers_a": layers_a, "layers_b": layers_b, "inputs_a": inputs_a,
            "inputs_b": inputs_b, "adv_against": adv_against, "kernel": kernel, "n": n,
            "batch_size": batch_size, "sigma_frac": sigma_frac,
            **({"folder": folder} if folder else {}), **options}
    pa, pb = load(a), load(b)
    source = jobs.image_folder("CKA", folder, pa, pb)
    if source is not None:
        n = min(n, len(source))
    batch_size = batch_size or cka_batch_size(n)
    la, lb = jobs.layer_list(pa, layers_a), jobs.layer_list(pb, layers_b)
    atk_a, atk_b = input_attack(inputs_a), input_attack(inputs_b)
    if atk_a is None and atk_b is None:
        adv_against = "self"  # irrelevant without attacks: one key for all
    inputs = {"a": pa.identity(), "b": pb.identity(), "layers_a": la, "layers_b": lb,
              "inputs_a": atk_a.to_dict() if atk_a else "benign",
              "inputs_b": atk_b.to_dict() if atk_b else "benign",
              "adv_against": adv_against, "kernel": kernel, "unbiased": True,
              "sigma_frac": sigma_frac if kernel == "rbf" else None,
              "batch_size": batch_size, "images": jobs.test_images(n) if source is None else
              {"folder": source.identity(), "order": "fixed-shuffle-0", "n": n}, **options}
    # CIFAR-10's adversarial examples are made once and shared by every view; a folder's
    # are made batch by batch as CKA reads them (224 px examples would not fit the store)
    needs = (adversarial_needs(load, a, b, inputs_a, inputs_b, adv_against, n, batch_size)
             if source is None else {})

    def run(progress: Reporter, examples_a: dict | None = None,
            examples_b: dict | None = None) -> dict:
        images = data.cifar10("test") if source is None else source
        res = cka_matrix(pa, pb, images, la, lb, kernel=kernel, unbiased=True,
                         attack_a=atk_a, attack_b=atk_b, adv_against=adv_against,
                         sigma_frac=sigma_frac, progress=progress, batch_size=batch_size,
                         limit=n, passes=passes, maps=maps,
                         examples_a=None if examples_a is None else examples_a["images"],
                         examples_b=None if examples_b is None else examples_b["images"])
        return res.to_dict()
    label = (f"CKA {pa.name} ({INPUT_LABELS[inputs_a]}) vs {pb.name} "
             f"({INPUT_LABELS[inputs_b]}), {n} images")
    return jobs.make("cka", inputs, run, label, args, needs)


# ----------------------------------------------------------- views of pairs

def paper_roles(load: jobs.Loader, s: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(robust, standard, whether the roles fit) of models A and B for the paper view, by
    their cards: B is the robust one when only B is; otherwise A (both or neither robust:
    the roles do not fit)."""
    a, b = s["a"], s["b"]
    robust_a, robust_b = zoo.is_robust(load(a).card), zoo.is_robust(load(b).card)
    return (b, a, True) if robust_b and not robust_a else (a, b, robust_a != robust_b)


def cka_pairs(load: jobs.Loader, s: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (first, second) model pairs a CKA view shows: the paper view's standard
    with itself, robust with itself, standard with robust."""
    if s["cka_view"] == "Paper view":
        robust, standard, _ = paper_roles(load, s)
        return [(standard, standard), (robust, robust), (standard, robust)]
    first, second = s["cka_pair"].split(" vs ")
    spec = {"A": s["a"], "B": s["b"]}
    return [(spec[first], spec[second])]


def cka_title(first: str, second: str, s: Mapping[str, Any]) -> tuple[str, str]:
    """The explore view's title: (the two models and, other than the minibatch CKA, the
    measure; their inputs: once when shared and, when adversarial, whose gradients made
    them)."""
    in_a, in_b = s["cka_in_a"], s["cka_in_b"]
    inputs = (f"{INPUT_LABELS[in_a]} inputs" if in_a == in_b
              else f"{INPUT_LABELS[in_a]} inputs to {first}, {INPUT_LABELS[in_b]} to {second}")
    if in_a != "benign" or in_b != "benign":
        inputs += {"self": ", each model's own", "a": f", made against {first}",
                   "b": f", made against {second}"}[s["cka_against"]]
    measure = s.get("cka_measure", "cka")
    models = f"{first} vs {second}"
    if measure != "cka":
        models = f"{measure_title(measure)}: {models}"
        inputs += f", feature maps {'pooled' if s.get('cka_maps') != 'flatten' else 'flattened'}"
    return models, inputs


def cka_request(load: jobs.Loader, x: str, y: str, layers: str | list[str],
                in_x: str = "benign", in_y: str = "benign", against: str = "self",
                kernel: str = "linear", n: int = 10_000, folder: str = "",
                batch_size: int | None = None, measure: str = "cka",
                maps: str = "auto", passes: int = 1) -> tuple[jobs.Job, bool]:
    """The job behind CKA(x, y) (or another `measure` of core.analyses.similarity, its
    feature maps entering as `maps` says) and whether its matrix must be transposed: the
    two sides are put in one canonical order (by model, then inputs), so that B vs A is
    A vs B transposed and is computed and shipped once (by the app, the CLI and sweeps);
    a measure that is not symmetric keeps the order asked. maps "auto": the minibatch CKA
    flattens maps of models below 224 px and pools larger ones (as the paper does), the
    other measures pool; passes: the minibatch CKA's passes over the images."""
    folder = folder or None
    if maps == "auto":
        large = max(load(x).input_size, load(y).input_size) >= 224
        maps = "pool" if measure != "cka" or large else "flatten"
    if measure != "cka":
        if folder:
            raise similarity.SimilarityError(
                "the other measures read CIFAR-10's test images: on an image folder, CKA")
        m = similarity.MEASURES.get(measure)
        if m is None:
            raise similarity.SimilarityError(
                f"no similarity measure is called {measure!r}; the measures: cka, "
                f"{', '.join(similarity.MEASURES)}")
        swap = m.symmetric and (x, in_x) > (y, in_y)
        if not swap:
            return similarity.similarity_job(load, x, y, measure, layers, layers, n, maps,
                                             in_x, in_y, against), False
        swapped = {"a": "b", "b": "a"}.get(against, against)
        return similarity.similarity_job(load, y, x, measure, layers, layers, n, maps,
                                         in_y, in_x, swapped), True
    if (x, in_x) <= (y, in_y):
        return cka_job(load, x, y, layers, layers, in_x, in_y, against, kernel, n, batch_size,
                       folder=folder, passes=passes, maps=maps), False
    swapped = {"a": "b", "b": "a"}.get(against, against)
    return cka_job(load, y, x, layers, layers, in_y, in_x, swapped, kernel, n, batch_size,
                   folder=folder, passes=passes, maps=maps), True


def transposed_cka(value: Mapping[str, Any]) -> dict:
    """A stored CKA result seen from the other side (rows and columns swapped)."""
    out = dict(value)
    for k in ("matrix", "spread"):
        out[k] = np.asarray(value[k]).T
    for a, b in (("layers_a", "layers_b"), ("model_a", "model_b"), ("attack_a", "attack_b")):
        out[a], out[b] = value[b], value[a]
    out["adv_against"] = {"a": "b", "b": "a"}.get(value["adv_against"], value["adv_against"])
    return out


def example_requests(load: jobs.Loader, s: Mapping[str, Any]) -> list[jobs.Job]:
    """What the view's attacked inputs look like: a few samples under each side's attack,
    made against the model that side's examples are made against (the paper view: the
    robust model's own). None for benign inputs or an image folder."""
    if s.get("cka_folder"):
        return []
    first, second = cka_pairs(load, s)[0]
    if s["cka_view"] != "Explore":
        wanted = [(paper_roles(load, s)[0], s["cka_in_a"])]
    else:
        against = s["cka_against"]
        wanted = [(second if against == "b" else first, s["cka_in_a"]),
                  (first if against == "a" else second, s["cka_in_b"])]
    seen: list[tuple[str, str]] = []
    for spec, choice in wanted:
        if choice != "benign" and (spec, choice) not in seen:
            seen.append((spec, choice))
    return [attack_examples_job(load, spec, choice) for spec, choice in seen]


def cka_requests(load: jobs.Loader, s: Mapping[str, Any]) -> list[tuple[jobs.Job, bool]]:
    """The (job, transposed) behind each panel of a CKA view."""
    n, layers, kernel = int(s["cka_n"]), s["cka_layers"], s["cka_kernel"]
    folder = s.get("cka_folder", "")
    measure = {"measure": s.get("cka_measure", "cka"), "maps": s.get("cka_maps", "auto"),
               "passes": int(s.get("cka_passes", 1))}
    if s["cka_view"] == "Paper view":
        return [cka_request(load, x, y, layers, s["cka_in_a"], s["cka_in_a"], "self", kernel, n,
                            folder, **measure) for x, y in cka_pairs(load, s)]
    (x, y), = cka_pairs(load, s)
    return [cka_request(load, x, y, layers, s["cka_in_a"], s["cka_in_b"], s["cka_against"],
                        kernel, n, folder, **measure)]


def calibration_requests(load: jobs.Loader, s: Mapping[str, Any], cell: tuple[int, int]
                         ) -> tuple[jobs.Job, jobs.Job] | None:
    """The calibration of the explore view's whole matrix (shipped for the default view)
    and of its cell (row, column), in the view's order; None on an image folder."""
    if s.get("cka_folder"):
        return None
    (first, second), = cka_pairs(load, s)
    la = jobs.layer_list(load(first), s["cka_layers"])
    lb = jobs.layer_list(load(second), s["cka_layers"])
    maps = "pool" if s["cka_maps"] == "auto" else s["cka_maps"]
    common = {"measure": s["cka_measure"], "n": int(s["cka_n"]), "maps": maps,
              "kernel": s["cka_kernel"], "inputs_a": s["cka_in_a"], "inputs_b": s["cka_in_b"],
              "adv_against": s["cka_against"]}
    i, j = cell
    return (similarity.calibration_job(load, first, second, la, lb, **common),
            similarity.calibration_job(load, first, second, [la[i]], [lb[j]], **common))


def _seed_pair(s: Mapping[str, Any]) -> tuple[str, str] | None:
    """Two standard models of the zoo that differ only in their seed (none on a folder)."""
    standard = [n for n in zoo.names() if not zoo.is_robust(zoo.card(n))]
    if len(standard) < 2 or s.get("cka_folder"):
        return None
    return standard[0], standard[1]


def _baseline_request(load: jobs.Loader, s: Mapping[str, Any], x: str,
                      y: str) -> tuple[jobs.Job, bool]:
    return cka_request(load, x, y, s["cka_layers"], s["cka_in_a"], s["cka_in_b"],
                       s["cka_against"], s["cka_kernel"], int(s["cka_n"]),
                       measure=s["cka_measure"], maps=s["cka_maps"],
                       passes=int(s["cka_passes"]))


def seed_baseline(load: jobs.Loader, stored: Callable[[jobs.Job], Any], s: Mapping[str, Any],
                  layer_a: str, layer_b: str) -> tuple[str, str, float] | None:
    """The natural baseline of a view's cell ("is 0.3 high?"): the same cell of the same
    view of two standard models of the zoo that differ only in their training seed, as
    (model, model, value) where that view is stored (the default views ship) and has the
    two layers; else None."""
    pair = _seed_pair(s)
    if pair is None:
        return None
    job, transposed = _baseline_request(load, s, *pair)
    value = stored(job)
    if value is None:
        return None
    res = CKAResult.from_dict(transposed_cka(value) if transposed else value)
    if layer_a not in res.layers_a or layer_b not in res.layers_b:
        return None
    return (*pair, float(res.matrix[res.layers_a.index(layer_a), res.layers_b.index(layer_b)]))


def cka_extras(load: jobs.Loader, s: Mapping[str, Any]) -> list[jobs.Job]:
    """What a view looks up beside its jobs: the selected cell's calibration (the whole
    matrix's where shipped), the two standard seeds' view, the samples under its attacks."""
    out = list(example_requests(load, s))
    if s["cka_view"] == "Explore":
        (first, second), = cka_pairs(load, s)
        i, j = s["cka_cell"] if isinstance(s.get("cka_cell"), (list, tuple)) else (0, 0)
        la = jobs.layer_list(load(first), s["cka_layers"])
        lb = jobs.layer_list(load(second), s["cka_layers"])
        calibration = calibration_requests(load, s, (min(i, len(la) - 1), min(j, len(lb) - 1)))
        out += list(calibration or ())
        baseline = _seed_pair(s)
        if baseline is not None:
            out.append(_baseline_request(load, s, *baseline)[0])
    return out


def measure_title(measure: str) -> str:
    """A measure as a figure's colour bar and a metric name it."""
    return "CKA" if measure == "cka" else similarity.MEASURES[measure].title


def measure_scale(measure: str) -> tuple[str, float, float, bool]:
    """A measure's colours in a figure (figures.Scale): its name, its fixed range, and
    whether it is a distance (low values the similar ones)."""
    if measure == "cka":
        return "CKA", 0.0, 1.0, False
    m = similarity.MEASURES[measure]
    return (m.title, *m.value_range, not m.higher_is_similar)


def result_caption(res: CKAResult) -> str:
    """How a matrix was estimated, in a line under it."""
    if res.measure == "cka":
        passes = f" x {res.passes} passes" if res.passes > 1 else ""
        pooled = ", feature maps pooled over space" if res.maps == "pool" else ""
        return (f"{res.n:,} images{passes}, batches of {res.batch_size}, {res.kernel} kernel, "
                f"unbiased HSIC{pooled}; computed in {res.seconds:.0f} s.")
    m = similarity.MEASURES[res.measure]
    maps = "pooled over space" if res.maps == "pool" else "flattened"
    return (f"{res.n:,} images at once, feature maps {maps}; "
            f"{'a distance (0: the same)' if not m.higher_is_similar else 'higher: more similar'}, "
            f"{m.invariances()}; computed in {res.seconds:.0f} s.")


MEASURE_LABELS = {"cka": "CKA, minibatch",
                  **{k: m.title for k, m in similarity.MEASURES.items()}}
MEASURE_HELP = (
    "CKA, minibatch: the paper's estimate, the unbiased HSIC accumulated over batches of "
    "1,024 images with the kernel beside it (linear or RBF); feature maps enter whole. "
    "The others compare all images at once, each feature map pooled over space or "
    "flattened: " + " ".join(f"**{m.title}**: {m.help + ' ' if m.help else ''}"
                             f"{m.invariances().capitalize()}."
                             for m in similarity.MEASURES.values()))


def cka_jobs(load: jobs.Loader, s: Mapping[str, Any]) -> list[jobs.Job]:
    """The jobs of a view; the page's default view also calibrates every cell (shipped)."""
    out = [job for job, _ in cka_requests(load, s)]
    defaults = {st.key: st.default for st in SETTINGS if st.key != "cka_cell"}
    if (s.get("a"), s.get("b")) == (DEFAULT_A, DEFAULT_B) and all(
            s.get(k) == v for k, v in defaults.items()):
        out.append(calibration_requests(load, s, (0, 0))[0])
    return out


def pair_value(value: Mapping[str, Any] | None, transposed: bool, layer_a: str,
               layer_b: str) -> float | None:
    """One layer pair's CKA from a stored result of cka_request (None if either layer is
    not in it, or nothing is stored)."""
    if value is None:
        return None
    value = transposed_cka(value) if transposed else value
    if layer_a not in value["layers_a"] or layer_b not in value["layers_b"]:
        return None
    return float(np.asarray(value["matrix"])[value["layers_a"].index(layer_a),
                                             value["layers_b"].index(layer_b)])


def paper_summary(first: CKAResult, second: CKAResult, cross: CKAResult) -> dict:
    """The paper view's numbers: the mean CKA between distinct layers within the first
    model and within the second (block structure), and the same-layer CKA across them
    (its diagonal, over the layers both have, and its mean)."""
    def off_diagonal(m: np.ndarray) -> float:
        return float(np.mean(m[~np.eye(len(m), dtype=bool)]))
    k = min(len(cross.layers_a), len(cross.layers_b))
    diagonal = np.diag(cross.matrix)[:k]
    return {"within_first": off_diagonal(first.matrix), "within_second": off_diagonal(second.matrix),
            "layers": list(cross.layers_a[:k]), "diagonal": diagonal,
            "same_layer": float(np.mean(diagonal))}


# --------------------------------------------------------------------- costs

def cka_cost(job: jobs.Job) -> jobs.Cost:
    """Each side's images through its model; on an image folder also the attacks, which
    run inside the job (CIFAR-10's adversarial examples are its needs)."""
    n, sides = job.inputs["images"]["n"], dict(zip("ab", job.models))
    passes = {spec: [0.0, 0.0] for spec in sides.values()}
    for spec in sides.values():
        passes[spec][0] += n
    if "folder" in job.inputs["images"]:
        against = job.inputs["adv_against"]
        for side in sides:
            attack = job.inputs[f"inputs_{side}"]
            if attack != "benign":
                passes[sides[side if against == "self" else against]][1] += \
                    n * jobs.attack_steps(attack)
    return jobs.Cost({spec: (f, g) for spec, (f, g) in passes.items()})


def adversarial_cost(job: jobs.Job) -> jobs.Cost:
    n = job.inputs["images"]["n"]
    return jobs.Cost({job.models[0]: (n, n * jobs.attack_steps(job.inputs["attack"]))})


def examples_cost(job: jobs.Job) -> jobs.Cost:
    n = len(job.inputs["images"])
    return jobs.Cost({job.models[0]: (2 * n, n * jobs.attack_steps(job.inputs["attack"]))})


# -------------------------------------------------------------- command line

def _cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, help="model A (shipped name or checkpoint path)")
    p.add_argument("--b", help="model B (default: A)")
    p.add_argument("--adv-a", default="benign", choices=list(INPUT_CHOICES),
                   help="inputs of A: benign, or examples of PGD linf (8/255) / l2 (1.0) or of "
                        "the unforeseen snow / gabor / jpeg attacks")
    p.add_argument("--adv-b", default="benign", choices=list(INPUT_CHOICES))
    p.add_argument("--against", default="self", choices=list(ADV_AGAINST),
                   help="which model the adversarial examples are made against")
    p.add_argument("--layers", default="blocks", help="blocks, all, or a comma list of taps")
    p.add_argument("--kernel", default="linear", choices=list(KERNELS))
    p.add_argument("--measure", default="cka", choices=["cka", *similarity.MEASURES],
                   help="cka: the minibatch CKA (--kernel); any other measure of the registry "
                        "compares all images at once (python -m core similarity lists them)")
    p.add_argument("--maps", default="auto", choices=["auto", *MAPS],
                   help="a feature map enters averaged over space (pool) or whole (flatten); "
                        "auto: whole for the minibatch CKA below 224 px, else pooled")
    p.add_argument("--passes", type=int, default=1,
                   help="the minibatch CKA's passes over the images (other batchings)")
    p.add_argument("-n", type=int, default=10_000, help="test images")
    p.add_argument("--batch-size", type=int, help="default: 1024 (fewer for small -n)")
    p.add_argument("--folder", default="", help="an image folder (ROOT/CLASS/IMAGE) instead "
                   "of CIFAR-10's test set")
    p.add_argument("--device")
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.add_argument("--out", help="write the result as JSON here")


def _cli(args: argparse.Namespace) -> Any:
    """Layer x layer CKA of two models (stored, under the key the app uses for the pair in
    either order; --out writes JSON)."""
    layers = args.layers if args.layers in jobs.LAYER_SETS else args.layers.split(",")
    job, transposed = cka_request(zoo.loader(args.device), args.a, args.b or args.a, layers,
                                  args.adv_a, args.adv_b, args.against, args.kernel, args.n,
                                  args.folder, args.batch_size, args.measure, args.maps,
                                  args.passes)
    value = run_printed(job, args.force)
    value = transposed_cka(value) if transposed else value
    if args.out is None:
        return {"layers_a": value["layers_a"], "layers_b": value["layers_b"],
                "matrix": [[round(float(v), 4) for v in row] for row in value["matrix"]]}
    return write_json(value, args.out)


# ---------------------------------------------------------------------- sweeps

def _grid(options: Mapping[str, Any], models: list[str], load: jobs.Loader) -> list[jobs.Job]:
    """cka: {pairs: all | [[a, b], ...], layers, inputs: [benign, linf, l2, snow, ...],
    kernel, measure: [cka, svcca, ...], maps, passes, n, folder}: every pair (each once: B vs A is
    A vs B transposed) at each input, kernel and measure."""
    from core.jobs import sweep
    grid = itertools.product(sweep.pairs(options.get("pairs"), models, False, "cka"),
                             sweep.listed(options.get("inputs", "benign"), "cka.inputs"),
                             sweep.listed(options.get("kernel", "linear"), "cka.kernel"),
                             sweep.listed(options.get("measure", "cka"), "cka.measure"))
    jobs_seen: dict[str, jobs.Job] = {}
    for (x, y), inputs, kernel, measure in grid:
        job = cka_request(load, x, y, options.get("layers", "blocks"), inputs, inputs, "self",
                          kernel, int(options.get("n", 10_000)), options.get("folder", ""),
                          measure=measure, maps=options.get("maps", "auto"),
                          passes=int(options.get("passes", 1)))[0]
        jobs_seen.setdefault(job.key, job)   # a measure takes no kernel: one job each
    return list(jobs_seen.values())


# ----------------------------------------------------------------------- page

SETTINGS = (
    Setting("cka_view", "Explore", "View", ("Explore", "Paper view"),
            help="Explore: one pair of models, any layers and inputs. Paper view: the "
                 "three panels of Cianfarani et al.'s figure."),
    Setting("cka_pair", "A vs B", "Compare", ("A vs B", "A vs A", "B vs B", "B vs A"),
            help="A and B are the models chosen in the sidebar."),
    Setting("cka_in_a", "benign", "Inputs, first side", tuple(INPUT_CHOICES), INPUT_LABELS,
            help="Benign test images, or PGD adversarial examples (Linf 8/255, step "
                 "2/255, or L2 1.0, step 0.1; 20 steps, random start), or the paper's "
                 "unforeseen attacks (Kang et al.): snow streaks, Gabor noise, or moved JPEG "
                 "coefficients, 10 steps each at the paper's evaluation settings. The page "
                 "shows a few samples under each."),
    Setting("cka_in_b", "benign", "Inputs, second side", tuple(INPUT_CHOICES), INPUT_LABELS),
    Setting("cka_against", "self", "Adversarial against", ADV_AGAINST,
            {"self": "own model", "a": "first model", "b": "second model"},
            help="Whose gradients make the adversarial examples: each side's own model, "
                 "or one model's examples shown to both (transfer)."),
    Setting("cka_layers", "blocks", "Layers", jobs.LAYER_SETS,
            {"blocks": "block outputs", "all": "every layer"},
            help="Block outputs: stem, 8 residual blocks, pool, logits. Every layer: "
                 "each conv, batch norm, ReLU, pool and linear layer."),
    Setting("cka_n", 10_000, "Images", (1000, 2000, 5000, 10_000),
            {n: f"{n:,}" for n in (1000, 2000, 5000, 10_000)}),
    Setting("cka_measure", "cka", "Measure", ("cka", *similarity.MEASURES), MEASURE_LABELS,
            help=MEASURE_HELP),
    Setting("cka_kernel", "linear", "Kernel", KERNELS,
            {"linear": "linear", "rbf": "RBF (0.8 x median)"}),
    Setting("cka_maps", "auto", "Feature maps", ("auto", "pool", "flatten"),
            {"auto": "auto", "pool": "pooled", "flatten": "flattened"},
            help="How a layer's feature map enters the measure: averaged over space (one "
                 "value per channel), or whole. Auto: whole for the minibatch CKA below "
                 "224 px, pooled for larger models (the paper's --pool_features) and for the "
                 "other measures (the CCA family refuses more than 4,096 dimensions, and "
                 "all images' features must fit 4 GB)."),
    Setting("cka_passes", 1, "Passes", (1, 2, 3, 5),
            help="The paper's dataset passes for the minibatch CKA: the same images read "
                 "again in other seeded batchings, the HSICs summed over all of them (the "
                 "estimate then depends less on how the images fell into batches)."),
    Setting("cka_cell", [0, 0], "Layer pair"),
    Setting("cka_folder", "", "Image folder", help=FOLDER_HELP, server_path=True),
)

register(Analysis(
    "cka",
    kinds={
        # 2: seeded random batches over the whole test set (class-sorted at n = 10,000 before)
        "cka": jobs.Kind(cka_job, version=2, models=("a", "b"), reads=("test",), cost=cka_cost),
        # made of data-set pixels and large: computed where they are used
        "adversarial_examples": jobs.Kind(adversarial_job, shipped=False, reads=("test",),
                                          cost=adversarial_cost),
        # pixels of data-set images: computed where they are shown, never shipped
        "attack_examples": jobs.Kind(attack_examples_job, shipped=False, cost=examples_cost),
    },
    commands=(Command("cka", _cli_arguments, _cli),),
    sweeps=(Sweep("cka", _grid),),
    pages=(Page("cka", "pages/cka.py", "CKA explorer", ":material/grid_on:", 1, SETTINGS,
                cka_jobs, view_extras=cka_extras,
                summary="How similar are the representations of two layers? Linear CKA over "
                        "CIFAR-10 test images or an image folder",
                about="Centered Kernel Alignment of every layer of one model with every layer of "
                      "another, on benign test images or on adversarial examples (PGD, or the "
                      "unforeseen snow, Gabor and JPEG attacks). The estimate"
                      " is the unbiased minibatch HSIC of Nguyen et al. (2021), accumulated over "
                      "seeded random batches of 1,024 images; a cell's spread is the standard "
                      "deviation of the per-batch CKA. Click a cell to see the layer pair, "
                      "its permutation null and 95% interval (on up to 2,000 images) and two "
                      "standard seeds' value. The Measure setting offers the field's other "
                      "measures (CKA on all images at once, debiased or not; mean CCA, SVCCA, "
                      "PWCCA; Procrustes; RSA; mutual k-NN), their invariances in its help.",
                paper="Cianfarani et al., Understanding Robust Learning through the Lens of "
                      "Representation Similarities, NeurIPS 2022",
                cite="Cianfarani et al., NeurIPS 2022"),),
))
