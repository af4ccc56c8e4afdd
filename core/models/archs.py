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
from collections import OrderedDict
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


# ------------------------------------------------- the stitching paper's layouts
# Balogh & Jelasity's code (szegedai/robust-stitching) names its CIFAR models as
# torchvision does (downsample, fc), gives them a CIFAR stem (3x3, stride 1, no
# max-pool) and feeds them [0, 1] pixels: nothing is normalised inside (LeNet aside).

class TorchvisionCifarResNet(ChainNet):
    """A CIFAR ResNet with torchvision's names: a 3x3 stem, stages of torchvision's
    blocks (base width doubling per stage), a global average pool and `fc`. Four stages
    of 64 make its ResNet-18 .. 152; three of 16w its ResNet-20 of width w."""

    stem_layer = "relu"
    head_taps = ("avgpool", "fc")
    input_size = 32

    def __init__(self, block: type, num_blocks: Sequence[int], num_classes: int = 10,
                 width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = ReLU()
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes, blocks = width * 2 ** i, []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s, planes))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.stages = len(num_blocks)
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(in_planes, num_classes)

    def _stem(self) -> Stages:
        return [("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu)]

    def _blocks(self) -> Stages:
        return [s for i in range(1, self.stages + 1)
                for s in _numbered(f"layer{i}", getattr(self, f"layer{i}"))]

    def _head(self) -> Stages:
        return [("avgpool", self.avgpool), ("fc", self.fc)]


# (block, blocks per stage) of the paper's CIFAR ResNets
_TORCHVISION_CIFAR_SPECS: dict[str, tuple[type, tuple[int, ...]]] = {
    "cifar_tv_resnet18": (ImageNetBasicBlock, (2, 2, 2, 2)),
    "cifar_tv_resnet34": (ImageNetBasicBlock, (3, 4, 6, 3)),
    "cifar_tv_resnet50": (ImageNetBottleneck, (3, 4, 6, 3)),
    "cifar_tv_resnet101": (ImageNetBottleneck, (3, 4, 23, 3)),
    "cifar_tv_resnet152": (ImageNetBottleneck, (3, 8, 36, 3)),
    "cifar_tv_resnet20": (ImageNetBasicBlock, (3, 3, 3)),
}


def _torchvision_cifar_builder(arch: str) -> Callable[..., TorchvisionCifarResNet]:
    block, num_blocks = _TORCHVISION_CIFAR_SPECS[arch]
    base = 16 if arch == "cifar_tv_resnet20" else 64

    def make(num_classes: int = 10, width: int = base,
             in_channels: int = 3) -> TorchvisionCifarResNet:
        return TorchvisionCifarResNet(block, num_blocks, num_classes, width, in_channels)
    make.__doc__ = (f"The robust-stitching paper's {arch.removeprefix('cifar_tv_')} "
                    f"(torchvision's names, a CIFAR stem; width {base} per w).")
    return make


# channels of each 3x3 conv, "M" a 2x2 max-pool: the VGG configurations
_VGG_CONFIGS = {
    "vgg11_cifar": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13_cifar": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_cifar": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                    512, 512, 512, "M"),
    "vgg19_cifar": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512,
                    "M", 512, 512, 512, 512, "M"),
}


class CifarVGG(ChainNet):
    """The stitching paper's VGG for 32x32 inputs: `features` of 3x3 conv (with bias),
    BatchNorm and ReLU, block b's i-th named conv{b}_{i} / bn{b}_{i} / relu{b}_{i}, each
    block closed by maxpool{b}; then `classifier` fc1 (512 -> 256), fc2 (-> 128), fc3,
    with ReLU and dropout between. Taps: each block's pooled output, the classifier's
    ReLUs (the second is the representation) and the logits."""

    stem_layer = "features.maxpool1"
    head_taps = ("classifier.relu1", "classifier.relu2", "classifier.fc3")
    representation_layer = "classifier.relu2"
    input_size = 32

    def __init__(self, config: Sequence[int | str], num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        features: dict[str, nn.Module] = {}
        block, i, channels = 1, 1, in_channels
        for v in config:
            if v == "M":
                features[f"maxpool{block}"] = nn.MaxPool2d(2, 2)
                block, i = block + 1, 1
                continue
            features[f"conv{block}_{i}"] = nn.Conv2d(channels, int(v), 3, 1, 1)
            features[f"bn{block}_{i}"] = nn.BatchNorm2d(int(v))
            features[f"relu{block}_{i}"] = ReLU()
            channels, i = int(v), i + 1
        self.features = nn.Sequential(OrderedDict(features))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(channels, 256)), ("relu1", ReLU()), ("drop1", nn.Dropout(0.5)),
            ("fc2", nn.Linear(256, 128)), ("relu2", ReLU()), ("drop2", nn.Dropout(0.5)),
            ("fc3", nn.Linear(128, num_classes))]))

    def _stem(self) -> Stages:
        upto = list(self.features._modules).index("maxpool1") + 1
        return [(f"features.{n}", m) for n, m in list(self.features.named_children())[:upto]]

    def _blocks(self) -> Stages:
        """The conv blocks after the first, each up to its max-pool (a stage a module;
        the block outputs are the pools)."""
        upto = list(self.features._modules).index("maxpool1") + 1
        return [(f"features.{n}", m) for n, m in list(self.features.named_children())[upto:]]

    def _head(self) -> Stages:
        return [("flatten", self.flatten)] + [(f"classifier.{n}", m)
                                              for n, m in self.classifier.named_children()]

    def block_layers(self) -> list[str]:
        return [n for n, _ in self._stem() + self._blocks() if ".maxpool" in n] + list(
            self.head_taps)


def _vgg_builder(arch: str) -> Callable[..., CifarVGG]:
    def make(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
        return CifarVGG(_VGG_CONFIGS[arch], num_classes, in_channels)
    make.__doc__ = f"The stitching paper's {arch.removesuffix('_cifar').upper()} for CIFAR."
    return make


class DMPreActBlock(nn.Module):
    """DeepMind's pre-activation block: batchnorm_0, relu_0, conv_2d_1 (3x3, "SAME"
    padding by hand), batchnorm_1, relu_1, conv_2d_2 and, where the shape changes, a 3x3
    `shortcut` conv of the padded raw input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, not {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = _activation(activation)
        self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = _activation(activation)
        self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
                         if stride != 1 or in_planes != out_planes else None)
        self.same_pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        shortcut = x if self.shortcut is None else self.shortcut(F.pad(x, self.same_pad))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(self.conv_2d_1(
            F.pad(out, self.same_pad)))))
        return out + shortcut


class DMPreActResNet(ChainNet):
    """DeepMind's pre-activation ResNet-18/34 (RobustBench's DMPreActResNet; the
    stitching paper's PreActResNet-18) for 32x32 inputs. Unlike the reference it does
    not normalise (the Probe does, with DeepMind's CIFAR-10 statistics)."""

    stem_layer = "conv_2d"
    head_taps = ("relu", "avgpool", "logits")
    input_size = 32

    def __init__(self, num_classes: int = 10, depth: int = 18, activation: str = "swish",
                 in_channels: int = 3) -> None:
        super().__init__()
        num_blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}.get(depth)
        if num_blocks is None:
            raise ValueError(f"a DeepMind PreActResNet is 18 or 34 deep, not {depth}")
        self.conv_2d = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        in_planes = 64
        for g, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            self.add_module(f"layer_{g}", nn.Sequential(*(
                DMPreActBlock(in_planes if j == 0 else planes, planes,
                              (1 if g == 0 else 2) if j == 0 else 1, activation)
                for j in range(n))))
            in_planes = planes
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = _activation(activation)
        self.avgpool = GlobalAvgPool()
        self.logits = nn.Linear(512, num_classes)

    def _stem(self) -> Stages:
        return [("conv_2d", self.conv_2d)]

    def _blocks(self) -> Stages:
        return [s for g in range(4) for s in _numbered(f"layer_{g}", getattr(self, f"layer_{g}"))]

    def _head(self) -> Stages:
        return [("batchnorm", self.batchnorm), ("relu", self.relu), ("avgpool", self.avgpool),
                ("logits", self.logits)]


class LeNet(ChainNet):
    """The stitching paper's LeNet-5 for 32x32 inputs: conv1 (5x5, 6), max-pool, conv2
    (5x5, 16), max-pool, fc1 (120), fc2 (84), fc3, ReLU between. It normalises inside,
    by the mean and standard deviation its file stores (buffers `mu` and `sigma`)."""

    stem_layer = "pool1"
    head_taps = ("relu3", "relu4", "fc3")
    representation_layer = "relu4"
    input_size = 32

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("sigma", torch.ones(1, in_channels, 1, 1))
        self.normalise = _Normalise(self)
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.relu1, self.pool1 = ReLU(), nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2, self.pool2 = ReLU(), nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1, self.relu3 = nn.Linear(400, 120), ReLU()
        self.fc2, self.relu4 = nn.Linear(120, 84), ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def _stem(self) -> Stages:
        return [("normalise", self.normalise), ("conv1", self.conv1), ("relu1", self.relu1),
                ("pool1", self.pool1)]

    def _blocks(self) -> Stages:
        return [("conv2", self.conv2), ("relu2", self.relu2), ("pool2", self.pool2)]

    def _head(self) -> Stages:
        return [("flatten", self.flatten), ("fc1", self.fc1), ("relu3", self.relu3),
                ("fc2", self.fc2), ("relu4", self.relu4), ("fc3", self.fc3)]

    def block_layers(self) -> list[str]:
        return ["pool1", "pool2", *self.head_taps]


class _Normalise(nn.Module):
    """(x - mu) / sigma by the buffers of the model that owns it (LeNet's)."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        self._owner = [owner]          # a list: not a submodule (no cycle in the tree)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        return (x - owner.mu) / owner.sigma


# ------------------------------------------------------------- registry

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    **{name: _imagenet_builder(name) for name in _IMAGENET_SPECS},
    "wrn": WideResNet,
    "dm_wrn": DMWideResNet,
    **{name: _torchvision_cifar_builder(name) for name in _TORCHVISION_CIFAR_SPECS},
    **{name: _vgg_builder(name) for name in _VGG_CONFIGS},
    "dm_preact_resnet": DMPreActResNet,
    "lenet": LeNet,
}

# the families whose taps, chains and fake ReLU are verified against their references
VERIFIED_FAMILIES: tuple[type[nn.Module], ...] = (CifarResNet, ImageNetResNet, WideResNet,
                                                  DMWideResNet, TorchvisionCifarResNet, CifarVGG,
                                                  DMPreActResNet, LeNet)


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


Guess = Callable[[Mapping[str, torch.Tensor]], "tuple[str, dict] | None"]


def _in_channels(sd: Mapping[str, torch.Tensor], key: str) -> dict:
    """{"in_channels": n} where a stem conv takes other than three channels."""
    n = int(sd[key].shape[1])
    return {} if n == 3 else {"in_channels": n}


def _stage_counts(sd: Mapping[str, torch.Tensor], pattern: str, stages: int) -> tuple[int, ...]:
    return tuple(_index_count(sd, pattern.format(i)) for i in range(1, stages + 1))


def _cifar_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """The shipped zoo's and the robustness library's CIFAR ResNets (shortcut, linear)."""
    if not {"linear.weight", "conv1.weight", "layer1.0.conv1.weight"} <= set(sd):
        return None
    counts = _stage_counts(sd, r"layer{}\.(\d+)\.", 4)
    arch = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
            (True, (3, 4, 6, 3)): "resnet50"}.get(("layer1.0.conv3.weight" in sd, counts))
    return None if arch is None else (arch, {"num_classes": int(sd["linear.weight"].shape[0]),
                                             "width": int(sd["conv1.weight"].shape[0])})


def _imagenet_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """torchvision's ResNets (a 7x7 stem)."""
    if not {"fc.weight", "conv1.weight", "layer1.0.conv1.weight"} <= set(sd) or \
            sd["conv1.weight"].shape[-1] != 7:
        return None
    bottleneck = "layer1.0.conv3.weight" in sd
    counts = _stage_counts(sd, r"layer{}\.(\d+)\.", 4)
    width_per_group = int(sd["layer1.0.conv1.weight"].shape[0]) if bottleneck else 64
    block = ImageNetBottleneck if bottleneck else ImageNetBasicBlock
    return next(((arch, {"num_classes": int(sd["fc.weight"].shape[0])})
                 for arch, spec in _IMAGENET_SPECS.items()
                 if spec == (block, counts, width_per_group)), None)


def _torchvision_cifar_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """The stitching paper's CIFAR ResNets (torchvision's names, a 3x3 stem)."""
    if not {"fc.weight", "conv1.weight", "layer1.0.conv1.weight"} <= set(sd) or \
            sd["conv1.weight"].shape[-1] != 3:
        return None
    stages = 4 if "layer4.0.conv1.weight" in sd else 3
    counts = _stage_counts(sd, r"layer{}\.(\d+)\.", stages)
    block = ImageNetBottleneck if "layer1.0.conv3.weight" in sd else ImageNetBasicBlock
    arch = next((a for a, spec in _TORCHVISION_CIFAR_SPECS.items()
                 if spec == (block, counts)), None)
    return None if arch is None else (arch, {"num_classes": int(sd["fc.weight"].shape[0]),
                                             "width": int(sd["conv1.weight"].shape[0]),
                                             **_in_channels(sd, "conv1.weight")})


def _vgg(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """The stitching paper's CIFAR VGGs (features.conv{b}_{i}, classifier.fc1..3)."""
    if "classifier.fc3.weight" not in sd or "features.conv1_1.weight" not in sd:
        return None
    convs = sum(1 for k in sd if re.fullmatch(r"features\.conv\d+_\d+\.weight", k))
    arch = next((a for a, c in _VGG_CONFIGS.items() if sum(v != "M" for v in c) == convs), None)
    return None if arch is None else (arch, {
        "num_classes": int(sd["classifier.fc3.weight"].shape[0]),
        **_in_channels(sd, "features.conv1_1.weight")})


def _wide_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """TRADES' / RobustBench's WideResNets (block1.layer.0)."""
    if "fc.weight" not in sd or "block1.layer.0.conv1.weight" not in sd:
        return None
    return "wrn", {"depth": 6 * _index_count(sd, r"block1\.layer\.(\d+)\.") + 4,
                   "widen_factor": int(sd["block1.layer.0.conv1.weight"].shape[0]) // 16,
                   "num_classes": int(sd["fc.weight"].shape[0]), "bias_last": "fc.bias" in sd}


def _dm_wide_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """DeepMind's WideResNets (layer.0.block.0)."""
    if "logits.weight" not in sd or "layer.0.block.0.conv_0.weight" not in sd:
        return None
    return "dm_wrn", {"depth": 6 * _index_count(sd, r"layer\.0\.block\.(\d+)\.") + 4,
                      "width": int(sd["layer.0.block.0.conv_0.weight"].shape[0]) // 16,
                      "num_classes": int(sd["logits.weight"].shape[0])}


def _dm_preact_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """DeepMind's pre-activation ResNets (layer_0.0, conv_2d_1)."""
    if "logits.weight" not in sd or "layer_0.0.conv_2d_1.weight" not in sd:
        return None
    counts = tuple(_index_count(sd, rf"layer_{g}\.(\d+)\.") for g in range(4))
    depth = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}.get(counts)
    return None if depth is None else ("dm_preact_resnet", {
        "num_classes": int(sd["logits.weight"].shape[0]), "depth": depth,
        **_in_channels(sd, "conv_2d.weight")})


def _lenet(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """The stitching paper's LeNet (conv1, conv2, fc1..3 and its mu, sigma)."""
    if not {"conv1.weight", "conv2.weight", "fc3.weight", "mu"} <= set(sd):
        return None
    return "lenet", {"num_classes": int(sd["fc3.weight"].shape[0]),
                     **_in_channels(sd, "conv1.weight")}


# The architectures a state dict may be, each a guess from a few telltale keys; identify
# tries them in turn and keeps the first whose every name and shape it reproduces. A new
# family is a guess added here (and its builder in ARCHS).
CANDIDATES: list[Guess] = [_cifar_resnet, _imagenet_resnet, _torchvision_cifar_resnet, _vgg,
                           _wide_resnet, _dm_wide_resnet, _dm_preact_resnet, _lenet]


def identify(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict] | None:
    """(arch, kwargs for `build`) of the first candidate architecture whose parameter and
    buffer names and shapes are exactly those of `sd` (ignoring `sub_block1.*` and
    BatchNorm's num_batches_tracked, which loading tolerates), else None. An activation
    is not in the weights (DeepMind's networks): the kwargs leave the default."""
    sd = strip_unused(sd)

    def shapes(d: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(getattr(v, "shape", ())) for k, v in d.items()
                if not k.endswith("num_batches_tracked")}
    want = shapes(sd)
    for guess in CANDIDATES:
        found = guess(sd)
        if found is None:
            continue
        try:
            # on the meta device building even a 267M-parameter model allocates nothing
            with torch.device("meta"):
                own = build(found[0], **found[1]).state_dict()
        except ValueError:
            continue
        if shapes(own) == want:
            return found
    return None
