"""Architectures with named taps: CIFAR ResNets, ImageNet ResNets and wide ResNets.

Parameter names match the implementations robust checkpoints come from, so
those load strictly: `robustness.cifar_models` (MadryLab) for `CifarResNet`,
torchvision (and timm, which uses the same keys) for `ImageNetResNet`,
TRADES / RobustBench for `WideResNet`, DeepMind / RobustBench for
`DMWideResNet`. Unlike those, every activation is a module of its own, used
once per forward and never in place (so a forward hook can tap it and nothing
later rewrites the tap), and each network is a *chain* of named stages, so
that a stitched model can run "the front of A up to a stage" and "the rest of
B after it" without hooks. `identify` tells which of them a state dict fits.
"""
from __future__ import annotations

import inspect
import re
import threading
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class _FakeReLUFn(torch.autograd.Function):
    """ReLU forward, identity backward: dead units still receive gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class ReLU(nn.Module):
    """A ReLU with a switch for the "fake ReLU" of Engstrom et al. (2019), set per
    thread: the app's sessions share a model, and one session's inversion must not
    change the gradients of another session's attack."""

    def __init__(self) -> None:
        super().__init__()
        self.fake_threads: set[int] = set()

    @property
    def fake(self) -> bool:
        """Whether this thread's passes use the fake ReLU."""
        return threading.get_ident() in self.fake_threads

    @fake.setter
    def fake(self, enabled: bool) -> None:
        (self.fake_threads.add if enabled else self.fake_threads.discard)(threading.get_ident())

    def __getstate__(self) -> dict:
        # a copy starts with no thread switched on: thread ids are reused
        return {**super().__getstate__(), "fake_threads": set()}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({k: v for k, v in state.items() if k != "fake"})  # older pickles
        self.__dict__.setdefault("fake_threads", set())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeReLUFn.apply(x) if self.fake else F.relu(x)


class Swish(nn.Module):
    """x * sigmoid(x) (SiLU): the activation of DeepMind's robust wide ResNets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class GlobalAvgPool(nn.Module):
    """Average over space and flatten: the penultimate representation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


Stages = list[tuple[str, nn.Module]]


class ChainNet(nn.Module):
    """A network whose forward pass is its `chain()` of named stages, run in order.

    Subclasses list the stages in three parts: `_stem()`, `_blocks()` (the
    residual blocks) and `_head()`; the default taps are the stem's output,
    every block, and `head_taps`.
    """

    representation_layer = "avgpool"
    stem_layer: str
    head_taps: tuple[str, ...]
    input_size: int

    def _stem(self) -> Stages:
        """The stages before the first residual block."""
        raise NotImplementedError

    def _blocks(self) -> Stages:
        """The residual blocks, each a stage."""
        raise NotImplementedError

    def _head(self) -> Stages:
        """The stages after the last residual block, ending with the logits."""
        raise NotImplementedError

    def chain(self) -> Stages:
        """The forward pass as an ordered list of (module path, module)."""
        return self._stem() + self._blocks() + self._head()

    def block_layers(self) -> list[str]:
        """Default taps: stem, every residual block, representation, logits."""
        return [self.stem_layer] + [n for n, _ in self._blocks()] + list(self.head_taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.chain():
            x = module(x)
        return x


def _numbered(prefix: str, blocks: nn.Sequential) -> Stages:
    """(prefix.j, block j) for each block of a Sequential."""
    return [(f"{prefix}.{j}", blk) for j, blk in enumerate(blocks)]


class FourStageResNet(ChainNet):
    """A ResNet whose blocks are in layer1 .. layer4 (the CIFAR and ImageNet ones)."""

    def _blocks(self) -> Stages:
        return [s for i in range(1, 5) for s in _numbered(f"layer{i}", getattr(self, f"layer{i}"))]


# ------------------------------------------------------------ CIFAR ResNets

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (CIFAR layout)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu = ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand, with a residual connection (CIFAR layout)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = ReLU()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu = ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The CIFAR blocks' shortcut: identity (empty) or a strided 1x1 conv + BatchNorm."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class CifarResNet(FourStageResNet):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, four stages.

    `width` is the channel count of the first stage (64 in the original; the
    shipped zoo uses 32). The forward pass is the chain returned by `chain()`.
    """

    stem_layer = "relu"
    head_taps = ("avgpool", "linear")
    input_size = 32

    def __init__(self, block: type, num_blocks: list[int], num_classes: int = 10,
                 width: int = 64) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = ReLU()
        self.layer1 = self._make_layer(block, widths[0], num_blocks[0], 1)
        self.layer2 = self._make_layer(block, widths[1], num_blocks[1], 2)
        self.layer3 = self._make_layer(block, widths[2], num_blocks[2], 2)
        self.layer4 = self._make_layer(block, widths[3], num_blocks[3], 2)
        self.avgpool = GlobalAvgPool()
        self.linear = nn.Linear(widths[3] * block.expansion, num_classes)

    def _make_layer(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _stem(self) -> Stages:
        return [("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu)]

    def _head(self) -> Stages:
        return [("avgpool", self.avgpool), ("linear", self.linear)]


def resnet18(num_classes: int = 10, width: int = 64) -> CifarResNet:
    """CIFAR ResNet-18."""
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


def resnet34(num_classes: int = 10, width: int = 64) -> CifarResNet:
    """CIFAR ResNet-34."""
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes, width)


def resnet50(num_classes: int = 10, width: int = 64) -> CifarResNet:
    """CIFAR ResNet-50."""
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)


# --------------------------------------------------------- ImageNet ResNets

class ImageNetBasicBlock(nn.Module):
    """torchvision's BasicBlock: conv1, bn1, conv2, bn2 and an optional downsample."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, mid_planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.relu1 = ReLU()
        self.conv2 = nn.Conv2d(mid_planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)
        self.relu = ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ImageNetBottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, "ResNet v1.5")."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, mid_planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.relu1 = ReLU()
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.relu2 = ReLU()
        self.conv3 = nn.Conv2d(mid_planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = _downsample(in_planes, planes * self.expansion, stride)
        self.relu = ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """torchvision's shortcut: None for the identity, else a strided 1x1 conv + BatchNorm."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class ImageNetResNet(FourStageResNet):
    """torchvision's ResNet for 224x224 inputs: 7x7 stem, max-pool, four stages.

    `width_per_group` 128 gives the wide ResNets (wide_resnet50_2 and 101_2).
    """

    stem_layer = "maxpool"
    head_taps = ("avgpool", "fc")
    input_size = 224

    def __init__(self, block: type, num_blocks: Sequence[int], num_classes: int = 1000,
                 width_per_group: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
            mid = planes * width_per_group // 64
            blocks = []
            for s in [1 if i == 1 else 2] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s, mid))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(in_planes, num_classes)

    def _stem(self) -> Stages:
        return [("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu),
                ("maxpool", self.maxpool)]

    def _head(self) -> Stages:
        return [("avgpool", self.avgpool), ("fc", self.fc)]


# (block, blocks per stage, width per group) of torchvision's ResNets
_IMAGENET_SPECS: dict[str, tuple[type, tuple[int, ...], int]] = {
    "imagenet_resnet18": (ImageNetBasicBlock, (2, 2, 2, 2), 64),
    "imagenet_resnet34": (ImageNetBasicBlock, (3, 4, 6, 3), 64),
    "imagenet_resnet50": (ImageNetBottleneck, (3, 4, 6, 3), 64),
    "imagenet_resnet101": (ImageNetBottleneck, (3, 4, 23, 3), 64),
    "imagenet_resnet152": (ImageNetBottleneck, (3, 8, 36, 3), 64),
    "imagenet_wide_resnet50_2": (ImageNetBottleneck, (3, 4, 6, 3), 128),
    "imagenet_wide_resnet101_2": (ImageNetBottleneck, (3, 4, 23, 3), 128),
    # not in torchvision: the robustness library's WRN-50-4 (madrylab's hub models)
    "imagenet_wide_resnet50_4": (ImageNetBottleneck, (3, 4, 6, 3), 256),
}


def _imagenet_builder(arch: str) -> Callable[..., ImageNetResNet]:
    """The builder (num_classes=1000) of one of torchvision's ResNets."""
    block, num_blocks, width_per_group = _IMAGENET_SPECS[arch]

    def make(num_classes: int = 1000) -> ImageNetResNet:
        return ImageNetResNet(block, num_blocks, num_classes, width_per_group)
    make.__doc__ = f"torchvision's {arch.removeprefix('imagenet_')}, with taps."
    return make


# ----------------------------------------------------------- wide ResNets

class _Group(nn.Module):
    """A container that only names its blocks (block1.layer.0, layer.0.block.0):
    the chain runs the blocks themselves."""

    def __init__(self, attr: str, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.add_module(attr, nn.Sequential(*blocks))


class WideBasicBlock(nn.Module):
    """Pre-activation wide block, TRADES layout: bn1, relu1, conv1, bn2, relu2, conv2."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.convShortcut = (nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
                             if in_planes != out_planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        # as in TRADES: a projection shortcut sees the activated input, the identity the raw one
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class WideResNet(ChainNet):
    """The TRADES / RobustBench WideResNet-depth-widen_factor for 32x32 inputs.

    The reference's unused `sub_block1` is not built (see `strip_unused`), and
    its average pool over the final 8x8 map is a global one here.
    """

    stem_layer = "conv1"
    head_taps = ("relu", "avgpool", "fc")
    input_size = 32

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 bias_last: bool = True) -> None:
        super().__init__()
        n = _blocks_per_group(depth)
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        for g, stride in enumerate((1, 2, 2)):
            self.add_module(f"block{g + 1}", _Group("layer", [
                WideBasicBlock(channels[g] if j == 0 else channels[g + 1], channels[g + 1],
                               stride if j == 0 else 1) for j in range(n)]))
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = ReLU()
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(channels[3], num_classes, bias=bias_last)

    def _stem(self) -> Stages:
        return [("conv1", self.conv1)]

    def _blocks(self) -> Stages:
        return [s for g in range(1, 4)
                for s in _numbered(f"block{g}.layer", getattr(self, f"block{g}").layer)]

    def _head(self) -> Stages:
        return [("bn1", self.bn1), ("relu", self.relu), ("avgpool", self.avgpool), ("fc", self.fc)]


def _blocks_per_group(depth: int) -> int:
    """Blocks in each of a wide ResNet's three groups: depth = 6 * blocks + 4."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a wide ResNet's depth is 6n + 4 (n >= 1), not {depth}")
    return (depth - 4) // 6


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": ReLU, "swish": Swish}


def _activation(name: str) -> nn.Module:
    """A fresh activation module by name (one per use, so each is its own tap)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class DMBlock(nn.Module):
    """DeepMind's pre-activation wide block: batchnorm_0, relu_0, conv_0, batchnorm_1,
    relu_1, conv_1 and an optional 1x1 shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, not {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = _activation(activation)
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = _activation(activation)
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
                         if in_planes != out_planes else None)
        # TensorFlow's "SAME" padding: all sides at stride 1, bottom and right only at stride 2
        self.same_pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(F.pad(pre, self.same_pad)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class DMWideResNet(ChainNet):
    """DeepMind's WideResNet (RobustBench's DMWideResNet) for 32x32 inputs.

    Unlike the reference it does not normalise (the Probe does), and it has no
    input padding (the reference's option, which no RobustBench model uses).
    """

    stem_layer = "init_conv"
    head_taps = ("relu", "avgpool", "logits")

    def __init__(self, num_classes: int = 10, depth: int = 28, width: int = 10,
                 activation: str = "relu") -> None:
        super().__init__()
        n = _blocks_per_group(depth)
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.input_size = 32
        self.init_conv = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*(_Group("block", [
            DMBlock(channels[g] if j == 0 else channels[g + 1], channels[g + 1],
                    stride if j == 0 else 1, activation) for j in range(n)])
            for g, stride in enumerate((1, 2, 2))))
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = _activation(activation)
        self.avgpool = GlobalAvgPool()
        self.logits = nn.Linear(channels[3], num_classes)

    def _stem(self) -> Stages:
        return [("init_conv", self.init_conv)]

    def _blocks(self) -> Stages:
        return [s for g, group in enumerate(self.layer)
                for s in _numbered(f"layer.{g}.block", group.block)]

    def _head(self) -> Stages:
        return [("batchnorm", self.batchnorm), ("relu", self.relu), ("avgpool", self.avgpool),
                ("logits", self.logits)]


# ------------------------------------------------------------- registry

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    **{name: _imagenet_builder(name) for name in _IMAGENET_SPECS},
    "wrn": WideResNet,
    "dm_wrn": DMWideResNet,
}

# the families whose taps, chains and fake ReLU are verified against their references
VERIFIED_FAMILIES: tuple[type[nn.Module], ...] = (CifarResNet, ImageNetResNet, WideResNet,
                                                  DMWideResNet)


def build(arch: str, num_classes: int | None = None, width: int | None = None,
          **options: object) -> nn.Module:
    """Instantiate a registered architecture by name, with its builder's defaults for
    what is not given (10 classes, or 1000 for imagenet_*; CIFAR width 64)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    builder = ARCHS[arch]
    if num_classes is not None:
        options["num_classes"] = num_classes
    if width is not None:
        options["width"] = width
    accepted = inspect.signature(builder).parameters
    extra = sorted(set(options) - set(accepted))
    if extra:
        raise ValueError(f"{arch} takes no option {', '.join(extra)}; it takes "
                         f"{', '.join(accepted)}")
    return builder(**options)


def strip_unused(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the keys no forward pass uses (the TRADES WideResNet's
    `sub_block1.*`), so that it loads strictly into the models here."""
    return {k: v for k, v in sd.items() if not k.startswith("sub_block1.")}


def _index_count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct indices fill the (\\d+) of `pattern` among the keys."""
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def _guess(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """(arch, kwargs) suggested by a few telltale keys; `identify` then checks all of them."""
    if "linear.weight" in sd and "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        counts = tuple(_index_count(sd, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
        arch = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
                (True, (3, 4, 6, 3)): "resnet50"}.get(("layer1.0.conv3.weight" in sd, counts))
        if arch is None:
            return None
        return arch, {"num_classes": int(sd["linear.weight"].shape[0]),
                      "width": int(sd["conv1.weight"].shape[0])}
    if "fc.weight" in sd and "layer1.0.conv1.weight" in sd:
        bottleneck = "layer1.0.conv3.weight" in sd
        counts = tuple(_index_count(sd, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
        width_per_group = int(sd["layer1.0.conv1.weight"].shape[0]) if bottleneck else 64
        block = ImageNetBottleneck if bottleneck else ImageNetBasicBlock
        for arch, spec in _IMAGENET_SPECS.items():
            if spec == (block, counts, width_per_group):
                return arch, {"num_classes": int(sd["fc.weight"].shape[0])}
        return None
    if "fc.weight" in sd and "block1.layer.0.conv1.weight" in sd:
        return "wrn", {"depth": 6 * _index_count(sd, r"block1\.layer\.(\d+)\.") + 4,
                       "widen_factor": int(sd["block1.layer.0.conv1.weight"].shape[0]) // 16,
                       "num_classes": int(sd["fc.weight"].shape[0]),
                       "bias_last": "fc.bias" in sd}
    if "logits.weight" in sd and "layer.0.block.0.conv_0.weight" in sd:
        return "dm_wrn", {"depth": 6 * _index_count(sd, r"layer\.0\.block\.(\d+)\.") + 4,
                          "width": int(sd["layer.0.block.0.conv_0.weight"].shape[0]) // 16,
                          "num_classes": int(sd["logits.weight"].shape[0])}
    return None


def identify(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """(arch, kwargs for `build`) of the architecture here whose parameter names and
    shapes are exactly those of `sd` (ignoring `sub_block1.*` and BatchNorm's
    num_batches_tracked, which loading tolerates), else None. A DeepMind WRN's
    activation is not in its weights: the kwargs leave the default, ReLU."""
    sd = strip_unused(sd)
    guess = _guess(sd)
    if guess is None:
        return None
    arch, kwargs = guess
    try:
        # on the meta device building even a 267M-parameter model allocates nothing
        with torch.device("meta"):
            own = build(arch, **kwargs).state_dict()
    except ValueError:
        return None

    def shapes(d: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(getattr(v, "shape", ())) for k, v in d.items()
                if not k.endswith("num_batches_tracked")}
    return guess if shapes(own) == shapes(sd) else None
