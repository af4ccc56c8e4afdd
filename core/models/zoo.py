"""Model catalogue: the shipped zoo, checkpoint readers, and load().

`load()` turns any of these into a Probe:
- a name of the shipped zoo (pretrained/<name>.safetensors + <name>.json card);
- a file: safetensors; a plain state dict or {"state_dict": ...}; a MadryLab
  `robustness` checkpoint ({"model": sd, "epoch": ...} with module.model.* /
  module.normalizer.* / module.attacker.* keys, CIFAR or ImageNet), also when
  pickled with dill;
- "madrylab:<name>": a file of the Hugging Face repository of robust ImageNet
  models (madrylab/robust-imagenet-models), fetched into the hub's cache;
- "robustbench:<name>" (RobustBench's load_model, CIFAR-10 or ImageNet: its file
  at {model_dir}/{dataset}/{threat_model}/{name}.pt, downloaded when online);
- "timm:<name>" (timm.create_model(pretrained=True) with timm's data config);
- "torchvision:<name>" (ImageNet weights through torchvision's hub cache).

Architectures that core.archs knows (CIFAR and ImageNet ResNets, RobustBench's
WideResNets) are rebuilt as core.archs modules with the same weights: their
taps are verified and they can be stitched. Anything else loads as it is, with
a "taps not verified" notice on its card. Every card records the source, input
size, normalisation and classes, and `check`: top-1 accuracy on the labelled
images that ship with foolbox, so a wrong normalisation shows at once.

Files are read with torch.load(weights_only=True) or safetensors: a pickle that
needs code execution is refused unless trust=True.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from core import PROJECT
from core.models import archs

from core import data

from core.data import images
from core.data import MEAN, STD
from core.errors import CheckpointError, UnknownModelError, UntrustedPickleError
from core.models.probe import Probe, pick_device

PRETRAINED = Path(os.environ.get("ROBUSTLENS_PRETRAINED")
                  or PROJECT / "pretrained")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DM_CIFAR10_MEAN, DM_CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
NO_NORMALISATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
# the largest public robust checkpoints (madrylab's WRN-50-4: two copies of 0.9 GB of
# weights and the optimizer's momentum) are about 3 GB
MAX_CHECKPOINT_BYTES = 4 * 2**30
MADRYLAB_REPO = "madrylab/robust-imagenet-models"
# the repository's file-name prefixes that are not torchvision's architecture names
MADRYLAB_ARCHS = {"densenet": "densenet161", "mnasnet": "mnasnet1_0", "mobilenet": "mobilenet_v2",
                  "shufflenet": "shufflenet_v2_x1_0"}
UNVERIFIED_TAPS = ("taps not verified for this architecture: a tap may be overwritten by an "
                   "in-place operation or shared by a reused module, and it cannot be stitched")


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
         model_dir: str | os.PathLike = "models", directory: Path | None = None,
         check: bool = True, download: bool = True) -> Probe:
    """Load a model as a Probe in eval mode on `device` (default: best available);
    with check=True its card gets `check`, top-1 accuracy on the shipped samples;
    with download=False a hub name loads only from this machine's caches."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    key = str(name_or_path)
    source, _, rest = key.partition(":")
    if source in HUBS and rest:
        check_hub_name(source, rest)
        if not download and cached_weights(key, model_dir, dataset, threat_model) is None:
            raise CheckpointError(f"{key} is not on this machine, and downloading it is off")
    if source == "robustbench" and rest:
        probe = _load_robustbench(rest, dataset, threat_model, model_dir)
    elif source == "torchvision" and rest:
        probe = _load_torchvision(rest)
    elif source == "madrylab" and rest:
        probe = _load_madrylab(rest, trust, download)
    elif source == "timm" and rest:
        probe = _load_timm(rest, download)
    elif key in names(directory):
        probe = _load_shipped(key, directory)
    else:
        path = Path(key).expanduser()
        if not path.exists():
            known = ", ".join(names(directory))
            raise UnknownModelError(
                f"{key!r} is neither a shipped model ({known}), a file, nor a name such as "
                "madrylab:NAME, robustbench:NAME, timm:NAME or torchvision:NAME")
        probe = load_file(path, trust=trust, arch=arch, width=width, num_classes=num_classes,
                          mean=mean, std=std)
    for p in probe.parameters():
        p.requires_grad_(False)
    probe = probe.to(dev).eval()
    try:
        _record(probe)
    except (RuntimeError, ValueError, AssertionError, TypeError) as e:
        raise CheckpointError(f"{probe.name or key} loaded but does not run on a "
                              f"{probe.input_size}x{probe.input_size} image "
                              f"({type(e).__name__}: {str(e)[:160]})") from e
    if check and "check" not in probe.card:
        probe.card["check"] = sample_check(probe)
    return probe


HUBS = ("robustbench", "torchvision", "madrylab", "timm")
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_hub_name(source: str, name: str) -> None:
    """A hub name is a name, never a path: letters, digits and _.+- (robustbench's
    DATASET/THREAT/NAME aside), no '..'."""
    parts = name.split("/") if source == "robustbench" and name.count("/") == 2 else [name]
    if len(name) > 200 or any(not _NAME_PART.fullmatch(p) or ".." in p for p in parts):
        raise UnknownModelError(f"{source}:{name[:80]!r} is not a model name of {source} "
                                "(letters, digits and _.+- only)")


def cached_weights(spec: str, model_dir: str | os.PathLike = "models", dataset: str = "cifar10",
                   threat_model: str = "Linf") -> Path | None:
    """Where this machine holds a hub model's weights (the file its library reads), or
    None: not there yet (loading it downloads it), or `spec` names no hub model."""
    source, _, name = str(spec).partition(":")
    if source not in HUBS or not name:
        return None
    check_hub_name(source, name)
    if source == "robustbench":
        parts = name.split("/")
        if len(parts) == 3:
            dataset, threat_model, name = parts
        else:
            dataset, threat_model = _robustbench_entry(name, dataset, threat_model)[:2]
        found = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    elif source == "torchvision":
        import torchvision
        try:
            url = torchvision.models.get_model_weights(name).DEFAULT.url
        except (ValueError, KeyError):
            return None
        found = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    else:
        repo, files = ((MADRYLAB_REPO, [name if name.endswith(".ckpt") else f"{name}.ckpt"])
                       if source == "madrylab" else _timm_hub_files(name))
        return _hub_cache_file(repo, files)
    return found if found.is_file() else None


def _hub_cache_file(repo: str | None, files: list[str]) -> Path | None:
    if repo is None:
        return None
    from huggingface_hub import try_to_load_from_cache
    for filename in files:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _timm_hub_files(name: str) -> tuple[str | None, list[str]]:
    """The Hugging Face repository of a timm model's weights and the files timm reads."""
    import timm.models
    cfg = timm.models.get_pretrained_cfg(name)
    return (getattr(cfg, "hf_hub_id", None) or None,
            ["model.safetensors", "pytorch_model.bin"])


def loader(device: str | None = None) -> Callable[[str], Probe]:
    """A load(spec) that loads each model once (the command line's and sweeps' loader)."""
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def load(spec: str) -> Probe:
        return globals()["load"](spec, device=device)
    return load


def _record(probe: Probe) -> None:
    """What every card says about a loaded model: input size, normalisation, classes."""
    c = probe.card
    c.setdefault("source", "file")
    c["input_size"] = probe.input_size
    c["mean"] = [round(float(v), 6) for v in probe.mean.flatten()]
    c["std"] = [round(float(v), 6) for v in probe.std.flatten()]
    c["num_classes"] = probe.num_classes
    c["dataset"] = probe.kind
    c.setdefault("normalisation", "the model card's")
    c.setdefault("taps_verified", isinstance(probe.model, archs.VERIFIED_FAMILIES))
    if not c["taps_verified"]:
        c.setdefault("notice", UNVERIFIED_TAPS)


def sample_predictions(probe: Probe) -> list[tuple[data.Sample, int]]:
    """The labelled sample images of the model's data set (resized to its input size),
    each with the model's prediction; none for models of other data sets."""
    samples = data.samples(probe.kind)
    if not samples:
        return []
    x = torch.stack([images.to_tensor(images.fit(s.image, probe.input_size)) for s in samples])
    with torch.no_grad():
        predicted = probe(x.to(probe.device)).argmax(1).cpu().tolist()
    return list(zip(samples, predicted))


def sample_check(probe: Probe) -> dict:
    """Top-1 accuracy on the labelled images foolbox ships for the model's classes
    (20 CIFAR-10 test or ImageNet validation images, resized to its input size)."""
    pairs = sample_predictions(probe)
    if not pairs:
        return {"n": 0, "text": f"no labelled sample images for a {probe.num_classes}-class "
                                "model"}
    top1 = sum(s.label == p for s, p in pairs) / len(pairs)
    what = f"labelled {data.KIND_NAMES[probe.kind]} images that foolbox ships"
    return {"top1": top1, "n": len(pairs), "images": what,
            "text": f"top-1 {top1:.0%} on the {len(pairs)} {what}"}


def _load_shipped(name: str, directory: Path | None) -> Probe:
    c = card(name, directory)
    sd, _meta = read_checkpoint((directory or PRETRAINED) / f"{name}.safetensors")
    model = archs.build(c["arch"], c.get("num_classes", 10), c["width"])
    _load_into(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
               f"{c['arch']} (width {c['width']})")
    return Probe(model, c.get("mean", MEAN), c.get("std", STD), name=name,
                 card={"source": "shipped", **c})


def _default_normalisation(arch: str, channels: int = 3) -> tuple[tuple, tuple, str]:
    """(mean, std, why) for a file that stores no normaliser, by architecture family (a
    one-channel model's: of its one channel)."""
    if arch.startswith("imagenet_") or arch not in archs.ARCHS:
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's (assumed: the file stores none)"
    none = ((0.0,) * channels, (1.0,) * channels)
    if arch == "wrn":
        return (*none, "none: inputs in [0, 1] (assumed, as RobustBench's WideResNets; the "
                       "file stores none)")
    if arch.startswith(("cifar_tv_", "vgg")):
        return (*none, "none: [0, 1] inputs, no normalisation (the stitching paper's layout)")
    if arch == "lenet":
        return (*none, "inside the model, by the mean and deviation the file stores")
    if arch in ("dm_wrn", "dm_preact_resnet"):
        return DM_CIFAR10_MEAN, DM_CIFAR10_STD, "DeepMind's CIFAR-10 (assumed: the file stores none)"
    return MEAN, STD, "the robustness library's CIFAR-10 (assumed: the file stores none)"


def load_file(path: Path, *, trust: bool = False, arch: str | None = None,
              width: int | None = None, num_classes: int | None = None,
              mean: tuple | None = None, std: tuple | None = None,
              fallback_arch: str | None = None) -> Probe:
    """A checkpoint file -> Probe, detecting its layout and architecture. `arch` may
    also name a torchvision architecture (e.g. vgg16_bn), loaded with unverified taps;
    `fallback_arch` is used only where the keys name no known architecture."""
    sd, meta = read_checkpoint(path, trust=trust)
    if isinstance(sd, nn.Module):  # a whole pickled model, only with trust=True
        return _pickled_module(sd.eval(), path, mean, std)
    sidecar = path.with_suffix(".json")
    side = {}
    if sidecar.exists():
        try:
            side = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            side = {}
    weights = side.get("weights")
    if isinstance(weights, dict) and weights.get("sha256") != weights_sha256(path):
        del side["weights"]  # a card copied beside other weights must not lend them its identity
    sd = archs.strip_unused(sd)
    found = archs.identify(sd)
    arch = arch or meta.get("arch") or side.get("arch") or (None if found else fallback_arch)
    if arch is None and found is None:
        raise CheckpointError(
            f"{path.name}: cannot tell the architecture from its keys "
            f"(first keys: {', '.join(list(sd)[:5])}); pass arch=... (known: "
            f"{', '.join(archs.ARCHS)}, or a torchvision architecture name)")
    options = dict(found[1]) if found and (arch is None or arch == found[0]) else {}
    arch = arch or found[0]
    if "num_classes" in options or num_classes or meta.get("num_classes") or side.get("num_classes"):
        options["num_classes"] = int(num_classes or meta.get("num_classes")
                                     or side.get("num_classes") or options["num_classes"])
    if arch in ("resnet18", "resnet34", "resnet50"):
        options["width"] = int(width or meta.get("width") or side.get("width")
                               or options.get("width", 64))
    if side.get("activation"):
        options["activation"] = side["activation"]
    model = _build(arch, options, path.name)
    _load_into(model, sd, f"{arch} ({', '.join(f'{k} {v}' for k, v in options.items())})")
    d_mean, d_std, why = _default_normalisation(arch, int(options.get("in_channels", 3)))
    how = ("given" if mean is not None else "stored in the file" if meta.get("mean")
           else "from the sidecar card" if side.get("mean") else why)
    mean = mean or meta.get("mean") or side.get("mean") or d_mean
    std = std or meta.get("std") or side.get("std") or d_std
    c = {"name": path.stem, "source": str(path), "arch": arch, **options,
         "format": meta.get("format"), "normalisation": how,
         **{k: v for k, v in side.items() if k not in ("mean", "std")}}
    if arch in ("dm_wrn", "dm_preact_resnet") and "activation" not in options:
        assumed, other = ("ReLU", "swish") if arch == "dm_wrn" else ("Swish", "relu")
        c["notice"] = (f"activation assumed {assumed}: a DeepMind network's weights do not "
                       f"say; for one trained with the other put {{\"activation\": "
                       f"\"{other}\"}} in {sidecar.name} beside the file (the top-1 check "
                       "shows which fits)")
    if int(options.get("in_channels", 3)) == 1:
        c["channels"] = "one: the model sees an image's grey level (the mean of its three)"
    # core.archs models know their input size, torchvision's are ImageNet models; a
    # sidecar card may say otherwise (a model trained on 64 px ImageNet)
    return Probe(model, mean, std, name=side.get("name", path.stem), card=c,
                 input_size=int(side.get("input_size") or getattr(model, "input_size", 224)))


def _pickled_module(model: nn.Module, path: Path, mean: tuple | None,
                    std: tuple | None) -> Probe:
    """A whole pickled model: its input size is the first of 224 and 32 it runs on,
    its normalisation ImageNet's for 1,000 outputs, else CIFAR-10's (unless given)."""
    for size in (224, 32):
        try:
            with torch.no_grad():
                outputs = model(torch.zeros(1, 3, size, size)).shape[-1]
            break
        except (RuntimeError, ValueError, AssertionError, TypeError):
            continue
    else:
        raise CheckpointError(f"{path.name} holds a model that runs on neither 224 nor 32 px "
                              "images")
    imagenet = outputs == 1000
    d_mean, d_std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (MEAN, STD)
    how = "given" if mean else f"{'ImageNet' if imagenet else 'CIFAR-10'}'s (assumed)"
    mean, std = mean or d_mean, std or d_std
    return adopt(model, Probe(model, mean, std, input_size=size), mean, std, name=path.stem,
                 input_size=size, card={"source": str(path), "format": "pickled module",
                                        "normalisation": how})


def _build(arch: str, options: dict, label: str) -> nn.Module:
    """core.archs' module for `arch`, else torchvision's (unverified taps)."""
    if arch in archs.ARCHS:
        try:
            return archs.build(arch, **options)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{label}: {e}") from e
    import torchvision
    try:
        return torchvision.models.get_model(arch, weights=None, **options)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{label}: unknown architecture {arch!r} (known: "
                              f"{', '.join(archs.ARCHS)}, or a torchvision name)") from e


def read_checkpoint(path: Path, trust: bool = False) -> tuple[Any, dict]:
    """Read a checkpoint file -> (state dict, meta). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path.name} is empty")
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path.name} is {size / 2**30:.1f} GB; the limit is "
                              f"{MAX_CHECKPOINT_BYTES // 2**30} GB")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path.name} is not a readable safetensors file: not one "
                                  "that safetensors wrote, or a damaged one") from e
        for k in ("mean", "std"):
            if k in meta:
                meta[k] = json.loads(meta[k])
        meta["format"] = "safetensors"
        return sd, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if re.search(r"unsupported global", msg, re.IGNORECASE):  # torch words it two ways
            what = re.search(r"GLOBAL ([\w.]+)", msg)
            raise UntrustedPickleError(
                f"{path.name} was refused: loading it would execute code stored in the file "
                f"(it pickles {what.group(1) if what else 'Python objects'}, not just tensors). "
                "Load it only if you trust its source: zoo.load(path, trust=True), or tick "
                "'trust this file' in the app.") from e
        raise UntrustedPickleError(f"{path.name} is not a readable PyTorch checkpoint: the "
                                   "safe loader found more than tensors in it. A legacy pickle from a "
                              "source you trust can be loaded with trust=True.") from e
    except Exception as e:  # noqa: BLE001 - any parser failure on an untrusted file is "unreadable"
        # the parser's own words (KeyError: 105) tell a person nothing; the cause is chained
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: not a file "
                              "that torch.save or safetensors wrote, or a damaged one") from e
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

def adopt(model: nn.Module, reference: Callable[[torch.Tensor], torch.Tensor],
          mean: tuple, std: tuple, *, name: str, card: dict, input_size: int,
          activation: str | None = None,
          fallback: tuple[nn.Module, tuple, tuple] | None = None) -> Probe:
    """A model from another library as a Probe. If core.archs knows its architecture
    (from its state dict), it is rebuilt there with the same weights and kept if it
    computes the same logits as `reference` (the original on [0, 1] inputs); else the
    Probe wraps `fallback` (module, mean, std; default: model, mean, std) as it is."""
    sd = archs.strip_unused(model.state_dict())
    found = archs.identify(sd)
    if found is not None:
        arch, options = found
        if activation and arch == "dm_wrn":
            options = {**options, "activation": activation}
        try:
            rebuilt = archs.build(arch, **options)
            _load_into(rebuilt, sd, arch)
        except (CheckpointError, TypeError, ValueError):
            rebuilt = None
        if rebuilt is not None:
            probe = Probe(rebuilt.eval(), mean, std, name=name, input_size=input_size,
                          card={**card, "arch": arch, **options})
            x = torch.rand(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                want, got = reference(x), probe(x)
            if torch.allclose(want, got, rtol=1e-3, atol=1e-3 * float(want.abs().max())):
                return probe
    module, mean, std = fallback or (model, mean, std)
    return Probe(module.eval(), mean, std, name=name, input_size=input_size,
                 card={**card, "arch": type(model).__name__})


def _offline(what: str, how: str) -> CheckpointError:
    return CheckpointError(f"Could not find {what} on this machine or download it (offline?). "
                           f"On a machine with internet: {how}")


def _load_robustbench(name: str, dataset: str, threat_model: str,
                      model_dir: str | os.PathLike) -> Probe:
    try:
        _alias_autoattack()
        from robustbench.utils import load_model
    except ImportError as e:
        extra = (" (robustbench imports pkg_resources: pip install 'setuptools<81')"
                 if "pkg_resources" in str(e) else "")
        raise CheckpointError("RobustBench models need the optional extra: pip install "
                              f"robustbench beautifulsoup4{extra}") from e
    if name.count("/") == 2:                         # robustbench:imagenet/Linf/NAME
        dataset, threat_model, name = name.split("/")
    dataset, threat_model, entry = _robustbench_entry(name, dataset, threat_model)
    file = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    try:
        model = load_model(model_name=name, model_dir=str(model_dir), dataset=dataset,
                           threat_model=threat_model)
    except Exception as e:  # noqa: BLE001 - a download or unpickling failure inside robustbench
        if not file.is_file():
            raise _offline(f"RobustBench model {name} ({file})",
                           f"python -c \"from robustbench.utils import load_model; load_model("
                           f"'{name}', model_dir='{model_dir}', dataset='{dataset}', "
                           f"threat_model='{threat_model}')\", then copy {file} here.") from e
        raise CheckpointError(f"RobustBench model {name!r} could not be loaded from {file}: "
                              f"{type(e).__name__}: {str(e)[:200]}") from e
    inner, mean, std = _robustbench_normaliser(model)
    transform = (_ROBUSTBENCH_TRANSFORMS.get(entry.get("preprocessing"), _ROBUSTBENCH_TRANSFORMS[None])
                 if dataset == "imagenet" else None)
    size = transform.size if transform else 32
    card = {"name": name, "source": "robustbench", "dataset": dataset,
            "threat_model": threat_model, "preprocessing": entry.get("preprocessing"),
            **({"evaluation_transform": dataclasses.asdict(transform)} if transform else {}),
            "normalisation": "RobustBench's own (the model's normaliser)"}
    return adopt(inner, model, mean, std, name=f"robustbench:{name}", card=card,
                 input_size=size, activation=_activation(inner),
                 fallback=(model, *NO_NORMALISATION))


def _robustbench_entry(name: str, dataset: str, threat_model: str) -> tuple[str, str, dict]:
    """RobustBench's data set, threat model and model entry for a name (the name's own
    data set and threat model where it is listed under other ones)."""
    _alias_autoattack()
    from robustbench.model_zoo import model_dicts
    entries = {(d.value, t.value): models[name] for d, threats in model_dicts.items()
               for t, models in threats.items() if name in models}
    if (dataset, threat_model) not in entries:
        if not entries:
            raise UnknownModelError(f"RobustBench has no model {name!r}")
        dataset, threat_model = next(iter(entries))  # the name is found elsewhere: use that
    return dataset, threat_model, entries[(dataset, threat_model)]


# RobustBench's ImageNet preprocessings by name (robustbench.data.PREPROCESSINGS)
_ROBUSTBENCH_TRANSFORMS = {
    None: images.Preprocessing.standard(224),
    "Res256Crop224": images.Preprocessing(224, 256),
    "BicubicRes256Crop224": images.Preprocessing(224, 256, "bicubic"),
    "Res224": images.Preprocessing(224, 224, squash=True),
    "Crop288": images.Preprocessing(288),
}


def _robustbench_normaliser(model: nn.Module) -> tuple[nn.Module, tuple, tuple]:
    """RobustBench models take [0, 1] inputs and normalise inside: (the network after
    its normaliser, mean, std)."""
    def flat(t: torch.Tensor) -> tuple:
        return tuple(float(v) for v in t.flatten())
    normalize = getattr(model, "normalize", None)
    if isinstance(model, nn.Sequential) and normalize is not None and hasattr(model, "model"):
        return model.model, flat(normalize.mean), flat(normalize.std)
    if torch.is_tensor(getattr(model, "mean", None)) and torch.is_tensor(getattr(model, "std", None)) \
            and not getattr(model, "padding", 0):
        return model, flat(model.mean), flat(model.std)
    return model, *NO_NORMALISATION


def _activation(model: nn.Module) -> str | None:
    """'swish' or 'relu' for DeepMind-style WideResNets (not readable from weights)."""
    names = {type(m).__name__ for m in model.modules()}
    return "swish" if names & {"Swish", "SiLU"} else "relu" if "ReLU" in names else None


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
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UnknownModelError(f"torchvision has no image classifier {name!r} "
                                "(torchvision.models.list_models() lists them)")
    builder = torchvision.models.get_model_builder(name)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = builder(weights=weights).eval()
    except (OSError, RuntimeError) as e:
        raise _offline(f"torchvision's weights for {name}",
                       f"python -c \"import torchvision; torchvision.models.get_model('{name}', "
                       f"weights='DEFAULT')\" (it fills {torch.hub.get_dir()}/checkpoints).") from e
    given = weights.transforms()
    size = given.crop_size[0]
    transform = images.Preprocessing(size, given.resize_size[0], given.interpolation.value)
    return adopt(model, Probe(model, IMAGENET_MEAN, IMAGENET_STD, input_size=size),
                 IMAGENET_MEAN, IMAGENET_STD, name=f"torchvision:{name}", input_size=size,
                 card={"name": name, "source": "torchvision", "weights_name": str(weights),
                       "evaluation_transform": dataclasses.asdict(transform),
                       "normalisation": "ImageNet's (torchvision's weights)"})


def _load_madrylab(name: str, trust: bool, download: bool = True) -> Probe:
    """A robustness-library checkpoint of madrylab/robust-imagenet-models, e.g.
    resnet50_l2_eps3 (file resnet50_l2_eps3.ckpt)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as e:
        raise CheckpointError("madrylab: models need huggingface_hub: pip install "
                              "huggingface_hub") from e
    filename = name if name.endswith(".ckpt") else f"{name}.ckpt"
    try:
        path = Path(hf_hub_download(MADRYLAB_REPO, filename, local_files_only=not download))
    except LocalEntryNotFoundError as e:
        raise _offline(f"{MADRYLAB_REPO}/{filename}",
                       f"hf download {MADRYLAB_REPO} {filename} (then it is in the Hugging "
                       "Face cache, where this app looks).") from e
    except EntryNotFoundError as e:
        raise UnknownModelError(f"{MADRYLAB_REPO} has no file {filename}; see "
                                f"https://huggingface.co/{MADRYLAB_REPO}/tree/main") from e
    except OSError as e:
        raise _offline(f"{MADRYLAB_REPO}/{filename}", f"hf download {MADRYLAB_REPO} {filename}") from e
    stem = filename[:-len(".ckpt")]
    named = re.match(r"(.+?)_(l2|linf)_eps", stem)
    arch = named.group(1) if named else None
    probe = load_file(path, trust=trust, fallback_arch=MADRYLAB_ARCHS.get(arch, arch))
    found = re.search(r"_eps(\d+(?:\.\d+)?)", stem)
    eps = float(found.group(1)) if found else None
    robust = named is not None and bool(eps)            # eps0 files are the standard models
    probe.name = f"madrylab:{stem}"
    probe.card.update({"name": stem, "source": f"huggingface:{MADRYLAB_REPO}",
                       "threat_model": {"l2": "L2", "linf": "Linf"}[named.group(2)]
                       if robust else "none", **({"eps": eps} if found else {})})
    return probe


def _load_timm(name: str, download: bool = True) -> Probe:
    try:
        import timm
    except ImportError as e:
        raise CheckpointError("timm: models need timm: pip install timm") from e
    if not timm.is_model(name.split(".")[0]):
        raise UnknownModelError(f"timm has no model {name!r} (timm.list_models() lists them)")
    try:
        # without downloads, the weights come from the file in the hub's cache
        local = {} if download else {"pretrained_cfg_overlay": {"file": str(
            _hub_cache_file(*_timm_hub_files(name)))}}
        model = timm.create_model(name, pretrained=True, **local).eval()
    except OSError as e:       # the hub's download errors (and requests') are OSErrors
        raise _offline(f"timm's weights for {name}",
                       f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
                       "(it fills the Hugging Face cache, where this app looks).") from e
    except Exception as e:  # noqa: BLE001 - anything else timm raises while building it
        raise CheckpointError(f"timm could not create {name} ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e
    cfg = timm.data.resolve_model_data_config(model)
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    size = int(cfg["input_size"][-1])
    transform = timm_preprocessing(cfg)
    return adopt(model, Probe(model, mean, std, input_size=size), mean, std,
                 name=f"timm:{name}", input_size=size,
                 card={"name": name, "source": "timm", "interpolation": cfg.get("interpolation"),
                       "crop_pct": cfg.get("crop_pct"),
                       "evaluation_transform": dataclasses.asdict(transform),
                       "normalisation": "timm's data config"})


def timm_preprocessing(cfg: dict) -> images.Preprocessing:
    """timm's evaluation transform for a model's data config: resize to
    floor(size / crop_pct) (the shorter side, both sides with crop_mode "squash", the
    longer side with "border", whose borders are the mean colour), then the centre."""
    size = int(cfg["input_size"][-1])
    mode = cfg.get("crop_mode") or "center"
    return images.Preprocessing(
        size, math.floor(size / (cfg.get("crop_pct") or images.STANDARD_CROP)),
        cfg.get("interpolation", "bilinear"), squash=mode == "squash",
        border=tuple(round(255 * v) for v in cfg["mean"]) if mode == "border" else None)


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
