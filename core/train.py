"""Training the shipped zoo: standard and PGD adversarial training on CIFAR-10.

Data live on the training device as uint8; crop-and-flip augmentation runs
there in batches. SGD with a one-cycle schedule, bf16 autocast (CPU with
AVX512-BF16, or CUDA), channels-last. A checkpoint is written after every
epoch and a run resumes from the last one; every random draw comes from
generators seeded by (seed, epoch), so a resumed run equals an unbroken one.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import archs, attacks
from .data import MEAN, STD, cache_dir, cifar10
from .probe import Probe, pick_device


@dataclass
class TrainConfig:
    name: str
    arch: str = "resnet18"
    width: int = 32
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.2                  # peak of the one-cycle schedule
    warmup: float = 0.15             # fraction of steps spent warming up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    threat: str | None = None        # None (standard), "linf" or "l2"
    eps: float = 0.0
    attack_steps: int = 0
    attack_step_size: float = 0.0
    random_start: bool = True
    data_root: str | None = None
    subset: int | None = None        # train on the first n images (tests)
    eval_images: int = 1000          # clean test accuracy after every epoch
    amp: bool = True                 # bf16 autocast where the device supports it
    device: str | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def recipe(self) -> dict:
        d = asdict(self)
        for k in ("data_root", "device", "subset", "eval_images", "extra"):
            d.pop(k)
        return d


def _amp_ok(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                return "avx512_bf16" in f.read() or "amx_bf16" in f.read()
        except OSError:
            return False
    return False


def augment(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of a uint8 NCHW batch."""
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None, None],
                 torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def one_cycle(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up to the peak, then cosine down to zero."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def build_probe(cfg: TrainConfig) -> Probe:
    model = archs.build(cfg.arch, num_classes=10, width=cfg.width)
    return Probe(model, MEAN, STD, name=cfg.name)


def run_dir(name: str) -> Path:
    return cache_dir() / "train" / name


def train(cfg: TrainConfig, log: Callable[[str], None] = print,
          stop_after_epoch: int | None = None) -> Probe:
    """Train (or resume) the model of `cfg`; returns the trained Probe.

    stop_after_epoch ends this call after that epoch (a resumable chunk).
    """
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    probe = build_probe(cfg).to(device).to(memory_format=torch.channels_last)
    use_amp = cfg.amp and _amp_ok(device)
    train_set = cifar10("train", cfg.data_root)
    test_set = cifar10("test", cfg.data_root)
    images, labels = train_set.images, train_set.labels
    if cfg.subset:  # a fixed random subset (the data are stored class by class)
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(12345))
        images, labels = images[keep[:cfg.subset]], labels[keep[:cfg.subset]]
    images, labels = images.to(device), labels.to(device)
    n = len(labels)
    steps_per_epoch = n // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs

    decay, no_decay = [], []
    for _pname, p in probe.model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)

    rdir = run_dir(cfg.name)
    rdir.mkdir(parents=True, exist_ok=True)
    start_epoch, history, wall = 0, [], 0.0
    last = rdir / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=True)
        if ck["config"] != cfg.recipe():
            raise ValueError(f"{last} was written with another recipe; delete it to restart")
        probe.model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history, wall = ck["epoch"], ck["history"], ck["wall_s"]
        log(f"resumed {cfg.name} after epoch {start_epoch}")

    attack = None
    if cfg.threat:
        attack = attacks.PGD(cfg.threat, cfg.eps, cfg.attack_step_size, cfg.attack_steps,
                             cfg.random_start)
    eval_idx = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))
    eval_x = test_set.images[eval_idx[:cfg.eval_images]].to(device)
    eval_y = test_set.labels[eval_idx[:cfg.eval_images]].to(device)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen, device=device)
        probe.train()
        run_loss, run_correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for g in opt.param_groups:
                g["lr"] = one_cycle(step, total_steps, cfg.lr, cfg.warmup)
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = augment(images[idx], gen).float().div_(255)
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if attack is not None:
                    x = attacks.pgd(probe, x, y, attack.norm, attack.eps, attack.step_size,
                                    attack.steps, attack.random_start, generator=gen)
                logits = probe(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += float(loss.detach()) * len(y)
            run_correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        probe.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            correct = sum(int((probe(eval_x[s:s + 500].float() / 255).argmax(1)
                               == eval_y[s:s + 500]).sum()) for s in range(0, len(eval_y), 500))
        epoch_s = time.time() - t0
        wall += epoch_s
        rec = {"epoch": epoch + 1, "train_loss": run_loss / seen, "train_acc": run_correct / seen,
               "test_acc": correct / max(1, len(eval_y)), "seconds": round(epoch_s, 1)}
        history.append(rec)
        log(json.dumps({"model": cfg.name, **rec}))
        tmp = rdir / "last.tmp"
        torch.save({"config": cfg.recipe(), "model": probe.model.state_dict(),
                    "hardware": hardware(device),
                    "optimizer": opt.state_dict(), "epoch": epoch + 1,
                    "history": history, "wall_s": wall}, tmp)
        os.replace(tmp, last)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    probe.card.update({"training": {**cfg.recipe(), "history": history,
                                    "wall_time_s": round(wall, 1),
                                    "hardware": hardware(device), "bf16_autocast": use_amp,
                                    "complete": len(history) >= cfg.epochs}})
    return probe


def card_fields(cfg: TrainConfig) -> dict:
    """The top of a model card, from its recipe."""
    if cfg.threat is None:
        threat, eps, label = "none", 0.0, f"standard (seed {cfg.seed})"
    elif cfg.threat == "linf":
        threat, eps, label = "linf", cfg.eps, f"Linf {cfg.eps * 255:g}/255"
    else:
        threat, eps, label = cfg.threat, cfg.eps, f"L2 {cfg.eps:.1f}"
    return {"label": label, "dataset": "cifar10", "threat_model": threat, "eps": eps,
            "arch": cfg.arch, "width": cfg.width, "seed": cfg.seed}


WHY_WIDTH = ("Base width 32 (2.8 M parameters, 5.6 MB in fp16): a 150-step inversion of "
             "one image on both models takes a few seconds on a 2-core CPU, which the "
             "inversion page needs; width 64 is 4x the compute for little gain on CIFAR-10.")

# the shipped zoo's targets (clean, PGD-20 at the model's own eps), as GPU-trained
# with PGD-10; the cards say whether each was met
TARGETS = {"resnet18-standard-s0": (0.92, None), "resnet18-standard-s1": (0.92, None),
           "resnet18-linf-8": (0.75, 0.44), "resnet18-l2-0.5": (0.85, 0.62),
           "resnet18-l2-1.0": (0.78, 0.45)}


def recipe_text(conf: dict) -> str:
    """One line a person reads: how this run was trained."""
    if conf.get("threat"):
        eps = conf["eps"]
        eps_s = f"{eps * 255:g}/255" if conf["threat"] == "linf" else f"{eps:g}"
        step = conf["attack_step_size"]
        step_s = f"{step * 255:g}/255" if conf["threat"] == "linf" else f"{step:g}"
        kind = (f"PGD-{conf['attack_steps']} adversarial training ({conf['threat'].upper()} eps "
                f"{eps_s}, step {step_s}{', random start' if conf.get('random_start') else ''})")
    else:
        kind = "standard training"
    return (f"{kind}; SGD (momentum {conf['momentum']}, Nesterov), one-cycle lr peak "
            f"{conf['lr']}, weight decay {conf['weight_decay']}, batch {conf['batch_size']}, "
            f"{conf['epochs']} epochs, random crop + flip"
            f"{', bf16 autocast' if conf.get('amp') else ''}")


def load_run(cfg: TrainConfig) -> Probe:
    """The Probe and card of a finished (or partial) run, from its last checkpoint."""
    last = run_dir(cfg.name) / "last.pt"
    if not last.exists():
        raise FileNotFoundError(f"no training run for {cfg.name} at {last}")
    ck = torch.load(last, map_location="cpu", weights_only=True)
    probe = build_probe(cfg)
    probe.model.load_state_dict(ck["model"])
    hist = ck["history"]
    probe.card.update(card_fields(cfg))
    probe.card["recipe"] = recipe_text(ck["config"])
    probe.card["why_width"] = WHY_WIDTH
    if cfg.name in TARGETS:
        probe.card["target"] = {"clean": TARGETS[cfg.name][0], "own_pgd20": TARGETS[cfg.name][1],
                                "assumes": "GPU training with PGD-10 (issue 3)"}
    probe.card["training"] = {**ck["config"], "history": hist, "wall_time_s": round(ck["wall_s"], 1),
                              "hardware": ck.get("hardware", hardware(torch.device("cpu"))),
                              "complete": ck["epoch"] >= ck["config"].get("epochs", cfg.epochs)}
    return probe.eval()


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (CPU)"


# The shipped zoo. CPU recipes (no GPU was available): see each card's notes.
ZOO: dict[str, TrainConfig] = {
    "resnet18-standard-s0": TrainConfig("resnet18-standard-s0", seed=0, epochs=18),
    "resnet18-standard-s1": TrainConfig("resnet18-standard-s1", seed=1, epochs=18),
    "resnet18-linf-8": TrainConfig("resnet18-linf-8", seed=0, epochs=15, threat="linf",
                                   eps=8 / 255, attack_steps=2, attack_step_size=5 / 255),
    "resnet18-l2-0.5": TrainConfig("resnet18-l2-0.5", seed=0, epochs=15, threat="l2",
                                   eps=0.5, attack_steps=2, attack_step_size=0.3),
    "resnet18-l2-1.0": TrainConfig("resnet18-l2-1.0", seed=0, epochs=15, threat="l2",
                                   eps=1.0, attack_steps=2, attack_step_size=0.6),
}
