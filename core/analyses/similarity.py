"""Representational similarity measures, one registry: `MEASURES` and `compare`.

Each measure takes two representations of the same n images, X (n, d1) and Y (n, d2)
(a feature map enters flattened, or pooled over space first: `rows`), and returns one
number. Each declares what it is invariant to (so a reader knows which differences it
cannot see), whether higher means more similar, and whether it can accumulate over
minibatches (the CKA family's HSIC can; the CCA family, Procrustes, RSA and k-NN need
all n rows at once).

Definitions, with their sources:
- linear / RBF CKA, biased (Kornblith et al. 2019) or debiased (Song et al. 2012's
  unbiased HSIC): core.analyses.cka.
- mean CCA: the mean of the canonical correlations of the centred X and Y.
- SVCCA (Raghu et al. 2017): each side reduced to the top singular directions that keep
  99% of its variance, then mean CCA.
- PWCCA (Morcos et al. 2018): the canonical correlations weighted by how much of the
  side with fewer dimensions each canonical variate accounts for, alpha_i = sum_j
  |<h_i, x_j>| over that side's centred neurons x_j, h_i its unit-norm canonical
  variates, the weights normalised to sum 1.
- Procrustes (Williams et al. 2021, as netrep): both sides centred and scaled to unit
  Frobenius norm (the narrower zero-padded), the angle arccos ||X^T Y||_* in radians:
  a distance, 0 for the same representation up to rotation.
- RSA (Kriegeskorte et al. 2008): each side's representational dissimilarity matrix,
  1 - the Pearson correlation between two images' activations, compared over its upper
  triangle by Pearson or Spearman correlation.
- mutual k-NN (Huh et al. 2024): the mean share of each image's k nearest neighbours
  (cosine, itself excluded) that the two representations have in common.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from scipy.stats import rankdata

from core import data, jobs
from core.analyses import Analysis, Command, register
from core.data import batches
from core.errors import RobustLensError
from core.jobs.results import write_json
from core.jobs.runner import run_printed
from core.models import zoo
from core.progress import Reporter, report, span

Array = Any   # a tensor or an array, (n, ...)

# invariances a measure may have: an orthogonal map of the features, one scale for all
# of them, a permutation of them, a shift of every image by one vector, any invertible
# linear map
INVARIANCES = ("orthogonal", "isotropic_scaling", "permutation", "translation",
               "invertible_linear")
# the CCA family solves in d x d: above this many dimensions a side is too wide (a
# flattened layer1 map of 32,768 dimensions would need a 4 GB covariance): pool it
MAX_CCA_DIMENSIONS = 4096


class SimilarityError(RobustLensError, ValueError):
    """Two representations cannot be compared by this measure as given."""


@dataclass(frozen=True)
class Measure:
    name: str
    title: str
    compute: Callable[[torch.Tensor, torch.Tensor], float]
    invariant_to: frozenset[str]
    higher_is_similar: bool = True
    streams: bool = False        # accumulates over minibatches (minibatch HSIC)
    help: str = ""
    # its interval resamples images with replacement ("bootstrap"), or, where a repeated
    # image would distort it (a neighbour of itself, a debiased estimator's diagonal),
    # draws half of the images without replacement ("half")
    resample: str = "bootstrap"
    symmetric: bool = True       # measure(X, Y) == measure(Y, X)
    value_range: tuple[float, float] = (0.0, 1.0)   # a figure's fixed colour range
    # the CKA family (and RSA) read each side through an (n, n) matrix of its images, a
    # kernel (a dissimilarity matrix): made once per layer, a permuted or resampled side is
    # its rows and columns picked (calibration in O(n^2) a draw)
    gram: Callable[[torch.Tensor], torch.Tensor] | None = None
    from_grams: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    # the CKA family's centring commutes with permuting the images: a kernel centred
    # once serves every permutation of the null (one product each)
    centred: Callable[[torch.Tensor], torch.Tensor] | None = None
    # what a layer x layer matrix keeps of each layer, made once (a kernel, an RDM's
    # ranked triangle), and the value of two such: not once per cell
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    from_prepared: Callable[[torch.Tensor, torch.Tensor], float] | None = None

    def invariances(self) -> str:
        """In words, for a page's help."""
        have = [i.replace("_", " ") for i in INVARIANCES if i in self.invariant_to]
        lack = [i.replace("_", " ") for i in INVARIANCES if i not in self.invariant_to]
        return (f"invariant to {', '.join(have) or 'nothing'}"
                + (f"; not to {', '.join(lack)}" if lack else ""))


def rows(h: Array, how: str = "flatten") -> torch.Tensor:
    """A layer's activations (n, C, H, W) or (n, d) as rows (n, d) in float64: each
    image's map flattened, or averaged over space ("pool": d = C)."""
    t = h.detach() if torch.is_tensor(h) else torch.from_numpy(np.asarray(h))
    if how not in ("flatten", "pool"):
        raise SimilarityError(f"a feature map enters a measure flattened or pooled, not {how!r}")
    if how == "pool" and t.ndim == 4:
        t = t.mean((2, 3))
    return t.reshape(t.shape[0], -1).to(torch.float64)


def _checked(X: Array, Y: Array) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = rows(X), rows(Y)
    if len(x) != len(y):
        raise SimilarityError(f"the two representations must be of the same images: {len(x)} "
                              f"rows against {len(y)}")
    if len(x) < 4:
        raise SimilarityError(f"a similarity needs at least 4 images, not {len(x)}")
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise SimilarityError("a representation holds NaN or infinite values")
    return x, y


# ------------------------------------------------------------------------ CCA family

def _basis(x: torch.Tensor, keep: float | None = None) -> torch.Tensor:
    """An orthonormal basis (n, k) of the centred columns' span (directions of zero
    variance dropped); keep: only the top singular directions holding that share of
    the variance (SVCCA's reduction)."""
    if x.shape[1] > MAX_CCA_DIMENSIONS:
        raise SimilarityError(
            f"the CCA family needs a {x.shape[1]} x {x.shape[1]} covariance here: pool the "
            f"feature map (rows(h, 'pool')) or compare at most {MAX_CCA_DIMENSIONS} dimensions")
    c = x - x.mean(0)
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    rank = int((s > s.max() * max(c.shape) * torch.finfo(c.dtype).eps).sum()) if len(s) else 0
    if rank == 0:
        raise SimilarityError("a representation is constant over these images: no "
                              "canonical correlation is defined")
    if keep is not None:
        share = (s[:rank] ** 2).cumsum(0) / (s[:rank] ** 2).sum()
        rank = int((share < keep).sum()) + 1
    if rank >= len(x) - 1:
        raise SimilarityError(f"CCA needs more images than dimensions: {len(x)} images and "
                              f"{rank} dimensions would correlate perfectly by chance")
    return u[:, :rank]


def canonical_correlations(X: Array, Y: Array, keep: float | None = None) -> torch.Tensor:
    """The canonical correlations of X and Y, largest first (min of the two ranks)."""
    x, y = _checked(X, Y)
    return torch.linalg.svdvals(_basis(x, keep).T @ _basis(y, keep)).clamp(0, 1)


def mean_cca(X: Array, Y: Array) -> float:
    return float(canonical_correlations(X, Y).mean())


def svcca(X: Array, Y: Array, keep: float = 0.99) -> float:
    return float(canonical_correlations(X, Y, keep).mean())


def pwcca(X: Array, Y: Array) -> float:
    x, y = _checked(X, Y)
    qx, qy = _basis(x), _basis(y)
    if qy.shape[1] < qx.shape[1]:     # the weights come from the narrower side
        x, qx, qy = y, qy, qx
    u, rho, _ = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    variates = qx @ u                  # unit-norm canonical variates of the narrower side
    weights = (variates.T @ (x - x.mean(0))).abs().sum(1)
    return float((weights / weights.sum() * rho.clamp(0, 1)).sum())


# ------------------------------------------------------------- Procrustes, RSA, k-NN

def procrustes_distance(X: Array, Y: Array) -> float:
    x, y = _checked(X, Y)
    x, y = x - x.mean(0), y - y.mean(0)
    nx, ny = torch.linalg.norm(x), torch.linalg.norm(y)
    if nx == 0 or ny == 0:
        raise SimilarityError("a representation is constant over these images")
    nuclear = float(torch.linalg.svdvals((x / nx).T @ (y / ny)).sum())   # padding adds 0s
    return math.acos(min(1.0, max(-1.0, nuclear)))


def rdm(X: Array) -> torch.Tensor:
    """Representational dissimilarity matrix: 1 - Pearson correlation of images' rows."""
    x = rows(X)
    c = x - x.mean(1, keepdim=True)
    norms = torch.linalg.norm(c, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise SimilarityError("an image's activation is constant across features: its "
                              "correlation with others is undefined")
    c = c / norms
    return 1 - c @ c.T


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks with ties averaged (Spearman), as scipy.stats.rankdata gives them."""
    return torch.from_numpy(rankdata(v.cpu().numpy())).to(v)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(torch.linalg.norm(a) * torch.linalg.norm(b))
    return float(a @ b) / denom if denom > 0 else 0.0


def rsa(X: Array, Y: Array, method: str = "pearson") -> float:
    x, y = _checked(X, Y)
    return rdm_correlation(rdm(x), rdm(y), method)


def rdm_correlation(a: torch.Tensor, b: torch.Tensor, method: str = "pearson") -> float:
    """RSA of two (n, n) dissimilarity matrices: the Pearson or Spearman correlation of
    their upper triangles."""
    return _pearson(_triangle(a, method), _triangle(b, method))


def _triangle(r: torch.Tensor, method: str = "pearson") -> torch.Tensor:
    """An RDM's upper triangle as RSA compares it: its values, or their ranks."""
    upper = torch.triu_indices(len(r), len(r), 1)
    values = r[upper[0], upper[1]]
    return _ranks(values) if method == "spearman" else values


def mutual_knn(X: Array, Y: Array, k: int = 10) -> float:
    x, y = _checked(X, Y)
    if not 1 <= k < len(x):
        raise SimilarityError(f"k nearest neighbours need 1 <= k < {len(x)} images, not {k}")

    def neighbours(z: torch.Tensor) -> torch.Tensor:
        z = z / torch.linalg.norm(z, dim=1, keepdim=True).clamp_min(1e-300)
        sim = z @ z.T
        sim.fill_diagonal_(-math.inf)
        return torch.topk(sim, k, dim=1).indices
    nx, ny = neighbours(x), neighbours(y)
    hits = (nx[:, :, None] == ny[:, None, :]).any(2).sum(1).double()
    return float((hits / k).mean())


# ---------------------------------------------------------------------- registry

_ALL = frozenset(INVARIANCES) - {"invertible_linear"}


def _cka_measure(name: str, title: str, kernel: str, unbiased: bool, **kw: Any) -> Measure:
    def gram(x: torch.Tensor) -> torch.Tensor:
        return cka.gram_linear(x) if kernel == "linear" else cka.gram_rbf(x)

    def from_grams(k: torch.Tensor, other: torch.Tensor) -> float:
        return cka.kernel_cka(k, other, unbiased)
    def compute(x: torch.Tensor, y: torch.Tensor) -> float:
        if kernel == "linear":   # through the features where they are narrower than n
            return cka.linear_cka(x, y, unbiased)
        return from_grams(gram(x), gram(y))
    # linear: a cell through the features is cheaper than keeping the layers' kernels
    kept = {} if kernel == "linear" else {"prepare": gram, "from_prepared": from_grams}
    return Measure(name, title, compute, _ALL, gram=gram, from_grams=from_grams, **kept,
                   centred=lambda k: cka.centred_kernel(k, unbiased),
                   resample="half" if unbiased else "bootstrap", **kw)


MEASURES: dict[str, Measure] = {m.name: m for m in (
    _cka_measure("linear_cka", "linear CKA", "linear", False, streams=True,
                 help="Centred kernel alignment of linear kernels (Kornblith et al. 2019)."),
    _cka_measure("linear_cka_debiased", "linear CKA, debiased", "linear", True, streams=True,
                 help="With the unbiased HSIC estimator (Song et al. 2012): no upward bias at "
                      "small n."),
    _cka_measure("rbf_cka", "RBF CKA", "rbf", False,
                 help="Gaussian kernels, bandwidth 0.8 x the median distance."),
    _cka_measure("rbf_cka_debiased", "RBF CKA, debiased", "rbf", True),
    Measure("mean_cca", "mean CCA", mean_cca, frozenset(INVARIANCES),
            help="The mean canonical correlation: blind to any invertible linear map."),
    Measure("svcca", "SVCCA", svcca, _ALL,
            help="CCA after keeping the top singular directions with 99% of the variance."),
    Measure("pwcca", "PWCCA", pwcca, _ALL - {"orthogonal"}, symmetric=False,
            help="Canonical correlations weighted by how much of the representation each "
                 "accounts for (its neurons: not invariant to rotating them)."),
    Measure("procrustes", "Procrustes distance", procrustes_distance, _ALL,
            higher_is_similar=False, value_range=(0.0, math.pi / 2),
            help="The angle between the two after the best rotation (radians, 0: the same)."),
    Measure("rsa_pearson", "RSA (Pearson)", rsa,
            frozenset({"isotropic_scaling", "permutation"}), gram=rdm, from_grams=rdm_correlation,
            prepare=lambda x: _triangle(rdm(x)), from_prepared=_pearson,
            help="Correlation of the two dissimilarity matrices (1 - Pearson r of images)."),
    Measure("rsa_spearman", "RSA (Spearman)", lambda x, y: rsa(x, y, "spearman"),
            frozenset({"isotropic_scaling", "permutation"}), gram=rdm,
            from_grams=lambda a, b: rdm_correlation(a, b, "spearman"),
            prepare=lambda x: _triangle(rdm(x), "spearman"), from_prepared=_pearson),
    Measure("mutual_knn", "mutual k-NN", mutual_knn,
            frozenset({"orthogonal", "isotropic_scaling", "permutation"}), resample="half",
            help="Share of each image's 10 nearest neighbours both representations agree on "
                 "(Huh et al. 2024)."),
)}


def compare(X: Array, Y: Array, measure: str = "linear_cka") -> float:
    """The similarity (or, where MEASURES says so, distance) of X (n, ...) and Y (n, ...)
    under `measure`, in float64."""
    if measure not in MEASURES:
        raise SimilarityError(f"no similarity measure is called {measure!r}; the measures: "
                              f"{', '.join(MEASURES)}")
    x, y = _checked(X, Y)
    return float(MEASURES[measure].compute(x, y))


def calibrate(X: Array, Y: Array, measure: str = "linear_cka", permutations: int = 100,
              resamples: int = 100, seed: int = 0) -> dict:
    """Is this value high? The measure's value with a permutation null (Y's images
    shuffled against X's: what unrelated representations of these images score) and a
    95% interval over resampled images (Measure.resample says how; the interval is the
    resampled values' spread about their mean, around the value). Images, not batches,
    are resampled: the measure here sees all n images at once. The CKA family works on
    the kernels of all n images (an RBF bandwidth stays the whole sample's).

    Returns {"value", "null_mean", "null_95" (the null's 95th percentile, its 5th for a
    distance), "p_value" (the share of the null at least as similar, counting the
    value itself), "interval" [low, high], "resample", "permutations", "resamples"}."""
    x, y = _checked(X, Y)
    m = MEASURES.get(measure)
    if m is None:
        raise SimilarityError(f"no similarity measure is called {measure!r}; the measures: "
                              f"{', '.join(MEASURES)}")
    return _calibrated(_side(x, m), _side(y, m), m, permutations, resamples, seed)


def _side(x: torch.Tensor, m: Measure) -> torch.Tensor:
    """What a measure reads of one side: its kernel (the CKA family) or its rows."""
    return m.gram(x) if m.gram is not None else x


def _calibrated(a: torch.Tensor, b: torch.Tensor, m: Measure, permutations: int,
                resamples: int, seed: int) -> dict:
    if permutations < 1 or resamples < 2:
        raise SimilarityError("calibration needs at least 1 permutation and 2 resamples")

    def value(idx_a: torch.Tensor | None, idx_b: torch.Tensor | None) -> float:
        def pick(side: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
            if idx is None:
                return side
            return side[idx][:, idx] if m.gram is not None else side[idx]
        pa, pb = pick(a, idx_a), pick(b, idx_b)
        return float(m.from_grams(pa, pb) if m.gram is not None else m.compute(pa, pb))
    n, g = len(a), torch.Generator().manual_seed(seed)
    observed = value(None, None)
    # the orders come from core.data's one seeded shuffle, the k-th draw per permutation
    orders = data.shuffled_orders(n, seed)
    if m.centred is not None:
        ca, cb = m.centred(a), m.centred(b)
        null = np.array([cka.centred_cka(ca, cb[p][:, p])
                         for p in (next(orders) for _ in range(permutations))])
    else:
        null = np.array([value(None, next(orders)) for _ in range(permutations)])
    sign = 1.0 if m.higher_is_similar else -1.0
    halves = data.shuffled_orders(n, seed + 1)
    picks = [torch.randint(0, n, (n,), generator=g) if m.resample == "bootstrap"
             else next(halves)[:n // 2] for _ in range(resamples)]
    resampled = np.array([value(i, i) for i in picks])
    # the resampled values' spread about their own mean, put around the value: a measure
    # biased at a smaller or repeated sample moves its resampled values, not its interval;
    # half-samples vary by sqrt(2) more than the whole
    spread = (resampled - resampled.mean()) * math.sqrt(len(picks[0]) / n)
    return {"value": observed, "null_mean": float(null.mean()),
            "null_95": float(np.percentile(null, 95 if m.higher_is_similar else 5)),
            "p_value": float((1 + np.sum(sign * null >= sign * observed)) / (1 + permutations)),
            "interval": [observed + float(np.percentile(spread, 2.5)),
                         observed + float(np.percentile(spread, 97.5))],
            "resample": m.resample, "permutations": permutations, "resamples": resamples}


def matrix(features_a: Mapping[str, Array], features_b: Mapping[str, Array],
           measure: str = "linear_cka", how: str = "flatten",
           progress: Reporter | None = None) -> np.ndarray:
    """A layer x layer matrix of `measure` between two models' features of the same
    images ({layer: activations}), each map entering as `how` says; progress: an Event
    after every row of cells."""
    m = MEASURES.get(measure)
    if m is None:
        raise SimilarityError(f"no similarity measure is called {measure!r}; the measures: "
                              f"{', '.join(MEASURES)}")
    a = {k: rows(v, how) for k, v in features_a.items()}
    b = {k: rows(v, how) for k, v in features_b.items()}
    n = len(next(iter(a.values())))
    kept = m.prepare is not None and n * n * 8 * (len(a) + len(b)) <= KERNEL_BYTES
    # what the measure reads of each layer, once where it fits, not once per cell
    kb = [m.prepare(_checked(y, y)[0]) for y in b.values()] if kept else None
    out = []
    for i, x in enumerate(a.values()):
        if kept:
            k = m.prepare(_checked(x, x)[0])
            out.append([m.from_prepared(k, other) for other in kb])
        else:
            out.append([compare(x, y, measure) for y in b.values()])
        report(progress, i + 1, len(a), f"{MEASURES[measure].title}: row {i + 1} of {len(a)}")
    return np.array(out)


# matrix() keeps every layer's (n, n) kernel when they fit this: at 2,000 images 32 MB each
KERNEL_BYTES = 2 << 30


# ------------------------------------------------------------ jobs and command line

# the features of every layer of both models are held at once (every measure but the
# CKA family needs all rows together): at most this many bytes of them
FEATURE_BYTES = 4 << 30


def similarity_job(load: jobs.Loader, a: str, b: str, measure: str = "linear_cka",
                   layers_a: str | list[str] = "blocks", layers_b: str | list[str] = "blocks",
                   n: int = 1000, maps: str = "pool", inputs_a: str = "benign",
                   inputs_b: str = "benign", adv_against: str = "self") -> jobs.Job:
    """Layer x layer `measure` of model a against model b on the first n test images of
    the seeded order, read as a CKA view reads them (so that adversarial examples made for
    it serve here too: inputs_a/inputs_b and adv_against as in cka.cka_job), each feature
    map entering `maps` ("pool": averaged over space, "flatten": whole), the features of
    all n images at once. The result has a CKA result's fields (cka.CKAResult), its
    measure named, no per-batch spread."""
    if measure not in MEASURES:
        raise SimilarityError(f"no similarity measure is called {measure!r}; the measures: "
                              f"{', '.join(MEASURES)}")
    if maps not in ("pool", "flatten"):
        raise SimilarityError(f"a feature map enters a measure pooled or flattened, not {maps!r}")
    args = {"a": a, "b": b, "measure": measure, "layers_a": layers_a, "layers_b": layers_b,
            "n": n, "maps": maps, "inputs_a": inputs_a, "inputs_b": inputs_b,
            "adv_against": adv_against}
    pa, pb = load(a), load(b)
    jobs.on_cifar10("Comparing representations", pa, pb)
    la, lb = jobs.layer_list(pa, layers_a), jobs.layer_list(pb, layers_b)
    width = sum(_width(p.layer_shapes()[layer], maps) for p, layer_names in ((pa, la), (pb, lb))
                for layer in layer_names)
    if n * width * 8 > FEATURE_BYTES:
        raise SimilarityError(
            f"{MEASURES[measure].title} holds the features of all {n:,} images at once: "
            f"{n * width * 8 / 2**30:.1f} GB here, over {FEATURE_BYTES / 2**30:.0f} GB; pool "
            "the feature maps, choose fewer layers or fewer images")
    atk_a, atk_b = cka.input_attack(inputs_a), cka.input_attack(inputs_b)
    if atk_a is None and atk_b is None:
        adv_against = "self"
    batch_size = cka.cka_batch_size(n)
    inputs = {"a": pa.identity(), "b": pb.identity(), "layers_a": la, "layers_b": lb,
              "measure": measure, "maps": maps,
              "inputs_a": atk_a.to_dict() if atk_a else "benign",
              "inputs_b": atk_b.to_dict() if atk_b else "benign", "adv_against": adv_against,
              "batch_size": batch_size, "images": jobs.test_images(n)}
    needs = cka.adversarial_needs(load, a, b, inputs_a, inputs_b, adv_against, n, batch_size)

    def run(progress: Reporter, examples_a: dict | None = None,
            examples_b: dict | None = None) -> dict:
        start = time.perf_counter()
        feats = {side: {layer: [] for layer in layer_names}
                 for side, layer_names in (("a", la), ("b", lb))}
        done = 0
        with torch.no_grad():
            for x, _y in batches(data.cifar10("test"), batch_size, pa.device, 0, n):
                for side, probe, layer_names, made in (("a", pa, la, examples_a),
                                                       ("b", pb, lb, examples_b)):
                    seen = x if made is None else made["images"][done:done + len(x)].to(x)
                    for layer, h in probe.features(seen, layer_names).items():
                        feats[side][layer].append(rows(h, maps).cpu())
                done += len(x)
                # the features fill the first half of the bar, the matrix's rows the rest
                report(span(progress, 0.0, 0.5), done, n, f"features of {done:,} images")
        joined = {side: {k: torch.cat(v) for k, v in f.items()} for side, f in feats.items()}
        values = matrix(joined["a"], joined["b"], measure, progress=span(progress, 0.5, 0.5))
        return {"matrix": values, "spread": np.full_like(values, np.nan), "layers_a": la,
                "layers_b": lb, "model_a": pa.identity(), "model_b": pb.identity(), "n": done,
                "n_batches": 1, "kernel": "linear" if "rbf" not in measure else "rbf",
                "unbiased": measure.endswith("_debiased"), "batch_size": done,
                "sigma_frac": 0.8 if "rbf" in measure else None,
                "attack_a": cka.describe_attack(atk_a), "attack_b": cka.describe_attack(atk_b),
                "adv_against": adv_against, "seconds": time.perf_counter() - start,
                "measure": measure, "maps": maps,
                "higher_is_similar": MEASURES[measure].higher_is_similar}
    label = (f"{MEASURES[measure].title} {pa.name} ({cka.INPUT_LABELS[inputs_a]}) vs {pb.name} "
             f"({cka.INPUT_LABELS[inputs_b]}), {n} images")
    return jobs.make("similarity", inputs, run, label, args, needs)


# a cell's calibration reads at most this many of its view's images (a click on the CPU)
CALIBRATION_IMAGES = 2000
CALIBRATION_DRAWS = 100      # permutations, and as many resamples


def calibrated_measure(measure: str, kernel: str = "linear") -> str:
    """The measure a view's cells are calibrated with: the view's own, or for the
    minibatch CKA its debiased form on all calibration images at once."""
    return f"{kernel}_cka_debiased" if measure == "cka" else measure


def calibration_job(load: jobs.Loader, a: str, b: str, layers_a: str | list[str],
                    layers_b: str | list[str], measure: str = "cka", n: int = 10_000,
                    maps: str = "pool", kernel: str = "linear", inputs_a: str = "benign",
                    inputs_b: str = "benign", adv_against: str = "self") -> jobs.Job:
    """Calibration (see calibrate) of the cells layers_a x layers_b of a CKA-page view
    (its models, inputs, measure and n): on the first CALIBRATION_IMAGES of the view's
    images in the view's order, its adversarial examples the view's own; the minibatch
    CKA is calibrated as the debiased CKA of those images (calibrated_measure)."""
    name = calibrated_measure(measure, kernel)
    if name not in MEASURES:
        raise SimilarityError(f"no similarity measure is called {measure!r}; the measures: "
                              f"cka, {', '.join(MEASURES)}")
    maps = "flatten" if measure == "cka" else maps   # the minibatch CKA reads whole maps
    pa, pb = load(a), load(b)
    jobs.on_cifar10("Calibration", pa, pb)
    la, lb = jobs.layer_list(pa, layers_a), jobs.layer_list(pb, layers_b)
    count, batch_size = min(n, CALIBRATION_IMAGES), cka.cka_batch_size(n)
    atk_a, atk_b = cka.input_attack(inputs_a), cka.input_attack(inputs_b)
    if atk_a is None and atk_b is None:
        adv_against = "self"
    args = {"a": a, "b": b, "layers_a": layers_a, "layers_b": layers_b, "measure": measure,
            "n": n, "maps": maps, "kernel": kernel, "inputs_a": inputs_a, "inputs_b": inputs_b,
            "adv_against": adv_against}
    inputs = {"a": pa.identity(), "b": pb.identity(), "layers_a": la, "layers_b": lb,
              "measure": name, "maps": maps,
              "inputs_a": atk_a.to_dict() if atk_a else "benign",
              "inputs_b": atk_b.to_dict() if atk_b else "benign", "adv_against": adv_against,
              "batch_size": batch_size, "images": jobs.test_images(n), "count": count,
              "draws": CALIBRATION_DRAWS}
    needs = cka.adversarial_needs(load, a, b, inputs_a, inputs_b, adv_against, n, batch_size)
    m = MEASURES[name]

    def run(progress: Reporter, examples_a: dict | None = None,
            examples_b: dict | None = None) -> dict:
        start = time.perf_counter()
        feats = {side: {layer: [] for layer in names} for side, names in (("a", la), ("b", lb))}
        done = 0
        with torch.no_grad():
            for x, _y in batches(data.cifar10("test"), batch_size, pa.device, 0, n):
                x = x[:count - done]
                for side, probe, names, made in (("a", pa, la, examples_a),
                                                 ("b", pb, lb, examples_b)):
                    seen = x if made is None else made["images"][done:done + len(x)].to(x)
                    for layer, h in probe.features(seen, names).items():
                        # float32 until each layer's kernel is made: flattened maps of
                        # 2,000 images hold up to half a GB a layer
                        feats[side][layer].append(rows(h, maps).float().cpu())
                done += len(x)
                report(progress, done, count + len(la) * len(lb), f"features of {done:,} images")
                if done >= count:
                    break
        sides: dict[str, dict[str, torch.Tensor]] = {"a": {}, "b": {}}
        for side, names in (("a", la), ("b", lb)):
            for layer in names:
                sides[side][layer] = _side(rows(torch.cat(feats[side].pop(layer))), m)
        cells = []
        for i, x_layer in enumerate(la):
            for j, y_layer in enumerate(lb):
                cells.append(_calibrated(sides["a"][x_layer], sides["b"][y_layer], m,
                                         CALIBRATION_DRAWS, CALIBRATION_DRAWS, 0))
                report(progress, count + len(cells), count + len(la) * len(lb),
                       f"calibrated {len(cells)} of {len(la) * len(lb)} cells")
        shape = (len(la), len(lb))
        out = {k: np.array([c[k] for c in cells]).reshape(shape)
               for k in ("value", "null_mean", "null_95", "p_value")}
        interval = np.array([c["interval"] for c in cells]).reshape(*shape, 2)
        return {**out, "low": interval[..., 0], "high": interval[..., 1], "layers_a": la,
                "layers_b": lb, "measure": name, "of": measure, "count": done,
                "resample": m.resample, "draws": CALIBRATION_DRAWS,
                "higher_is_similar": m.higher_is_similar,
                "seconds": time.perf_counter() - start}
    cells = "1 cell" if len(la) * len(lb) == 1 else f"{len(la)} x {len(lb)} cells"
    return jobs.make("calibration", inputs, run,
                     f"calibration of {cells}, {m.title} {pa.name} vs {pb.name}, {count} images",
                     args, needs)


def describe_calibration(cal: Mapping[str, Any], i: int, j: int, brief: bool = False) -> str:
    """A calibration's cell (row i, column j) in two sentences, or in one line (brief:
    a projector's)."""
    m = MEASURES[cal["measure"]]
    if brief:
        return (f"95% interval [{float(cal['low'][i][j]):.3f}, {float(cal['high'][i][j]):.3f}]"
                f" · shuffled images: {float(cal['null_95'][i][j]):.3f} "
                f"({'95th' if m.higher_is_similar else '5th'} pct.)")
    how = ("bootstrap of images" if cal["resample"] == "bootstrap"
           else "half-samples of images")
    percentile = "95th" if m.higher_is_similar else "5th"
    return (f"Calibrated on the first {cal['count']:,} images as {m.title}: "
            f"{float(cal['value'][i][j]):.3f}, 95% interval "
            f"[{float(cal['low'][i][j]):.3f}, {float(cal['high'][i][j]):.3f}] ({how}). With "
            f"the images shuffled on one side ({cal['draws']} times): mean "
            f"{float(cal['null_mean'][i][j]):.3f}, {percentile} percentile "
            f"{float(cal['null_95'][i][j]):.3f}; p = {float(cal['p_value'][i][j]):.2g}.")


def calibration_cost(job: jobs.Job) -> jobs.Cost:
    count = job.inputs["count"]
    cells = len(job.inputs["layers_a"]) * len(job.inputs["layers_b"])
    # the draws: ~3 s a cell at 2,000 images for the CKA family on a 2-core CPU, about
    # what 0.3 forward passes per image cost
    return jobs.Cost({spec: (count * (1 + cells * 0.3), 0.0) for spec in job.models})


def _width(shape: tuple[int, ...], maps: str) -> int:
    """A layer's row width, from its output shape, as it enters the measure."""
    return int(shape[0]) if maps == "pool" or len(shape) == 1 else int(np.prod(shape))


def similarity_cost(job: jobs.Job) -> jobs.Cost:
    n = job.inputs["images"]["n"]
    return jobs.Cost({spec: (n, 0.0) for spec in job.models})


def _cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, help="first model")
    p.add_argument("--b", required=True, help="second model")
    p.add_argument("--measure", default="linear_cka", choices=list(MEASURES))
    p.add_argument("--layers", default="blocks",
                   help="blocks, all, or a comma list (both models)")
    p.add_argument("-n", type=int, default=1000, help="test images (all at once in memory)")
    p.add_argument("--maps", default="pool", choices=["pool", "flatten"],
                   help="how a feature map enters the measure: averaged over space, or whole")
    p.add_argument("--device")
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.add_argument("--out", help="write the matrix as JSON here")


def _cli(args: argparse.Namespace) -> Any:
    """Layer x layer similarity of two models under any measure of the registry."""
    layers = args.layers if args.layers in ("blocks", "all") else args.layers.split(",")
    job = similarity_job(zoo.loader(args.device), args.a, args.b, args.measure, layers, layers,
                         args.n, args.maps)
    out = {**run_printed(job, args.force),
           "invariances": MEASURES[args.measure].invariances()}
    return write_json(out, args.out) if args.out else out


register(Analysis(
    "similarity",
    # 2: read as a CKA view reads its images (seeded batches), adversarial inputs
    kinds={"similarity": jobs.Kind(similarity_job, version=2, models=("a", "b"),
                                   reads=("test",), cost=similarity_cost),
           "calibration": jobs.Kind(calibration_job, models=("a", "b"), reads=("test",),
                                    cost=calibration_cost)},
    commands=(Command("similarity", _cli_arguments, _cli),),
))

# last: core.analyses.cka (its kernels, attacks and page) imports this module for MEASURES,
# so whichever of the two is imported first finds the other's names when it calls them
from core.analyses import cka  # noqa: E402
