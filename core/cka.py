"""Centered kernel alignment (CKA): HSIC estimators, kernels, minibatch CKA matrices.

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

import csv
import io
import time
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch

from .attacks import Attack, perturb
from .data import batch_sizes, batches
from .probe import Probe, check_input_size
from .progress import Reporter, report

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


def linear_cka(X: Array, Y: Array, unbiased: bool = False) -> float:
    """Linear CKA of X (n, d1) and Y (n, d2), in float64; 0 if either is constant."""
    return _pair_cka(gram_linear(X), gram_linear(Y), unbiased)


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
        return cls(**{**{f.name: d[f.name] for f in fields(cls)},
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

def _describe(attack: Attack | None) -> str:
    if attack is None:
        return "benign"
    return attack.describe() if hasattr(attack, "describe") else repr(attack)


def _layer_kernel(out: torch.Tensor, kernel: str, sigma_frac: float) -> torch.Tensor:
    """One tap's (n, n) kernel from its output, which stays untouched."""
    X = out.flatten(1)
    if X.dtype not in (torch.float32, torch.float64):
        X = X.float()  # half-precision Grams would lose the signal
    # the product is the costly step: in the activations' own precision, on the
    # raw activations unless their mean would swamp their spread in rounding
    G = X @ X.T
    if _mean_dominated(G):
        G = _shifted_gram(X, torch.finfo(X.dtype).eps)
    return _rbf_from_gram(G.double(), sigma_frac) if kernel == "rbf" else G


def _batch_kernels(model: Probe, x: torch.Tensor, layers: list[str], kernel: str,
                   unbiased: bool, sigma_frac: float) -> _Kernels:
    """One forward pass; every tap's kernel is taken inside its forward hook
    (Probe.features with reduce): activations are neither cloned nor kept, a
    kernel taken in the hook is safe from later in-place ops, and peak memory is
    the forward pass plus the (L, n, n) kernels, whatever the number of taps."""
    kernels = _Kernels(len(layers), x.shape[0], unbiased, model.device)
    taken = model.features(x.to(model.device), layers,
                           reduce=lambda _name, out: _layer_kernel(out, kernel, sigma_frac))
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
               attack: Attack | None = None) -> CKAResult:
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

    def side_inputs(side: str, x: torch.Tensor, y: torch.Tensor, start: int) -> torch.Tensor:
        attack, ex = (attack_a, examples_a) if side == "a" else (attack_b, examples_b)
        if attack is None:
            return x
        if ex is not None:
            return ex[start:start + len(x)].to(x.device)
        model = target(side)
        return perturb(attack, model, x.to(model.device), y.to(model.device))

    device = model_a.device
    start = time.perf_counter()
    sum_ab = torch.zeros(len(layers_a), len(layers_b), dtype=torch.float64, device=device)
    sum_aa = torch.zeros(len(layers_a), dtype=torch.float64, device=device)
    sum_bb = torch.zeros(len(layers_b), dtype=torch.float64, device=device)
    per_batch: list[torch.Tensor] = []
    done, largest = 0, 0
    for x, y in batches(loader, batch_size, device, shuffle_seed, limit):
        check_input_size(x, model_a, model_b)
        if len(x) < min_n:
            raise ValueError(f"a batch of {len(x)} images is too small: "
                             f"{'unbiased' if unbiased else 'biased'} HSIC needs {min_n}")
        xa = side_inputs("a", x, y, done)
        ka = _batch_kernels(model_a, xa, names_a, kernel, unbiased, sigma_frac)
        if shared:
            kb = ka
        else:
            xb = xa if same_inputs else side_inputs("b", x, y, done)
            kb = _batch_kernels(model_b, xb, names_b, kernel, unbiased, sigma_frac).to(device)
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
        report(progress, done, total or done, f"CKA: {done} of {total or done} images")
    if not per_batch:
        raise ValueError("cka_matrix got no data")

    matrix = _cka(sum_ab, sum_aa, sum_bb).cpu().numpy()
    stacked = torch.stack(per_batch)
    spread = (stacked.std(0) if len(per_batch) > 1
              else torch.full_like(stacked[0], float("nan"))).cpu().numpy()
    return CKAResult(
        matrix=matrix, spread=spread, layers_a=layers_a, layers_b=layers_b,
        model_a=model_a.identity(), model_b=model_b.identity(), n=done,
        n_batches=len(per_batch), kernel=kernel, unbiased=unbiased, batch_size=largest,
        sigma_frac=sigma_frac if kernel == "rbf" else None,
        attack_a=_describe(attack_a), attack_b=_describe(attack_b),
        adv_against=adv_against, seconds=time.perf_counter() - start)
