"""Projected gradient descent under L2 and Linf, and (robust) accuracy. The unforeseen
attacks (snow, Gabor, JPEG) are in core/analyses/unforeseen.py; from_dict rebuilds any
attack from its to_dict().

Models take inputs in [0, 1] (normalisation lives inside the model). The model's
train/eval mode is the caller's choice; only the gradient with respect to the
input is computed, so weight gradients cost nothing here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data import batch_sizes, batches, require_labels
from core.data.images import norms
from core.analyses import unforeseen
from core.models.probe import check_input_size
from core.progress import Reporter, report

NORMS = ("linf", "l2")
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _random_start(x: torch.Tensor, norm: str, eps: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    # uniform in the L2 ball: a Gaussian direction, radius eps * U^(1/d)
    d = x[0].numel()
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
    r = (eps * r.pow(1.0 / d)).view(-1, *([1] * (x.ndim - 1)))
    return g / norms(g) * r


def _project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / norms(delta)).clamp(max=1.0)


def _ascent(grad: torch.Tensor, norm: str, step_size: float) -> torch.Tensor:
    if norm == "linf":
        return step_size * grad.sign()
    return step_size * grad / norms(grad)


def pgd(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
        norm: str = "linf", eps: float = 8 / 255, step_size: float = 2 / 255,
        steps: int = 10, random_start: bool = True, best: bool = False,
        targeted: bool = False, generator: torch.Generator | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        early_stop: bool = False) -> torch.Tensor:
    """Return adversarial examples for (x, y) inside the `norm` ball of radius eps.

    best=True keeps, per example, the iterate with the highest loss seen (a
    misclassifying iterate beats any other); otherwise the last iterate.
    early_stop=True (with best=True) stops attacking an example at its first
    misclassifying iterate: the accuracy under attack is the same as best=True's
    (each example's trajectory is its own), at a fraction of the cost when most
    examples fall early. Use it to measure accuracy, not to make examples whose
    perturbation size matters (CKA on adversarial inputs).
    targeted=True moves towards the labels y instead of away from them.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    if eps < 0 or steps < 0 or step_size < 0:
        raise ValueError("eps, step_size and steps must be non-negative")
    if early_stop and not best:
        raise ValueError("early_stop needs best=True (it keeps the first misclassifying iterate)")
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    require_labels(y, "an attack")
    loss_fn = loss_fn or (lambda logits, t: F.cross_entropy(logits, t, reduction="none"))
    sign = -1.0 if targeted else 1.0
    delta = _random_start(x, norm, eps, generator) if random_start else torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x)
    if not best:  # the last iterate of every example: no bookkeeping (the training path)
        for _ in range(steps):
            delta.requires_grad_(True)
            grad, = torch.autograd.grad((sign * loss_fn(model(x + delta), y)).sum(), delta)
            with torch.no_grad():
                delta = _project(delta + _ascent(grad, norm, step_size), norm, eps)
                delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()
    best_x, best_score = x.clone(), torch.full((x.shape[0],), -math.inf, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)  # examples still being attacked
    for i in range(steps + 1):
        xa, ya = x[active], y[active]
        da = delta[active].requires_grad_(True)
        logits = model(xa + da)
        losses = sign * loss_fn(logits, ya)
        with torch.no_grad():
            fooled = (logits.argmax(1) != ya) if not targeted else (logits.argmax(1) == ya)
            score = losses.detach().float() + fooled.float() * 1e6
            better = score > best_score[active]
            idx = active[better]
            best_score[idx] = score[better]
            best_x[idx] = (xa + da)[better].detach()
        if i == steps:
            break
        grad, = torch.autograd.grad(losses.sum(), da)
        with torch.no_grad():
            da = _project(da + _ascent(grad, norm, step_size), norm, eps)
            delta[active] = (xa + da).clamp(0, 1) - xa
            if early_stop:
                active = active[~fooled]
                if active.numel() == 0:
                    break
    return best_x


def trades_examples(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES's inner maximisation (Zhang et al. 2019), Linf: from x + 0.001 N(0, 1),
    `steps` signed-gradient steps that raise KL(model(x) || model(x')), projected onto
    the eps ball and [0, 1]. Needs no labels: it moves away from the model's own answer."""
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    with torch.no_grad():
        p_clean = F.softmax(model(x), 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + 0.001 * noise).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), p_clean, reduction="sum")
        grad, = torch.autograd.grad(kl, x_adv)
        with torch.no_grad():
            x_adv = x + _project(x_adv + step_size * grad.sign() - x, "linf", eps)
            x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()


@dataclass(frozen=True)
class PGD:
    """A PGD attack as a value: hashable, printable, callable as attack(model, x, y)."""
    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 20
    random_start: bool = True
    best: bool = False
    seed: int = 0
    early_stop: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {self.norm!r}")
        if self.eps < 0 or self.steps < 0 or self.step_size < 0:
            raise ValueError("eps, step_size and steps must be non-negative")

    def __call__(self, model: Callable, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None and self.random_start:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return pgd(model, x, y, self.norm, self.eps, self.step_size, self.steps,
                   self.random_start, self.best, generator=generator,
                   early_stop=self.early_stop)

    def describe(self) -> str:
        eps = f"{self.eps * 255:g}/255" if self.norm == "linf" else f"{self.eps:g}"
        step = f"{self.step_size * 255:g}/255" if self.norm == "linf" else f"{self.step_size:g}"
        text = f"PGD-{self.steps} {self.norm.upper()} eps {eps} step {step}"
        return text + (", stopped per image at its first success" if self.early_stop else "")

    def threat(self) -> str:
        """'PGD Linf 8/255', 'PGD L2 1': the attack as a figure title names it."""
        eps = f"{self.eps * 255:g}/255" if self.norm == "linf" else f"{self.eps:g}"
        return f"PGD {'Linf' if self.norm == 'linf' else 'L2'} {eps}"

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.early_stop:  # keys made before the option existed stay valid
            d.pop("early_stop")
        return d

    def for_accuracy(self) -> "PGD":
        """The same attack as an accuracy measurement: the strongest iterate per image
        counts (best=True), and an image stops being attacked once it is misclassified.
        Same accuracy as best=True, in less time."""
        return replace(self, best=True, early_stop=True)

    @staticmethod
    def paper(norm: str) -> "PGD":
        """The attacks of Cianfarani et al. (2022): Linf 8/255 and L2 1.0, 20 steps."""
        if norm == "linf":
            return PGD("linf", 8 / 255, 2 / 255, 20)
        return PGD("l2", 1.0, 0.1, 20)


def from_dict(d: dict[str, Any]) -> "PGD | unforeseen.Unforeseen":
    """The attack a to_dict() describes: a PGD (its dicts carry no kind, so that keys
    made before the unforeseen attacks stay valid) or an unforeseen attack."""
    if "kind" in d:
        return unforeseen.from_dict(d)
    return PGD(**d)


def perturb(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """attack(model, x, y), detached; the attack gets input gradients even when the
    caller runs under torch.no_grad()."""
    with torch.enable_grad():
        return attack(model, x, y).detach()


def examples(model: nn.Module, source: Any, attack: Attack, batch_size: int,
             device: torch.device | str | None = None, shuffle_seed: int | None = 0,
             limit: int | None = None, progress: Reporter | None = None) -> torch.Tensor:
    """Adversarial examples of every image that core.data.batches reads with these
    arguments, in that order, on the CPU: made once, they stand for attack(model,
    x, y) of the same batches (a seeded attack gives the same examples per batch)."""
    device = device or next(model.parameters()).device
    sizes = batch_sizes(source, batch_size, limit)
    total = sum(sizes) if sizes is not None else None
    out, done = [], 0
    for x, y in batches(source, batch_size, device, shuffle_seed, limit):
        check_input_size(x, model)
        out.append(perturb(attack, model, x, y).cpu())
        done += len(y)
        report(progress, done, total or done, f"adversarial examples: {done} images")
    if not out:
        raise ValueError("examples() got no data")
    return torch.cat(out)


def accuracy(model: nn.Module, loader: Any, attack: Callable | None = None,
             device: torch.device | str | None = None, progress: Reporter | None = None,
             *, batch_size: int = 256, shuffle_seed: int | None = 0,
             limit: int | None = None) -> float:
    """Top-1 accuracy in [0, 1] of model on `loader`, optionally under attack.

    `loader` is anything core.data.batches reads (an ImageTensorDataset is read in
    seeded random batches of batch_size; an iterable of (x, y) batches as it
    comes); limit: the first `limit` images only.
    """
    if device is None:
        device = next(model.parameters()).device
    sizes = batch_sizes(loader, batch_size, limit)
    total = sum(sizes) if sizes is not None else None
    correct, n = 0, 0
    for x, y in batches(loader, batch_size, device, shuffle_seed, limit):
        require_labels(y, "accuracy")
        check_input_size(x, model)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        if attack is not None and ok.any():
            # a clean mistake counts as a robust mistake: attack the rest only
            xa = attack(model, x[ok], y[ok])
            with torch.no_grad():
                ok[ok.clone()] = model(xa).argmax(1) == y[ok]
        elif attack is not None:
            ok = torch.zeros_like(ok)
        correct += int(ok.sum())
        n += len(y)
        report(progress, n, total or n, f"{n} of {total or n} images")
    if n == 0:
        raise ValueError("accuracy() got no data")
    return correct / n
