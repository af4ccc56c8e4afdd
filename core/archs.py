"""Architectures with named taps: the CIFAR ResNet family.

Parameter names match `robustness.cifar_models` (MadryLab), so checkpoints of
that library map onto these modules by stripping prefixes only. Unlike that
code, every activation is a module of its own (so a forward hook can tap it)
and the network is a *chain* of named stages, so that a stitched model can run
"the front of A up to a stage" and "the rest of B after it" without hooks.
"""
from __future__ import annotations

from typing import Callable, Iterator

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
    """A ReLU with a switch for the "fake ReLU" of Engstrom et al. (2019)."""

    def __init__(self) -> None:
        super().__init__()
        self.fake = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeReLUFn.apply(x) if self.fake else F.relu(x)


class GlobalAvgPool(nn.Module):
    """Average over space and flatten: the penultimate representation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class BasicBlock(nn.Module):
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
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, four stages.

    `width` is the channel count of the first stage (64 in the original; the
    shipped zoo uses 32). The forward pass is the chain returned by `chain()`.
    """

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
        self.representation_layer = "avgpool"
        self.stem_layer = "relu"

    def _make_layer(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def chain(self) -> list[tuple[str, nn.Module]]:
        """The forward pass as an ordered list of (module path, module)."""
        stages: list[tuple[str, nn.Module]] = [
            ("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu)]
        for i in range(1, 5):
            layer = getattr(self, f"layer{i}")
            stages += [(f"layer{i}.{j}", blk) for j, blk in enumerate(layer)]
        stages += [("avgpool", self.avgpool), ("linear", self.linear)]
        return stages

    def block_layers(self) -> list[str]:
        """Default taps: stem, every residual block, representation, logits."""
        names = [n for n, _ in self.chain()]
        return [self.stem_layer] + [n for n in names if n.startswith("layer")] + [
            "avgpool", "linear"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.chain():
            x = module(x)
        return x


def resnet18(num_classes: int = 10, width: int = 64) -> CifarResNet:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


def resnet34(num_classes: int = 10, width: int = 64) -> CifarResNet:
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes, width)


def resnet50(num_classes: int = 10, width: int = 64) -> CifarResNet:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)


ARCHS: dict[str, Callable[..., CifarResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}


def build(arch: str, num_classes: int = 10, width: int = 64) -> CifarResNet:
    """Instantiate a registered CIFAR architecture by name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[arch](num_classes=num_classes, width=width)


def relu_modules(model: nn.Module) -> Iterator[tuple[str, ReLU]]:
    for name, module in model.named_modules():
        if isinstance(module, ReLU):
            yield name, module
