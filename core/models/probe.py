"""Probe: a model + its input normalisation + named layer taps.

Inputs are NCHW floats in [0, 1]; normalisation happens inside. Taps are
forward hooks on module paths (torchvision feature_extraction style), all set
through `_hooks`: handles are always removed, and the forward pass stops early
once every requested tap has been seen. Two ways to read them: `features`
(several layers, detached clones: an in-place op later in the network must not
change a tap) and `tap` (one layer, in the autograd graph, for optimisation and
stitching). A layer name is checked (`check_layers`) where it enters a Probe.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import re
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from core import data
from core.models.archs import ReLU, Swish
from core.errors import BadImageError, DeviceError, UnknownLayerError
from core.data.images import Preprocessing

# Full float32 on every device: cuDNN's default TF32 convolutions round to 10 bits, which
# moved CKA by 2e-4 and a fifth of PGD's pixels from the CPU's results (bf16 training aside)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

# the modules "every layer" taps (the pooled representation is among the default taps)
_LEAF_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, ReLU, Swish, nn.SiLU, nn.MaxPool2d,
               nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.LayerNorm, nn.GroupNorm)


class _StopForward(Exception):
    """Raised by a hook once the taps asked for are seen: the rest of the pass is skipped."""


def short_names(layers: Sequence[str]) -> list[str]:
    """Compact labels for taps in figures: layer3.1.bn2 -> 3.1.bn2; relu -> stem where it
    comes before the blocks (the ResNets' stem), not where it ends a WideResNet."""
    first_block = next((i for i, n in enumerate(layers) if n.startswith(("layer", "block"))),
                       len(layers))
    return ["stem" if n == "relu" and i < first_block else re.sub(r"^layer(?=\d)", "", n)
            for i, n in enumerate(layers)]


def _tensor_output(name: str, out: Any) -> torch.Tensor:
    if not torch.is_tensor(out):
        raise UnknownLayerError(f"layer {name!r} outputs a {type(out).__name__}, "
                                "not a tensor; tap a module that returns one")
    return out


def check_input_size(x: torch.Tensor, *models: Any) -> None:
    """Refuse a batch of data read for `models` (each Probe; other modules are not checked)
    whose images are not the model's input size: a ResNet pools any size away, so it
    would answer for images it was never made for."""
    for model in models:
        size = model.input_size if isinstance(model, Probe) else None
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise BadImageError(
                f"{model.name or 'this model'} takes {size}x{size} images, not "
                f"{x.shape[-2]}x{x.shape[-1]}: read them at its size (an image folder: "
                f"data.ImageFolder(root, {size}))")


def pick_device(preference: str | None = None) -> torch.device:
    """The one place that decides the device: CUDA, then Apple MPS, then CPU."""
    if preference and preference != "auto":
        try:
            dev = torch.device(preference)
        except RuntimeError as e:
            raise DeviceError(f"there is no device {preference!r}: name cpu, cuda, cuda:N, "
                              "mps or auto") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"{preference} was asked for, but this machine has no CUDA GPU")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                      and torch.backends.mps.is_available()):
            raise DeviceError("mps was asked for, but this machine has no Apple GPU")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pass_seconds(model: "Probe") -> tuple[float, float]:
    """Measured seconds of one image's forward pass, and of its forward and backward
    pass (a gradient to the pixels, as an attack or a fit takes), through a model on
    its device, in batches (64 on a GPU; on a CPU 32 small images or 4 large ones)
    after a warm-up: what a time estimate multiplies by a job's passes (its kind's cost,
    core.jobs.seconds) to say how long it takes."""
    batch = 64 if model.device.type != "cpu" else 32 if model.input_size <= 64 else 4
    x = torch.rand(batch, 3, model.input_size, model.input_size,
                   generator=torch.Generator().manual_seed(0)).to(model.device)

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    def gradient() -> None:   # to the pixels only, as attacks take it: no weight .grad
        pixels = x.clone().requires_grad_()
        torch.autograd.grad(model(pixels).sum(), pixels)
        sync()
    gradient()
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    sync()
    forward = time.perf_counter() - start
    start = time.perf_counter()
    gradient()
    return forward / batch, (time.perf_counter() - start) / batch


class Probe(nn.Module):
    """Any image classifier behind one interface (see DESIGN.md)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 name: str = "", card: dict | None = None,
                 layers: Sequence[str] | None = None,
                 representation_layer: str | None = None,
                 input_size: int = 32) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.name = name
        self.card = dict(card or {})
        self.input_size = input_size
        self._modules_by_name = dict(model.named_modules())
        self.representation_layer = representation_layer or getattr(
            model, "representation_layer", None) or self._guess_representation()
        self._layers = list(layers) if layers else (
            model.block_layers() if hasattr(model, "block_layers") else self._guess_layers())
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._order: list[str] | None = None
        self._num_classes: int | None = None
        self.eval()

    # ----------------------------------------------------------------- classes
    @property
    def num_classes(self) -> int:
        """The width of the model's output (from one dry run)."""
        if self._num_classes is None:
            self._trace()
        return int(self._num_classes or 0)

    @property
    def kind(self) -> str:
        """The data set the model classifies: 'cifar10', 'imagenet' or 'other'."""
        named = self.card.get("dataset")
        return named if named in data.KIND_NAMES else data.kind_of(self.num_classes,
                                                                  self.input_size)

    @property
    def preprocessing(self) -> Preprocessing:
        """How a photo of its data set becomes its input (its card's
        evaluation_transform; else the standard crop at its input size)."""
        return Preprocessing.of(self.card.get("evaluation_transform"), self.input_size)

    @property
    def classes(self) -> tuple[str, ...]:
        """The names of the model's outputs."""
        return data.class_names(self.kind, self.num_classes)

    # ------------------------------------------------------------------ layers
    @property
    def layers(self) -> list[str]:
        """Default taps in forward order (stem, blocks, representation, logits)."""
        return list(self._layers)

    @property
    def all_layers(self) -> list[str]:
        """Every conv / norm / activation / pool / linear module, in call order."""
        return [n for n in self.call_order() if isinstance(self._modules_by_name[n], _LEAF_TYPES)]

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def call_order(self) -> list[str]:
        """Module paths in the order their forward runs (found once by a dry run)."""
        if self._order is None:
            self._trace()
        return list(self._order or [])

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Output shape (without batch) of every module, from one dry run."""
        if self._shapes is None:
            self._trace()
        return dict(self._shapes or {})

    def _trace(self) -> None:
        order, shapes = [], {}

        def seen(name: str, out: Any) -> None:
            if torch.is_tensor(out):
                if name not in shapes:
                    order.append(name)
                shapes[name] = tuple(out.shape[1:])
        with self._hooks({name: seen for name in self._modules_by_name if name}), torch.no_grad():
            logits = self(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device))
        self._order, self._shapes = order, shapes
        self._num_classes = int(logits.shape[-1])

    @contextlib.contextmanager
    def _hooks(self, hooks: dict[str, Callable[[str, Any], None]]) -> Iterator[None]:
        """Forward hooks hook(name, output) on modules by path, always removed after.
        They act only on this thread's forward passes: the app's sessions share a
        model, and another session's pass must neither feed nor be stopped by them."""
        owner = threading.get_ident()

        def on(name: str, hook: Callable[[str, Any], None]) -> Callable:
            return lambda _m, _i, out: (hook(name, out) if threading.get_ident() == owner
                                        else None)
        handles = [self._modules_by_name[name].register_forward_hook(on(name, hook))
                   for name, hook in hooks.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _run_to_taps(self, x: torch.Tensor) -> None:
        """A forward pass that a hook may end early by raising _StopForward."""
        try:
            self(x)
        except _StopForward:
            pass

    def check_layers(self, layers: str | Sequence[str]) -> list[str]:
        """Validate tap names (one name or several) as a list; UnknownLayerError names
        close matches."""
        layers = [layers] if isinstance(layers, str) else list(layers)
        for layer in layers:
            if layer not in self._modules_by_name or layer == "":
                near = difflib.get_close_matches(layer, list(self._modules_by_name), n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise UnknownLayerError(
                    f"model {self.name or type(self.model).__name__} has no layer {layer!r}{hint}")
        return layers

    def describe(self, layer: str) -> str:
        """One line about a tap: module type, parameters and output shape."""
        self.check_layers([layer])
        m = self._modules_by_name[layer]
        shape = self.layer_shapes().get(layer)
        kind = type(m).__name__
        if isinstance(m, nn.Conv2d):
            kind = f"Conv2d {m.in_channels}->{m.out_channels}, {m.kernel_size[0]}x{m.kernel_size[1]}, stride {m.stride[0]}"
        elif layer == self.representation_layer:
            kind = "penultimate representation (global average pool)"
        elif layer == getattr(self.model, "stem_layer", None):
            kind = "stem output"
        elif kind in ("BasicBlock", "Bottleneck", "ImageNetBasicBlock", "ImageNetBottleneck",
                      "WideBasicBlock", "DMBlock"):
            kind = f"residual block ({kind})"
        dims = "x".join(str(s) for s in shape) if shape else "?"
        return f"{layer}: {kind}; output {dims}"

    def _guess_representation(self) -> str | None:
        for cand in ("avgpool", "flatten", "global_pool", "pool"):
            if cand in self._modules_by_name:
                return cand
        return None

    def _guess_layers(self) -> list[str]:
        top = [n for n, _ in self.model.named_children()]
        blocks = []
        for n in top:
            child = self._modules_by_name[n]
            if isinstance(child, nn.Sequential) and len(child) and not isinstance(child[0], _LEAF_TYPES):
                blocks += [f"{n}.{i}" for i in range(len(child))]
            else:
                blocks.append(n)
        return blocks

    def fingerprint(self) -> str:
        """A short hash of the weights and normalisation: the model's identity in
        result keys (the shipped cards' file hash, else a hash of the tensors)."""
        if getattr(self, "_fingerprint", None) is None:
            weights = self.card.get("weights")
            sha = weights.get("sha256") if isinstance(weights, dict) else None
            if sha:
                self._fingerprint = sha[:16]
            else:
                h = hashlib.sha256()
                for k, v in sorted(self.state_dict().items()):
                    h.update(k.encode())
                    h.update(v.detach().cpu().contiguous().numpy().tobytes())
                self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def identity(self) -> dict:
        """What result keys use to name this model."""
        return {"name": self.name, "fingerprint": self.fingerprint()}

    # ----------------------------------------------------------------- forward
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():   # uint8 pixels would pass through as 0..255
            raise BadImageError(f"a model takes float images in [0, 1], not {x.dtype} "
                                "(divide 0..255 pixels by 255)")
        if self.mean.shape[1] == 1 and x.shape[1] == 3:   # a one-channel model: grey levels
            x = x.mean(1, keepdim=True)
        elif self.mean.shape[1] == 3 and x.shape[1] == 1:   # grey images, in all three
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def features(self, x: torch.Tensor, layers: str | Sequence[str] | None = None,
                 grad: bool = False,
                 reduce: Callable[[str, torch.Tensor], Any] | None = None) -> dict[str, Any]:
        """{layer: output} for the taps asked (default: `layers`).

        With grad=False the outputs are detached clones and the forward pass
        stops once the last tap is reached; with grad=True they stay in the graph.
        reduce(name, output), if given, runs inside the hook and its result is kept
        instead of a clone (e.g. a Gram matrix: the activation itself is never held).
        """
        layers = self.check_layers(layers if layers is not None else self._layers)
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}

        def keep(name: str, o: Any) -> None:
            o = _tensor_output(name, o)
            if reduce is not None:
                out[name] = reduce(name, o)
            else:
                out[name] = o if grad else o.detach().clone()
            if not grad and len(out) == len(wanted):
                raise _StopForward
        with self._hooks({name: keep for name in wanted}), \
                torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            self._run_to_taps(x)
        missing = wanted - set(out)
        if missing:
            raise UnknownLayerError(f"layers {sorted(missing)} did not run in the forward pass")
        return {name: out[name] for name in layers}

    @contextlib.contextmanager
    def tap(self, layer: str | None = None) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Inside the block, a function x -> the output of `layer` (default the
        penultimate representation) for inputs x, in the autograd graph; the
        network runs no further than that layer. A chain stage runs through
        forward_to (no hook); any other module through a hook that ends the pass."""
        if layer is None:
            layer = self.representation_layer
            if layer is None:
                raise UnknownLayerError("this model has no known representation layer; "
                                        "name a layer")
        self.check_layers([layer])
        if layer in self.chain_layers():
            yield lambda x: self.forward_to(x, layer)
            return
        seen: list[torch.Tensor] = []

        def stop(name: str, o: Any) -> None:
            seen.append(_tensor_output(name, o))
            raise _StopForward

        def run(x: torch.Tensor) -> torch.Tensor:
            seen.clear()
            self._run_to_taps(x)
            if not seen:
                raise UnknownLayerError(f"layer {layer!r} did not run in the forward pass")
            return seen[0]
        with self._hooks({layer: stop}):
            yield run

    @property
    def head(self) -> nn.Linear:
        """The last linear layer, the one that reads the representation (its rows:
        one per class)."""
        dim = self.layer_shapes().get(self.representation_layer or "", (None,))[0]
        for name in reversed(self.call_order()):
            m = self._modules_by_name.get(name)
            if isinstance(m, nn.Linear) and m.in_features == dim:
                return m
        raise UnknownLayerError(f"{self.name or 'this model'} has no linear layer on its "
                                "representation")

    @property
    def representation_size(self) -> int:
        """How many components the representation has (0 without one)."""
        shape = self.layer_shapes().get(self.representation_layer or "")
        return int(shape[0]) if shape else 0

    def representation(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Penultimate features, (N, D)."""
        if self.representation_layer is None:
            raise UnknownLayerError("this model has no known representation layer")
        return self.features(x, [self.representation_layer], grad=grad)[
            self.representation_layer].flatten(1)

    # ------------------------------------------------------ chains (stitching)
    def has_chain(self) -> bool:
        return hasattr(self.model, "chain")

    def chain_layers(self) -> list[str]:
        return [n for n, _ in self.model.chain()] if self.has_chain() else []

    def forward_to(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Run from the input up to and including chain stage `layer`."""
        h = self.normalize(x)
        for name, module in self._chain(layer):
            h = module(h)
            if name == layer:
                return h
        raise UnknownLayerError(layer)

    def forward_from(self, layer: str, h: torch.Tensor) -> torch.Tensor:
        """Run the chain stages after `layer` on activations h; returns logits."""
        after = False
        for name, module in self._chain(layer):
            if after:
                h = module(h)
            after = after or name == layer
        return h

    def _chain(self, layer: str) -> list[tuple[str, nn.Module]]:
        if not self.has_chain():
            raise UnknownLayerError(
                f"{self.name or 'this model'} is not a chain of stages; stitching needs one")
        chain = self.model.chain()
        if layer not in [n for n, _ in chain]:
            raise UnknownLayerError(
                f"{layer!r} is not a stitch point of {self.name or 'this model'}; "
                f"choose one of {', '.join(n for n, _ in chain)}")
        return chain

    # ---------------------------------------------------------------- fake relu
    @contextlib.contextmanager
    def fake_relu(self, enabled: bool = True) -> Iterator[None]:
        """Make the ReLU that feeds the representation an identity in backward."""
        relus = [m for n, m in self.model.named_modules() if isinstance(m, ReLU)]
        target = relus[-1] if relus else None
        old = target.fake if target is not None else False
        if target is not None:
            target.fake = enabled
        try:
            yield
        finally:
            if target is not None:
                target.fake = old
