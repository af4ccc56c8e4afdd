"""core.archs: the tap-correct networks load their references' weights strictly and
compute the same logits, and their taps, chains and fake ReLU behave."""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from core import archs, zoo
from core.probe import Probe

zoo._alias_autoattack()   # robustbench imports autoattack: it must be in place first
from robustbench.model_zoo.architectures import dm_wide_resnet as rb_dm  # noqa: E402
from robustbench.model_zoo.architectures import wide_resnet as rb_wrn  # noqa: E402

NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so that no BatchNorm is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def images(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal within `rel` of the largest magnitude in b."""
    err = float((a - b).abs().max())
    scale = float(b.abs().max())
    assert err <= rel * scale, f"max error {err:.3g} vs scale {scale:.3g}"


# ------------------------------------------------- state dicts and logits

def _dm_ref(**kw) -> nn.Module:
    return rb_dm.DMWideResNet(**kw)


def _paper_resnet(depth: int) -> nn.Module:
    """The stitching paper's CIFAR ResNet as torchvision builds it: its names, with a 3x3
    stride-1 stem and no max-pool (at 32 px its 4x4 average pool is a global one)."""
    model = getattr(torchvision.models, f"resnet{depth}")(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


class _PaperResNet20(nn.Module):
    """The paper's ResNet-20 of width w from torchvision's BasicBlock: 16w-channel stem,
    three stages of three blocks (16w, 32w, 64w), global average pool, fc."""

    def __init__(self, w: int, num_classes: int = 10) -> None:
        super().__init__()
        block = torchvision.models.resnet.BasicBlock
        self.conv1, self.bn1 = nn.Conv2d(3, 16 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(16 * w)
        layers, planes_in = [], 16 * w
        for i, planes in enumerate((16 * w, 32 * w, 64 * w)):
            stride = 1 if i == 0 else 2
            down = None if stride == 1 else nn.Sequential(
                nn.Conv2d(planes_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            layers.append(nn.Sequential(block(planes_in, planes, stride, down),
                                        block(planes, planes), block(planes, planes)))
            planes_in = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64 * w, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


class _PaperVGG11(nn.Module):
    """The paper's VGG-11 as its code names it: features.conv{b}_{i}, bn{b}_{i}, then
    classifier.fc1 (512 -> 256), fc2 (-> 128), fc3."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        feats, c, b, i = {}, 3, 1, 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v == "M":
                feats[f"maxpool{b}"], b, i = nn.MaxPool2d(2), b + 1, 1
                continue
            feats[f"conv{b}_{i}"], feats[f"bn{b}_{i}"] = nn.Conv2d(c, v, 3, 1, 1), nn.BatchNorm2d(v)
            feats[f"relu{b}_{i}"], c, i = nn.ReLU(), v, i + 1
        self.features = nn.Sequential(OrderedDict(feats))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(512, 256)), ("r1", nn.ReLU()), ("d1", nn.Dropout()),
            ("fc2", nn.Linear(256, 128)), ("r2", nn.ReLU()), ("d2", nn.Dropout()),
            ("fc3", nn.Linear(128, num_classes))]))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# id: (reference factory, input size, expected identify() answer, extra build options)
REFERENCES = {
    "paper_resnet18": (lambda: _paper_resnet(18), 32,
                       ("cifar_tv_resnet18", {"num_classes": 10, "width": 64}), {}),
    "paper_resnet50": (lambda: _paper_resnet(50), 32,
                       ("cifar_tv_resnet50", {"num_classes": 10, "width": 64}), {}),
    "paper_resnet20_w3": (lambda: _PaperResNet20(3), 32,
                          ("cifar_tv_resnet20", {"num_classes": 10, "width": 48}), {}),
    "paper_vgg11": (lambda: _PaperVGG11(), 32, ("vgg11_cifar", {"num_classes": 10}), {}),
    "rb_dm_preact_resnet18_swish": (lambda: rb_dm.DMPreActResNet(activation_fn=rb_dm.Swish), 32,
                                    ("dm_preact_resnet", {"num_classes": 10, "depth": 18}), {}),
    "rb_dm_preact_resnet34_relu": (lambda: rb_dm.DMPreActResNet(num_classes=100, depth=34), 32,
                                   ("dm_preact_resnet", {"num_classes": 100, "depth": 34}),
                                   {"activation": "relu"}),
    "tv_resnet18": (lambda: torchvision.models.resnet18(weights=None), 64,
                    ("imagenet_resnet18", {"num_classes": 1000}), {}),
    "tv_resnet50": (lambda: torchvision.models.resnet50(weights=None), 64,
                    ("imagenet_resnet50", {"num_classes": 1000}), {}),
    "tv_wide_resnet50_2": (lambda: torchvision.models.wide_resnet50_2(weights=None), 64,
                           ("imagenet_wide_resnet50_2", {"num_classes": 1000}), {}),
    "wide_resnet50_4": (lambda: torchvision.models.resnet.ResNet(
        torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], width_per_group=256), 64,
        ("imagenet_wide_resnet50_4", {"num_classes": 1000}), {}),
    "timm_resnet50": (lambda: timm.create_model("resnet50", pretrained=False), 64,
                      ("imagenet_resnet50", {"num_classes": 1000}), {}),
    "rb_wrn_28_10": (lambda: rb_wrn.WideResNet(depth=28, widen_factor=10, sub_block1=True), 32,
                     ("wrn", {"depth": 28, "widen_factor": 10, "num_classes": 10,
                              "bias_last": True}), {}),
    "rb_wrn_34_10": (lambda: rb_wrn.WideResNet(depth=34, widen_factor=10, num_classes=100,
                                               bias_last=False), 32,
                     ("wrn", {"depth": 34, "widen_factor": 10, "num_classes": 100,
                              "bias_last": False}), {}),
    "dm_wrn_70_16_swish": (lambda: _dm_ref(depth=70, width=16, activation_fn=rb_dm.Swish), 32,
                           ("dm_wrn", {"depth": 70, "width": 16, "num_classes": 10}),
                           {"activation": "swish"}),
    "dm_wrn_28_10_relu": (lambda: _dm_ref(depth=28, width=10, num_classes=100), 32,
                          ("dm_wrn", {"depth": 28, "width": 10, "num_classes": 100}), {}),
}


@pytest.fixture(scope="module", params=list(REFERENCES))
def reference(request):
    """(reference model, its id), built once per module (the largest has 267M parameters)."""
    torch.manual_seed(0)
    return randomise_bn(REFERENCES[request.param][0]()), request.param


def test_identify_build_load_and_logits(reference):
    ref, case = reference
    _, size, expected, options = REFERENCES[case]
    sd = archs.strip_unused(ref.state_dict())
    assert archs.identify(ref.state_dict()) == expected == archs.identify(sd)
    arch, kwargs = expected
    ours = archs.build(arch, **kwargs, **options)
    ours.load_state_dict(sd, strict=True)
    assert isinstance(ours, archs.VERIFIED_FAMILIES) and ours.input_size in (32, 224)
    # the DeepMind references normalise inside; ours leave that to the Probe
    mean, std = ((ref.mean.flatten().tolist(), ref.std.flatten().tolist())
                 if case.startswith(("dm_", "rb_dm_")) else NO_NORM)
    probe = Probe(ours, mean, std, input_size=size)
    x = images(size)
    with torch.no_grad():
        assert_close(probe(x), ref(x))


def _meta_sd(factory) -> dict:
    with torch.device("meta"):
        return factory().state_dict()


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152", "wide_resnet101_2"])
def test_identify_other_torchvision_resnets(name):
    sd = _meta_sd(lambda: getattr(torchvision.models, name)(weights=None, num_classes=7))
    assert archs.identify(sd) == (f"imagenet_{name}", {"num_classes": 7})


@pytest.mark.parametrize("arch,width", [("resnet18", 8), ("resnet34", 16), ("resnet50", 4)])
def test_identify_cifar_resnets(arch, width):
    sd = archs.build(arch, 100, width).state_dict()
    assert archs.identify(sd) == (arch, {"num_classes": 100, "width": width})


def test_identify_refuses_what_does_not_fit():
    assert archs.identify({"x": torch.zeros(1)}) is None
    sd = _meta_sd(lambda: torchvision.models.resnet18(weights=None))
    no_stats = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert archs.identify(no_stats) == ("imagenet_resnet18", {"num_classes": 1000})
    assert archs.identify({k: v for k, v in sd.items() if k != "layer2.0.bn1.bias"}) is None
    assert archs.identify({**sd, "layer1.0.extra.weight": torch.zeros(1)}) is None
    # a CIFAR-style 3x3 stem on torchvision's ResNet is the stitching paper's layout
    assert archs.identify({**sd, "conv1.weight": torch.zeros(64, 3, 3, 3)}) == (
        "cifar_tv_resnet18", {"num_classes": 1000, "width": 64})
    assert archs.identify({**sd, "conv1.weight": torch.zeros(64, 3, 5, 5)}) is None
    assert archs.identify(_meta_sd(lambda: torchvision.models.vgg11(weights=None))) is None
    wrn = _meta_sd(lambda: rb_wrn.WideResNet(depth=16, widen_factor=2))
    assert archs.identify({**wrn, "block1.layer.0.conv1.weight": torch.zeros(30, 16, 3, 3)}) is None


def test_strip_unused_drops_only_sub_block1():
    sd = rb_wrn.WideResNet(depth=10, widen_factor=1, sub_block1=True).state_dict()
    kept = archs.strip_unused(sd)
    assert kept and all(not k.startswith("sub_block1.") for k in kept)
    assert len(kept) < len(sd) and set(kept) == {k for k in sd if not k.startswith("sub_block1.")}


def test_build_registry_and_errors():
    with pytest.raises(ValueError, match="unknown architecture.*imagenet_resnet50"):
        archs.build("vgg99")
    with pytest.raises(ValueError, match="takes no option width"):
        archs.build("wrn", 10, 4)
    with pytest.raises(ValueError, match="unknown activation"):
        archs.build("dm_wrn", activation="gelu")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        archs.build("wrn", depth=20)
    assert archs.build("resnet18", 10, 8).linear.in_features == 64  # CIFAR: positional width
    for name in archs.ARCHS:
        with torch.device("meta"):
            model = archs.build(name)
        assert isinstance(model, archs.VERIFIED_FAMILIES), name
        assert model.input_size == (224 if name.startswith("imagenet_") else 32)
        stages = [n for n, _ in model.chain()]
        modules = dict(model.named_modules())
        assert model.representation_layer in stages and model.stem_layer in stages
        assert set(stages) <= set(modules) and set(model.block_layers()) <= set(stages)
        assert model.chain()[-1][1].out_features == (1000 if name.startswith("imagenet_") else 10)


# ------------------------------------------------------ taps and chains

# id: (arch, build options, test input size); small instances: taps are structural
# (depth and block layout; a WRN-34-10 is a WRN-34-2 with wider convolutions)
TAPPED = {
    "cifar_resnet18": ("resnet18", {"width": 8}, 32),
    "cifar_resnet50": ("resnet50", {"width": 4}, 32),
    "imagenet_resnet18": ("imagenet_resnet18", {}, 64),
    "imagenet_resnet50": ("imagenet_resnet50", {}, 64),
    "imagenet_wide_resnet50_2": ("imagenet_wide_resnet50_2", {}, 64),
    "wrn_16_2": ("wrn", {"depth": 16, "widen_factor": 2}, 32),
    "wrn_28_10": ("wrn", {"depth": 28, "widen_factor": 10, "bias_last": False}, 32),
    "wrn_34_2": ("wrn", {"depth": 34, "widen_factor": 2}, 32),
    "dm_wrn_70_2_swish": ("dm_wrn", {"depth": 70, "width": 2, "activation": "swish"}, 32),
    "dm_wrn_16_2_relu": ("dm_wrn", {"depth": 16, "width": 2}, 32),
    "dm_wrn_16_2_swish": ("dm_wrn", {"depth": 16, "width": 2, "activation": "swish"}, 32),
    "cifar_tv_resnet20": ("cifar_tv_resnet20", {"width": 8}, 32),
    "cifar_tv_resnet50": ("cifar_tv_resnet50", {"width": 8}, 32),
    "vgg13_cifar": ("vgg13_cifar", {}, 32),
    "dm_preact_resnet18": ("dm_preact_resnet", {}, 32),
    "lenet": ("lenet", {}, 32),
}


@pytest.fixture(scope="module", params=list(TAPPED))
def tapped(request) -> Probe:
    arch, options, size = TAPPED[request.param]
    torch.manual_seed(0)
    model = randomise_bn(archs.build(arch, **options))
    return Probe(model, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), name=request.param, input_size=size)


def test_each_tap_alone_equals_tap_among_all(tapped):
    x = images(tapped.input_size)
    layers = tapped.layers
    assert len(set(layers)) == len(layers)
    every = tapped.features(x)
    for t in layers:
        assert torch.equal(tapped.features(x, [t])[t], every[t]), t
    with torch.enable_grad():
        every = {k: v.detach() for k, v in tapped.features(x, grad=True).items()}
        for t in layers:
            assert torch.equal(tapped.features(x, [t], grad=True)[t].detach(), every[t]), t
    for a, b in zip(layers, layers[1:]):
        assert every[a].shape != every[b].shape or not torch.allclose(every[a], every[b]), (a, b)


def test_representation_and_logits_taps(tapped):
    x = images(tapped.input_size)
    head = tapped.model.chain()[-1][1]
    assert tapped.representation_layer == tapped.model.representation_layer in tapped.layers
    assert tapped.representation(x).shape == (2, head.in_features)
    with torch.no_grad():
        assert torch.equal(tapped.features(x)[tapped.layers[-1]], tapped(x))


def test_chain_is_the_forward_pass(tapped):
    x = images(tapped.input_size)
    stages = tapped.chain_layers()
    # every stage runs, once, in chain order
    assert [n for n in tapped.call_order() if n in stages] == stages
    with torch.no_grad():
        logits = tapped(x)
        for s in stages[:-1]:
            assert torch.allclose(tapped.forward_from(s, tapped.forward_to(x, s)), logits,
                                  rtol=1e-5, atol=1e-6), s


def test_activations_are_distinct_modules_run_once(tapped):
    calls: dict[str, int] = {}
    acts = {n: m for n, m in tapped.model.named_modules()
            if isinstance(m, (archs.ReLU, archs.Swish))}
    assert acts and not any(isinstance(m, nn.ReLU) for m in tapped.model.modules())
    handles = [m.register_forward_hook(lambda *_a, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in acts.items()]
    try:
        with torch.no_grad():
            tapped(images(tapped.input_size))
    finally:
        for h in handles:
            h.remove()
    assert calls == {n: 1 for n in acts}
    assert len({id(m) for m in acts.values()}) == len(acts)


def test_fake_relu_targets_the_relu_feeding_the_representation(tapped):
    relus = [n for n, m in tapped.model.named_modules() if isinstance(m, archs.ReLU)]
    if not relus:  # the swish network has no ReLU to fake
        assert tapped.model.relu.__class__ is archs.Swish
        return
    last = relus[-1]
    x = images(tapped.input_size)
    # the representation is that ReLU's output, or its spatial mean: nothing in between
    rep = tapped.representation_layer
    out = tapped.features(x, [last, rep] if last != rep else [rep])
    assert torch.equal(out[last] if out[last].ndim == 2 else out[last].mean(dim=(2, 3)), out[rep])
    target = dict(tapped.model.named_modules())[last]
    with tapped.fake_relu():
        assert target.fake
    assert not target.fake


def test_fake_relu_acts_only_on_its_own_thread():
    relu = archs.ReLU()
    x = torch.tensor([-1.0, 2.0])

    def gradient() -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        relu(leaf).sum().backward()
        return leaf.grad
    other: list[torch.Tensor] = []
    relu.fake = True  # this thread inverts; another thread's attack needs the true gradient
    worker = threading.Thread(target=lambda: other.append(gradient()))
    worker.start()
    worker.join()
    assert torch.equal(gradient(), torch.tensor([1.0, 1.0]))
    assert torch.equal(other[0], torch.tensor([0.0, 1.0]))
    assert not copy.deepcopy(relu).fake_threads   # a later thread may reuse this id
    relu.fake = False
    assert torch.equal(gradient(), torch.tensor([0.0, 1.0]))


# ----------------------------------------------- why torchvision is rebuilt

def test_torchvision_inplace_relu_aliases_taps_ours_does_not():
    torch.manual_seed(0)
    ref = randomise_bn(torchvision.models.resnet18(weights=None))
    ours = archs.build("imagenet_resnet18")
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = images(64)
    with torch.enable_grad():
        theirs = Probe(ref, *NO_NORM, input_size=64).features(x, ["bn1", "relu"], grad=True)
        mine = Probe(ours.eval(), *NO_NORM, input_size=64).features(x, ["bn1", "relu"], grad=True)
    # torchvision's in-place ReLU rewrites the BatchNorm output the bn1 tap holds
    assert torch.equal(theirs["bn1"], theirs["relu"])
    assert (mine["bn1"] < 0).any() and not torch.equal(mine["bn1"], mine["relu"])
    assert torch.equal(mine["relu"], theirs["relu"])


# ------------------------------------------------------ analyses on every architecture

def test_inversion_cka_and_stitching_run_on_the_default_layers(tapped):
    """What the pages do with a model: invert its representation, CKA of its default
    taps against themselves, a stitch (identity-initialised 1x1 conv) at every stage
    boundary, which then computes the model itself."""
    from core import cka, inversion, stitching
    x = images(tapped.input_size, n=8)
    res = inversion.invert(tapped, x[:1], steps=2)
    assert res.images.shape == x[:1].shape and torch.isfinite(res.loss).all()
    matrix = cka.cka_matrix(tapped, tapped, x, batch_size=4).matrix
    n = len(tapped.layers)
    assert matrix.shape == (n, n)
    assert torch.allclose(torch.as_tensor(matrix).diagonal().float(), torch.ones(n), atol=1e-3)
    points = stitching.stitch_points(tapped)
    assert points == [s for s in tapped.layers if s in tapped.chain_layers()][:-1]
    with torch.no_grad():
        for layer in points:
            stitched = stitching.StitchedModel(tapped, tapped, layer).identity_init()
            assert torch.allclose(stitched(x), tapped(x), rtol=1e-4, atol=1e-4), layer


def test_a_one_channel_lenet_sees_an_images_grey_level_normalised_by_its_file(tmp_path):
    """The paper's MNIST LeNet: one input channel, its own mean and deviation (buffers mu
    and sigma) in the file, applied inside; RobustLens' images are RGB, and a one-channel
    model sees their grey level."""
    torch.manual_seed(3)
    ref = archs.build("lenet", in_channels=1)
    ref.mu.fill_(0.1307)
    ref.sigma.fill_(0.3081)
    sd = ref.state_dict()
    assert archs.identify(sd) == ("lenet", {"num_classes": 10, "in_channels": 1})
    torch.save(sd, tmp_path / "lenet.pt")
    probe = zoo.load(tmp_path / "lenet.pt", device="cpu", check=False)
    x = images(32)
    grey = x.mean(1, keepdim=True)
    with torch.no_grad():
        want = ref.fc3(torch.relu(ref.fc2(torch.relu(ref.fc1(torch.flatten(
            torch.max_pool2d(torch.relu(ref.conv2(torch.max_pool2d(torch.relu(ref.conv1(
                (grey - 0.1307) / 0.3081)), 2))), 2), 1))))))
        assert_close(probe(x), want)
    assert "grey level" in probe.card["channels"] and "inside the model" in probe.card["normalisation"]


def test_a_paper_layout_file_loads_with_no_normalisation_and_stitches(tmp_path):
    """A checkpoint of the stitching paper's layout (a plain state dict, torchvision's
    names, [0, 1] inputs) loads from a file, says so on its card, and stitches."""
    from core import stitching
    from core.data import ImageTensorDataset
    torch.manual_seed(4)
    ref = randomise_bn(_paper_resnet(18))
    torch.save(ref.state_dict(), tmp_path / "front.pt")
    front = zoo.load(tmp_path / "front.pt", device="cpu", check=False)
    assert front.card["arch"] == "cifar_tv_resnet18" and "[0, 1] inputs" in front.card["normalisation"]
    x = images(32, 4)
    with torch.no_grad():
        assert_close(front(x), ref(x))
    end = Probe(randomise_bn(archs.build("cifar_tv_resnet20", width=4)), *NO_NORM, name="end")
    g = torch.Generator().manual_seed(0)
    data = ImageTensorDataset(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g),
                              torch.randint(0, 10, (16,), generator=g))
    stitched, _ = stitching.fit(front, end, "layer2.1", data, method="direct", batch_size=8,
                                end_layer="layer2.2")
    with torch.no_grad():
        assert stitched(x).shape == (4, 10)
