"""Model catalogue: the shipped zoo, checkpoint readers, and load().

`load()` turns any of these into a Probe:
- a name of the shipped zoo (pretrained/<name>.safetensors + <name>.json card);
- a file: safetensors; a plain state dict or {"state_dict": ...}; a MadryLab
  `robustness` checkpoint ({"model": sd, "epoch": ...} with module.model.* /
  module.normalizer.* / module.attacker.* keys) mapped onto core.archs;
- "robustbench:<name>" (RobustBench's load_model: its file at
  {model_dir}/{dataset}/{threat_model}/{name}.pt, downloaded when online);
- "torchvision:<name>" (ImageNet weights through torchvision's hub cache).

Files are read with torch.load(weights_only=True) or safetensors: a pickle that
needs code execution is refused unless trust=True.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import archs
from .data import MEAN, STD
from .errors import CheckpointError, UnknownModelError
from .probe import Probe, pick_device

PRETRAINED = Path(os.environ.get("ROBUSTLENS_PRETRAINED")
                  or Path(__file__).resolve().parent.parent / "pretrained")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAX_CHECKPOINT_BYTES = 2 * 2**30
_BLOCKS = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
           (True, (3, 4, 6, 3)): "resnet50"}


# --------------------------------------------------------------------- catalogue

def names(directory: Path | None = None) -> list[str]:
    """Names of the shipped models (a card and its weights both present)."""
    d = directory or PRETRAINED
    return sorted(p.stem for p in d.glob("*.json") if p.with_suffix(".safetensors").exists())


def card(name: str, directory: Path | None = None) -> dict:
    """The model card of a shipped model: arch, threat model, recipe, measured accuracy."""
    path = (directory or PRETRAINED) / f"{name}.json"
    if not path.exists():
        raise UnknownModelError(f"no shipped model {name!r}; known: {', '.join(names(directory)) or 'none'}")
    with open(path) as f:
        return json.load(f)


def is_robust(c: dict) -> bool:
    return bool(c.get("threat_model")) and c.get("threat_model") != "none"


def short_label(c: dict) -> str:
    """A label for figures: 'standard (seed 0)', 'L2 1.0', 'Linf 8/255'."""
    return c.get("label") or c.get("name", "?")


# ------------------------------------------------------------------------- load

def load(name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
         trust: bool = False, arch: str | None = None, width: int | None = None,
         num_classes: int | None = None, mean: tuple | None = None, std: tuple | None = None,
         dataset: str = "cifar10", threat_model: str = "Linf",
         model_dir: str | os.PathLike = "models", directory: Path | None = None) -> Probe:
    """Load a model as a Probe in eval mode on `device` (default: best available)."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    key = str(name_or_path)
    if key.startswith("robustbench:"):
        probe = _load_robustbench(key.split(":", 1)[1], dataset, threat_model, model_dir)
    elif key.startswith("torchvision:"):
        probe = _load_torchvision(key.split(":", 1)[1])
    elif key in names(directory):
        probe = _load_shipped(key, directory)
    else:
        path = Path(key).expanduser()
        if not path.exists():
            known = ", ".join(names(directory))
            raise UnknownModelError(
                f"{key!r} is neither a shipped model ({known}) nor an existing file")
        probe = load_file(path, trust=trust, arch=arch, width=width, num_classes=num_classes,
                          mean=mean, std=std)
    for p in probe.parameters():
        p.requires_grad_(False)
    return probe.to(dev).eval()


def _load_shipped(name: str, directory: Path | None) -> Probe:
    c = card(name, directory)
    sd, _meta = read_checkpoint((directory or PRETRAINED) / f"{name}.safetensors")
    model = archs.build(c["arch"], c.get("num_classes", 10), c["width"])
    _load_into(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
               f"{c['arch']} (width {c['width']})")
    return Probe(model, c.get("mean", MEAN), c.get("std", STD), name=name, card=c)


def load_file(path: Path, *, trust: bool = False, arch: str | None = None,
              width: int | None = None, num_classes: int | None = None,
              mean: tuple | None = None, std: tuple | None = None) -> Probe:
    """A checkpoint file -> Probe, detecting its layout and architecture."""
    sd, meta = read_checkpoint(path, trust=trust)
    if isinstance(sd, nn.Module):  # a whole pickled model, only with trust=True
        return Probe(sd, mean or MEAN, std or STD, name=path.stem, card={"source": str(path)})
    sidecar = path.with_suffix(".json")
    side = {}
    if sidecar.exists():
        try:
            side = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            side = {}
    arch = arch or meta.get("arch") or side.get("arch")
    inferred = infer_arch(sd)
    if arch is None:
        if inferred is None:
            raise CheckpointError(
                f"{path.name}: cannot tell the architecture from its keys "
                f"(first keys: {', '.join(list(sd)[:5])}); pass arch=... (known: "
                f"{', '.join(archs.ARCHS)})")
        arch = inferred[0]
    width = width or int(meta.get("width") or side.get("width") or (inferred[1] if inferred else 64))
    num_classes = num_classes or int(meta.get("num_classes") or side.get("num_classes")
                                     or (inferred[2] if inferred else 10))
    try:
        model = archs.build(arch, num_classes, width)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    _load_into(model, sd, f"{arch} (width {width}, {num_classes} classes)")
    mean = mean or meta.get("mean") or side.get("mean") or MEAN
    std = std or meta.get("std") or side.get("std") or STD
    c = {"name": path.stem, "source": str(path), "arch": arch, "width": width,
         "num_classes": num_classes, "format": meta.get("format"), "mean": list(mean),
         "std": list(std), **{k: v for k, v in side.items() if k not in ("mean", "std")}}
    return Probe(model, mean, std, name=side.get("name", path.stem), card=c)


def read_checkpoint(path: Path, trust: bool = False) -> tuple[Any, dict]:
    """Read a checkpoint file -> (state dict, meta). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path.name} is empty")
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path.name} is {size / 2**30:.1f} GB; the limit is 2 GB")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path.name} is not a readable safetensors file: {e}") from e
        for k in ("mean", "std"):
            if k in meta:
                meta[k] = json.loads(meta[k])
        meta["format"] = "safetensors"
        return sd, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg:
            what = re.search(r"GLOBAL ([\w.]+)", msg)
            raise CheckpointError(
                f"{path.name} was refused: loading it would execute code stored in the file "
                f"(it pickles {what.group(1) if what else 'Python objects'}, not just tensors). "
                "Load it only if you trust its source: zoo.load(path, trust=True), or tick "
                "'trust this file' in the app.") from e
        detail = msg.split("WeightsUnpickler error:")[-1].strip().split("\n")[0][:120]
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint (the safe "
                              f"loader stopped: {detail}). A legacy pickle from a source you "
                              "trust can be loaded with trust=True.") from e
    except Exception as e:  # noqa: BLE001 - any parser failure on an untrusted file is "unreadable"
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]})") from e
    return unwrap_checkpoint(obj, path.name, trust)


def unwrap_checkpoint(obj: Any, label: str = "checkpoint", trust: bool = False) -> tuple[Any, dict]:
    """Find the state dict inside a loaded checkpoint object and say its format."""
    if isinstance(obj, nn.Module):
        if not trust:  # weights_only never yields a module; keep the rule explicit
            raise CheckpointError(f"{label} holds a pickled model; pass trust=True")
        return obj, {"format": "pickled module"}
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{label} holds a {type(obj).__name__}, not a state dict")
    meta: dict = {}
    if "model" in obj and isinstance(obj["model"], dict) and _is_state_dict(obj["model"]):
        sd = obj["model"]
        keys = list(sd)
        prefix = "module." if all(k.startswith("module.") for k in keys) else ""
        if any(k.startswith(prefix + "model.") for k in keys):  # robustness AttackerModel
            meta["format"] = "robustness"
            mean_key, std_key = prefix + "normalizer.new_mean", prefix + "normalizer.new_std"
            if mean_key in sd and std_key in sd:
                meta["mean"] = [float(v) for v in sd[mean_key].flatten()]
                meta["std"] = [float(v) for v in sd[std_key].flatten()]
            inner = prefix + "model."
            sd = {k[len(inner):]: v for k, v in sd.items() if k.startswith(inner)}
        else:
            meta["format"] = "{'model': state_dict}"
            sd = _strip(sd, "module.")
        if "epoch" in obj:
            meta["epoch"] = obj["epoch"]
        return sd, meta
    for key in ("state_dict", "model_state_dict", "net", "weights"):
        if key in obj and isinstance(obj[key], dict) and _is_state_dict(obj[key]):
            meta["format"] = f"{{'{key}': state_dict}}"
            return _strip(obj[key], "module."), meta
    if _is_state_dict(obj):
        meta["format"] = "state_dict"
        return _strip(obj, "module."), meta
    raise CheckpointError(f"{label}: no state dict found (top-level keys: "
                          f"{', '.join(map(str, list(obj)[:8]))})")


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and all(
        torch.is_tensor(v) for v in d.values())


def _strip(sd: dict, prefix: str) -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def infer_arch(sd: dict) -> tuple[str, int, int] | None:
    """(arch, width, num_classes) of a CIFAR ResNet state dict, or None."""
    if "conv1.weight" not in sd or "linear.weight" not in sd:
        return None
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(idx))
    bottleneck = "layer1.0.conv3.weight" in sd
    arch = _BLOCKS.get((bottleneck, tuple(counts)))
    if arch is None:
        return None
    return arch, int(sd["conv1.weight"].shape[0]), int(sd["linear.weight"].shape[0])


def _load_into(model: nn.Module, sd: dict, what: str) -> None:
    """Strict load with a message that names missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
                parts.append(f"{title}: {', '.join(items[:6])}{more}")
        raise CheckpointError(f"the checkpoint does not fit {what}: " + "; ".join(parts))
    model.load_state_dict({k: sd.get(k, own[k]) for k in own}, strict=True)


# ---------------------------------------------------------------- other sources

def _load_robustbench(name: str, dataset: str, threat_model: str,
                      model_dir: str | os.PathLike) -> Probe:
    try:
        _alias_autoattack()
        from robustbench.utils import load_model
    except ImportError as e:
        raise CheckpointError("RobustBench models need the optional extra: "
                              "pip install robustbench") from e
    try:
        model = load_model(model_name=name, model_dir=str(model_dir), dataset=dataset,
                           threat_model=threat_model)
    except (KeyError, ValueError) as e:
        raise UnknownModelError(f"RobustBench has no {dataset}/{threat_model} model {name!r}") from e
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"RobustBench model {name!r} could not be loaded: {e}") from e
    # RobustBench models take [0, 1] inputs and normalise inside themselves
    size = 224 if dataset == "imagenet" else 32
    return Probe(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), name=f"robustbench:{name}",
                 card={"name": name, "source": "RobustBench", "dataset": dataset,
                       "threat_model": threat_model}, input_size=size)


def _alias_autoattack() -> None:
    """RobustBench imports `autoattack` (a git-only package); PyPI's robustbench
    depends on `pyautoattack`, the same code under another name."""
    import importlib
    import sys
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack"):
        import pyautoattack
        import pyautoattack.state
        sys.modules.setdefault("autoattack", pyautoattack)
        sys.modules.setdefault("autoattack.state", pyautoattack.state)


def _load_torchvision(name: str) -> Probe:
    import torchvision
    try:
        builder = torchvision.models.get_model_builder(name)
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as e:
        raise UnknownModelError(f"torchvision has no model {name!r}") from e
    try:
        model = builder(weights=weights)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"torchvision weights for {name} are not available "
                              f"(offline?): {e}") from e
    return Probe(model, IMAGENET_MEAN, IMAGENET_STD, name=f"torchvision:{name}",
                 card={"name": name, "source": "torchvision", "dataset": "imagenet",
                       "weights": str(weights)}, input_size=224)


# ----------------------------------------------------------------------- export

def weights_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(probe: Probe, name: str, directory: Path | None = None, card_extra: dict | None = None,
           fresh: bool = False) -> Path:
    """Write fp16 safetensors weights and a JSON card to `directory` (pretrained/).
    The card keeps the fields of an existing one unless fresh=True (new weights)."""
    from safetensors.torch import save_file
    d = directory or PRETRAINED
    d.mkdir(parents=True, exist_ok=True)
    model = probe.model
    sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().contiguous()
          for k, v in model.state_dict().items()}
    arch = probe.card.get("arch") or probe.card.get("training", {}).get("arch", "resnet18")
    width = probe.card.get("width") or probe.card.get("training", {}).get("width", 64)
    meta = {"arch": arch, "width": str(width), "num_classes": str(model.linear.out_features),
            "mean": json.dumps([float(v) for v in probe.mean.flatten()]),
            "std": json.dumps([float(v) for v in probe.std.flatten()])}
    target = d / f"{name}.safetensors"
    tmp = target.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata=meta)
    os.replace(tmp, target)
    old = {}
    if (d / f"{name}.json").exists() and not fresh:
        old = json.loads((d / f"{name}.json").read_text())
    c = {**old, **probe.card, **(card_extra or {})}
    c.update({"name": name, "arch": arch, "width": int(width),
              "num_classes": model.linear.out_features,
              "parameters": sum(p.numel() for p in model.parameters()),
              "mean": [float(v) for v in probe.mean.flatten()],
              "std": [float(v) for v in probe.std.flatten()],
              "weights": {"file": target.name, "dtype": "float16",
                          "sha256": weights_sha256(target)}})
    (d / f"{name}.json").write_text(json.dumps(c, indent=2) + "\n")
    return target
