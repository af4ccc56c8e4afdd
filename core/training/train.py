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

from core import PROJECT
from core.models import archs

from core.analyses import attacks
from core.data import MEAN, STD, ImageTensorDataset, cache_dir, cifar10, datasets
from core.errors import RobustLensError
from core.models.probe import Probe, pick_device


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
    data_set: str = "cifar10"        # or one of core.data.datasets (the stitching paper's)
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
        if self.data_set == "cifar10":   # runs recorded before other sets existed resume
            d.pop("data_set")
        return d

    def split(self, split: str) -> ImageTensorDataset:
        """Its data set's `split`: CIFAR-10 (from data_root where given) or another."""
        if self.data_set == "cifar10":
            return cifar10(split, self.data_root)
        return datasets.load(self.data_set, split)


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
    model = archs.build(cfg.arch, num_classes=datasets.classes(cfg.data_set), width=cfg.width)
    return Probe(model, MEAN, STD, name=cfg.name)


def run_dir(name: str) -> Path:
    return cache_dir() / "train" / name


class _Run:
    """Everything one training run holds on its device: model, optimiser, data, attack."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = device = pick_device(cfg.device)
        if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.probe = build_probe(cfg).to(device).to(memory_format=torch.channels_last)
        self.use_amp = cfg.amp and _amp_ok(device)
        train_set = cfg.split("train")
        images, labels = train_set.images, train_set.labels
        if cfg.subset:  # a fixed random subset (the data are stored class by class)
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(12345))
            images, labels = images[keep[:cfg.subset]], labels[keep[:cfg.subset]]
        self.images, self.labels = images.to(device), labels.to(device)
        self.n = len(labels)
        self.steps_per_epoch = max(1, self.n // cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        decay, no_decay = [], []
        for _pname, p in self.probe.model.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}],
                                   lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        self.attack = None
        if cfg.threat:
            self.attack = attacks.PGD(cfg.threat, cfg.eps, cfg.attack_step_size,
                                      cfg.attack_steps, cfg.random_start)

    def step(self, step: int, perm: torch.Tensor, gen: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One SGD step on batch `step` of the epoch's permutation; returns the summed
        loss and the number correct as device tensors (no host sync: the CPU queues
        the next step while the GPU runs this one), and the batch size."""
        cfg, b = self.cfg, step % self.steps_per_epoch
        for g in self.opt.param_groups:
            g["lr"] = one_cycle(step, self.total_steps, cfg.lr, cfg.warmup)
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        x = augment(self.images[idx], gen).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        y = self.labels[idx]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            if self.attack is not None:
                a = self.attack
                x = attacks.pgd(self.probe, x, y, a.norm, a.eps, a.step_size, a.steps,
                                a.random_start, generator=gen)
            logits = self.probe(x)
            loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach() * len(y), (logits.detach().argmax(1) == y).sum(), len(y)

    def epoch_generator(self, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=gen, device=self.device), gen


def train(cfg: TrainConfig, log: Callable[[str], None] = print,
          stop_after_epoch: int | None = None) -> Probe:
    """Train (or resume) the model of `cfg`; returns the trained Probe.

    stop_after_epoch ends this call after that epoch (a resumable chunk).
    """
    run = _Run(cfg)
    probe, opt, device = run.probe, run.opt, run.device
    test_set = cfg.split("test")

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

    eval_idx = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))
    eval_x = test_set.images[eval_idx[:cfg.eval_images]].to(device)
    eval_y = test_set.labels[eval_idx[:cfg.eval_images]].to(device)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        perm, gen = run.epoch_generator(epoch)
        probe.train()
        run_loss = torch.zeros((), device=device)
        run_correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        for b in range(run.steps_per_epoch):
            loss_sum, correct, size = run.step(epoch * run.steps_per_epoch + b, perm, gen)
            run_loss += loss_sum
            run_correct += correct
            seen += size
        probe.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_amp):
            correct = sum(int((probe(eval_x[s:s + 500].float() / 255).argmax(1)
                               == eval_y[s:s + 500]).sum()) for s in range(0, len(eval_y), 500))
        epoch_s = time.time() - t0
        wall += epoch_s
        rec = {"epoch": epoch + 1, "train_loss": float(run_loss) / seen,
               "train_acc": int(run_correct) / seen,
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
                                    "hardware": hardware(device), "bf16_autocast": run.use_amp,
                                    "complete": len(history) >= cfg.epochs}})
    return probe


def seconds_per_step(cfg: TrainConfig, steps: int = 30, warmup: int = 10,
                     barrier: tuple[Path, int] | None = None) -> dict:
    """Time `steps` training steps of `cfg` (after `warmup` untimed ones) on a throwaway
    model. barrier=(folder, n): start timing only once n runs have reached it, so that
    runs sharing one GPU are timed under each other's load."""
    run = _Run(cfg)
    perm, gen = run.epoch_generator(0)
    run.probe.train()

    def sync() -> None:
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
    for s in range(warmup):
        run.step(s, perm, gen)
    sync()
    if barrier is not None:
        folder, count = barrier
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{cfg.name}.ready").touch()
        deadline = time.time() + 300
        while len(list(folder.glob("*.ready"))) < count and time.time() < deadline:
            for s in range(warmup, warmup + 2):  # keep loading the GPU while others start
                run.step(s, perm, gen)
            sync()
    t0 = time.time()
    for s in range(warmup, warmup + steps):
        run.step(s, perm, gen)
    sync()
    return {"name": cfg.name, "seconds_per_step": (time.time() - t0) / steps,
            "steps_per_epoch": run.steps_per_epoch, "hardware": hardware(run.device)}


def _stored_recipe(name: str) -> dict | None:
    last = run_dir(name) / "last.pt"
    if not last.exists():
        return None
    return torch.load(last, map_location="cpu", weights_only=True)["config"]


def epochs_within(cfg: TrainConfig, seconds_per_step: float, steps_per_epoch: int,
                  budget_s: float) -> int:
    """The most epochs (at most the recipe's) that fit `budget_s` at the measured speed;
    10% is kept for the per-epoch evaluation and checkpoint."""
    fit = int(budget_s / (1.1 * seconds_per_step * steps_per_epoch))
    return max(1, min(cfg.epochs, fit))


def _child(args: list[str], log: Callable[[str], None], prefix: str):
    """Start `python -m core ARGS` in the project root; its output lines go to log."""
    import subprocess
    import sys
    import threading
    proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            log(f"[{prefix}] {line.rstrip()}")
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return proc, t, lines


def run_children(commands: dict[str, list[str]], log: Callable[[str], None] = print
                 ) -> dict[str, list[str]]:
    """Run several `python -m core` commands at once; {key: output lines}. Raises if any
    fails (after all have ended), naming it and its last lines."""
    started = {k: _child(a, log, k) for k, a in commands.items()}
    failed = []
    for k, (proc, thread, lines) in started.items():
        proc.wait()
        thread.join()
        if proc.returncode != 0:
            failed.append(f"{k} (exit {proc.returncode}): " + " | ".join(lines[-5:]))
    if failed:
        raise RobustLensError("; ".join(failed))
    return {k: v[2] for k, v in started.items()}


def train_parallel(cfgs: list[TrainConfig], budget_s: float | None = None,
                   log: Callable[[str], None] = print, timing_steps: int = 30) -> dict[str, int]:
    """Train several zoo models at once, one process each (a GPU is launch-bound at
    CIFAR sizes, so runs in parallel cost little more than one). With budget_s, the
    runs are first timed side by side and each recipe's epochs are cut to what fits;
    a run already under way keeps the epochs it started with. Returns {name: epochs}."""
    for cfg in cfgs:  # decode the data set once, before the children read the cache
        cfg.split("train"), cfg.split("test")

    def flags(cfg: TrainConfig) -> list[str]:
        own = cfg.name.removesuffix(f"-{cfg.data_set}") if cfg.data_set != "cifar10" else cfg.name
        out = ["train", own]
        for opt, val in (("--data", cfg.data_root), ("--device", cfg.device),
                         ("--subset", cfg.subset),
                         ("--data-set", cfg.data_set if cfg.data_set != "cifar10" else None)):
            if val:
                out += [opt, str(val)]
        return out
    epochs = {c.name: c.epochs for c in cfgs}
    if budget_s is not None:
        started = {}
        for c in cfgs:
            stored = _stored_recipe(c.name)
            if stored is not None and {**stored, "epochs": 0} == {**c.recipe(), "epochs": 0}:
                started[c.name] = stored["epochs"]
        fresh = [c for c in cfgs if c.name not in started]
        if fresh:
            import tempfile
            barrier = Path(tempfile.mkdtemp(prefix="rl-barrier-"))
            outs = run_children({c.name: flags(c) + ["--time-steps", str(timing_steps), "--barrier", str(barrier),
                                                     "--barrier-count", str(len(fresh))]
                                 for c in fresh}, log)
            for c in fresh:
                timing = json.loads(next(line for line in reversed(outs[c.name])
                                         if line.startswith("{")))
                epochs[c.name] = epochs_within(c, timing["seconds_per_step"],
                                               timing["steps_per_epoch"], budget_s)
                log(f"{c.name}: {timing['seconds_per_step'] * 1000:.1f} ms a step with "
                    f"{len(fresh)} runs side by side -> {epochs[c.name]} epochs in {budget_s:g} s")
        epochs.update(started)
    run_children({c.name: flags(c) + ["--epochs", str(epochs[c.name]), "--no-export"]
                  for c in cfgs}, log)
    return epochs


def card_fields(cfg: TrainConfig) -> dict:
    """The top of a model card, from its recipe."""
    if cfg.threat is None:
        threat, eps, label = "none", 0.0, f"standard (seed {cfg.seed})"
    elif cfg.threat == "linf":
        threat, eps, label = "linf", cfg.eps, f"Linf {cfg.eps * 255:g}/255"
    else:
        threat, eps, label = cfg.threat, cfg.eps, f"L2 {cfg.eps:.1f}"
    if cfg.data_set != "cifar10":
        label = f"{label}, {datasets.DATA_SETS[cfg.data_set].title}"
    return {"label": label, "dataset": cfg.data_set, "threat_model": threat, "eps": eps,
            "arch": cfg.arch, "width": cfg.width, "seed": cfg.seed}


WHY_WIDTH = ("Base width 32 (2.8 M parameters, 5.6 MB in fp16): a 150-step inversion of "
             "one image on both models takes a few seconds on a 2-core CPU, which the "
             "inversion page needs; width 64 is 4x the compute for little gain on CIFAR-10.")

# the shipped zoo's targets (clean, PGD-20 at the model's own eps) on the full test set;
# the cards say whether each was met
TARGETS = {"resnet18-standard-s0": (0.93, None), "resnet18-standard-s1": (0.93, None),
           "resnet18-linf-8": (0.77, 0.42), "resnet18-l2-0.5": (0.84, 0.62),
           "resnet18-l2-1.0": (0.77, 0.47)}


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
                                "judged on": "the full 10,000-image test set, PGD-20 with random "
                                          "start at the model's own eps"}
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


# The shipped zoo: the GPU recipe (PGD-3 adversarial training at batch 512, all five
# trained side by side on one GPU). `epochs` is what the shipped weights ran (a 320 s
# budget on one H200 fitted these); `train --budget S` cuts them to what fits S seconds
# on the machine at hand, `--epochs N` sets them, and the card records the epochs run.
_GPU = dict(batch_size=512, lr=0.3, notes="GPU recipe: five runs side by side on one GPU")
ZOO: dict[str, TrainConfig] = {
    "resnet18-standard-s0": TrainConfig("resnet18-standard-s0", seed=0, epochs=60, **_GPU),
    "resnet18-standard-s1": TrainConfig("resnet18-standard-s1", seed=1, epochs=60, **_GPU),
    "resnet18-linf-8": TrainConfig("resnet18-linf-8", seed=0, epochs=40, threat="linf",
                                   eps=8 / 255, attack_steps=3, attack_step_size=3 / 255, **_GPU),
    "resnet18-l2-0.5": TrainConfig("resnet18-l2-0.5", seed=0, epochs=39, threat="l2",
                                   eps=0.5, attack_steps=3, attack_step_size=0.5 / 1.2, **_GPU),
    "resnet18-l2-1.0": TrainConfig("resnet18-l2-1.0", seed=0, epochs=38, threat="l2",
                                   eps=1.0, attack_steps=3, attack_step_size=1.0 / 1.2, **_GPU),
}
