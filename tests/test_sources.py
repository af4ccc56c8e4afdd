"""zoo.load's model sources, each fed a file in its real layout (random weights, the
real key names and nesting) placed where its library looks, and offline without it:
the robustness library's ImageNet checkpoints (dill-pickled), madrylab: (the Hugging
Face hub's cache), timm: (the same cache), robustbench: (its model folder, CIFAR-10
and ImageNet) and torchvision:. Each must give the reference's logits."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from core import archs, zoo
from core.errors import CheckpointError, UnknownModelError
from offline import offline_env

ROOT = Path(__file__).resolve().parent.parent
X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A model with random weights and BatchNorm statistics that are not identity."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def normalised(model, mean, std):
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return lambda x: model((x - m) / s)


def robustness_checkpoint(model: torch.nn.Module, mean, std) -> dict:
    """The MadryLab robustness library's layout: AttackerModel's state dict under
    'model' (module.model.*, a duplicate under module.attacker.model.*, the
    normaliser's new_mean / new_std), plus optimizer, schedule and epoch."""
    sd = {}
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        sd[prefix + "new_mean"] = torch.tensor(mean).view(3, 1, 1)
        sd[prefix + "new_std"] = torch.tensor(std).view(3, 1, 1)
    for k, v in model.state_dict().items():
        sd["module.model." + k] = v
        sd["module.attacker.model." + k] = v
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(opt, 30)
    return {"model": sd, "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
            "epoch": 90}


def place_in_hub_cache(cache: Path, repo: str, filename: str, write) -> Path:
    """A file where huggingface_hub looks for `repo`'s main revision."""
    d = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (d / "refs").mkdir(parents=True, exist_ok=True)
    (d / "refs" / "main").write_text(commit)
    path = d / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


def load_offline(spec: str, cache: Path, out: Path, download: bool = True) -> dict:
    """zoo.load(spec, download=download) in a fresh process whose hub cache is `cache`,
    without the network (and, where downloads are allowed, in the hub's own offline
    mode): its logits on X (saved to `out`) and card, or the error it raised."""
    torch.save(X, out.with_suffix(".x"))
    code = (
        "import json, sys, torch\n"
        "from core import zoo\n"
        "from core.errors import RobustLensError\n"
        "try:\n"
        f"    p = zoo.load({spec!r}, device='cpu', download={download})\n"
        "except RobustLensError as e:\n"
        "    print(json.dumps({'error': str(e), 'type': type(e).__name__})); sys.exit(0)\n"
        f"x = torch.load({str(out.with_suffix('.x'))!r})\n"
        f"torch.save(p(x), {str(out)!r})\n"
        "print(json.dumps({'card': p.card, 'layers': p.layers, 'size': p.input_size}))\n")
    env = offline_env({**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                       "HF_HOME": str(cache.parent / "hf-home"), "PYTHONPATH": str(ROOT)})
    if not download:
        del env["HF_HUB_OFFLINE"]
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------ robustness library

def test_robustness_imagenet_checkpoint_pickled_with_dill(tmp_path):
    import dill
    ref = randomised(torchvision.models.resnet18())
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)     # not ImageNet's: must come from the file
    path = tmp_path / "imagenet_l2_3_0.pt"
    torch.save(robustness_checkpoint(ref, mean, std), path, pickle_module=dill)
    probe = zoo.load(path, device="cpu")
    c = probe.card
    assert c["arch"] == "imagenet_resnet18" and c["format"] == "robustness"
    assert c["input_size"] == 224 and c["dataset"] == "imagenet" and c["taps_verified"]
    assert c["mean"] == list(mean) and c["normalisation"] == "stored in the file"
    assert c["check"]["n"] == 20 and 0 <= c["check"]["top1"] <= 1
    assert probe.classes[243] == "bull mastiff"
    assert isinstance(probe.model, archs.ImageNetResNet)
    with torch.no_grad():
        assert torch.allclose(probe(X), normalised(ref, mean, std)(X), atol=1e-4)


def test_robustness_checkpoint_of_an_unknown_architecture_names_it(tmp_path):
    ref = torchvision.models.squeezenet1_0()
    path = tmp_path / "squeeze.ckpt"
    torch.save(robustness_checkpoint(ref, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD), path)
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        zoo.load(path, device="cpu")
    probe = zoo.load(path, device="cpu", arch="squeezenet1_0", check=False)
    assert not probe.card["taps_verified"] and "not verified" in probe.card["notice"]
    with torch.no_grad():
        assert torch.allclose(probe(X), normalised(ref.eval(), zoo.IMAGENET_MEAN,
                                                   zoo.IMAGENET_STD)(X), atol=1e-5)


# ------------------------------------------------------------ Hugging Face hub

def test_madrylab_from_the_hub_cache_and_offline_without_it(tmp_path):
    ref = randomised(torchvision.models.resnet18(), seed=3)
    cache = tmp_path / "hub"
    place_in_hub_cache(cache, zoo.MADRYLAB_REPO, "resnet18_l2_eps3.ckpt", lambda p: torch.save(
        robustness_checkpoint(ref, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD), p))
    got = load_offline("madrylab:resnet18_l2_eps3", cache, tmp_path / "logits.pt")
    c = got["card"]
    assert c["threat_model"] == "L2" and c["eps"] == 3.0 and c["arch"] == "imagenet_resnet18"
    assert c["source"] == f"huggingface:{zoo.MADRYLAB_REPO}" and got["size"] == 224
    with torch.no_grad():
        want = normalised(ref, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD)(X)
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), want, atol=1e-4)

    place_in_hub_cache(cache, zoo.MADRYLAB_REPO, "resnet18_linf_eps4.0.ckpt", lambda p: torch.save(
        robustness_checkpoint(ref, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD), p))
    named = load_offline("madrylab:resnet18_linf_eps4.0.ckpt", cache, tmp_path / "l.pt")["card"]
    assert named["threat_model"] == "Linf" and named["eps"] == 4.0

    # the repository's other architectures by its own names, with their taps unverified
    mobile = randomised(torchvision.models.mobilenet_v2(), seed=5)
    place_in_hub_cache(cache, zoo.MADRYLAB_REPO, "mobilenet_l2_eps3.ckpt", lambda p: torch.save(
        robustness_checkpoint(mobile, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD), p))
    got = load_offline("madrylab:mobilenet_l2_eps3", cache, tmp_path / "mobile.pt")
    assert got["card"]["arch"] == "mobilenet_v2" and not got["card"]["taps_verified"]
    with torch.no_grad():
        want = normalised(mobile, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD)(X)
    assert torch.allclose(torch.load(tmp_path / "mobile.pt"), want, atol=1e-4)

    # a shared server's visitor without downloads: the cached file, and nothing else
    kept = load_offline("madrylab:resnet18_l2_eps3", cache, tmp_path / "kept.pt", download=False)
    assert kept["card"]["eps"] == 3.0
    assert torch.equal(torch.load(tmp_path / "kept.pt"), torch.load(tmp_path / "logits.pt"))
    refused = load_offline("madrylab:resnet50_linf_eps4.0", cache, tmp_path / "n.pt", download=False)
    assert "not on this machine, and downloading it is off" in refused["error"]

    missing = load_offline("madrylab:resnet50_linf_eps4.0", cache, tmp_path / "none.pt")
    assert missing["type"] == "CheckpointError"
    assert "hf download madrylab/robust-imagenet-models resnet50_linf_eps4.0.ckpt" in missing["error"]
    assert "\n" not in missing["error"] and "Traceback" not in missing["error"]


def test_timm_from_the_hub_cache_and_offline_without_it(tmp_path):
    import timm
    from safetensors.torch import save_file
    ref = randomised(timm.create_model("resnet18.a1_in1k", pretrained=False), seed=4)
    cache = tmp_path / "hub"
    place_in_hub_cache(cache, "timm/resnet18.a1_in1k", "model.safetensors", lambda p: save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()}, str(p)))
    got = load_offline("timm:resnet18.a1_in1k", cache, tmp_path / "logits.pt")
    c = got["card"]
    assert c["source"] == "timm" and c["interpolation"] == "bicubic" and c["taps_verified"]
    assert c["arch"] == "imagenet_resnet18" and got["size"] == 224
    # its folder images as timm evaluates it: shorter side to floor(224 / 0.95), bicubic
    assert c["evaluation_transform"] == {"size": 224, "resize": 235, "interpolation": "bicubic",
                                         "squash": False, "border": None}
    with torch.no_grad():
        want = normalised(ref, c["mean"], c["std"])(X)
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), want, atol=1e-4)

    kept = load_offline("timm:resnet18.a1_in1k", cache, tmp_path / "kept.pt", download=False)
    assert kept["card"]["source"] == "timm"
    assert torch.equal(torch.load(tmp_path / "kept.pt"), torch.load(tmp_path / "logits.pt"))
    refused = load_offline("timm:resnet50.a1_in1k", cache, tmp_path / "n.pt", download=False)
    assert "not on this machine, and downloading it is off" in refused["error"]

    missing = load_offline("timm:resnet50.a1_in1k", cache, tmp_path / "none.pt")
    assert missing["type"] == "CheckpointError" and "timm.create_model" in missing["error"]
    unknown = load_offline("timm:not_a_timm_model", cache, tmp_path / "none.pt")
    assert unknown["type"] == "UnknownModelError"


# ------------------------------------------------------------ RobustBench

def _robustbench():
    zoo._alias_autoattack()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    return model_dicts, BenchmarkDataset, ThreatModel


@pytest.mark.parametrize("name, arch, preprocessing, size", [
    ("Salman2020Do_R18", "imagenet_resnet18", "Res256Crop224", 224),
    ("Wong2020Fast", "imagenet_resnet50", "Crop288", 288)])
def test_robustbench_imagenet_resnet(tmp_path, name, arch, preprocessing, size):
    model_dicts, Dataset, Threat = _robustbench()
    ref = model_dicts[Dataset.imagenet][Threat.Linf][name]["model"]()
    randomised(ref.model, seed=5)
    target = tmp_path / "imagenet" / "Linf" / f"{name}.pt"
    target.parent.mkdir(parents=True)
    torch.save(ref.model.state_dict(), target)      # the file holds the bare torchvision net
    probe = zoo.load(f"robustbench:imagenet/Linf/{name}", model_dir=tmp_path, device="cpu",
                     check=False)
    if name == "Salman2020Do_R18":  # only in ImageNet's list: the name alone finds it
        assert zoo.load(f"robustbench:{name}", model_dir=tmp_path, device="cpu",
                        check=False).card["dataset"] == "imagenet"
    c = probe.card
    assert c["arch"] == arch and c["preprocessing"] == preprocessing
    assert probe.input_size == size and probe.preprocessing.size == size
    assert c["mean"] == [0.485, 0.456, 0.406] and c["taps_verified"]
    with torch.no_grad():
        assert torch.allclose(probe(X), ref.eval()(X), atol=1e-4)


def photos_of_odd_sizes() -> list:
    """Made-up photos (random pixels), wider and taller, larger and smaller than 288."""
    from PIL import Image
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in ((333, 291), (260, 410), (201, 180))]


def test_each_sources_evaluation_transform_gives_its_pixels():
    """A folder's images reach a model as its own library prepares them: RobustBench's
    preprocessings by name, timm's data config, torchvision's weights' transforms,
    pixel for pixel."""
    import timm
    import torchvision
    zoo._alias_autoattack()
    from robustbench.data import PREPROCESSINGS
    from core import images
    for name, theirs in PREPROCESSINGS.items():
        if name is None:           # ToTensor alone: images already at the model's size
            continue
        ours = zoo._ROBUSTBENCH_TRANSFORMS[name]
        for im in photos_of_odd_sizes():
            assert torch.equal(images.to_tensor(ours.apply(im)), theirs(im)), name
    model = timm.create_model("inception_v3.tf_adv_in1k", pretrained=False, num_classes=10)
    inception = timm.data.resolve_model_data_config(model)
    # timm's three crop modes, at its crop fractions, as the loader reads a data config
    for cfg in (inception, {**inception, "crop_mode": "squash"},
                {**inception, "crop_mode": "border", "crop_pct": 1.0},
                {**inception, "crop_mode": "border", "input_size": (3, 224, 224)}):
        timm_eval = timm.data.create_transform(**cfg, is_training=False)
        ours = zoo.timm_preprocessing(cfg)
        for im in photos_of_odd_sizes():
            want = timm_eval(im) * torch.tensor(cfg["std"])[:, None, None] + \
                torch.tensor(cfg["mean"])[:, None, None]
            assert torch.allclose(images.to_tensor(ours.apply(im)), want, atol=1e-5), cfg
        assert images.Preprocessing.of(json.loads(json.dumps(dataclasses.asdict(ours))),
                                       0) == ours       # as a card stores it
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    tv = weights.transforms()
    tv_ours = images.Preprocessing(224, tv.resize_size[0], tv.interpolation.value)
    for im in photos_of_odd_sizes():
        want = tv(im) * torch.tensor(tv.std)[:, None, None] + torch.tensor(tv.mean)[:, None, None]
        assert torch.allclose(images.to_tensor(tv_ours.apply(im)), want, atol=1e-5)


def test_robustbench_cifar_wideresnet_with_unused_sub_block(tmp_path):
    model_dicts, Dataset, Threat = _robustbench()
    ref = randomised(model_dicts[Dataset.cifar_10][Threat.Linf]["Carmon2019Unlabeled"]["model"](),
                     seed=6)
    target = tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, target)
    probe = zoo.load("robustbench:Carmon2019Unlabeled", model_dir=tmp_path, device="cpu",
                     check=False)
    assert probe.card["arch"] == "wrn" and probe.card["taps_verified"]
    assert probe.representation_layer == "avgpool"
    assert not any(t.startswith("sub_block1") for t in probe.layers)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(probe(x), ref(x), atol=1e-4)
        probe.features(x)       # every default tap runs


def test_robustbench_offline_without_the_file(tmp_path, offline):
    _robustbench()
    with pytest.raises(CheckpointError) as e:
        zoo.load("robustbench:Carmon2019Unlabeled", model_dir=tmp_path, device="cpu")
    msg = str(e.value)
    assert "load_model('Carmon2019Unlabeled'" in msg and "offline?" in msg and "Error" not in msg
    with pytest.raises(UnknownModelError):
        zoo.load("robustbench:NoSuchModel2099", model_dir=tmp_path, device="cpu")


# ------------------------------------------------------------ torchvision

def test_torchvision_offline_without_weights(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="torchvision.models.get_model"):
        zoo.load("torchvision:resnet18", device="cpu")


def test_torchvision_resnet50_is_rebuilt_with_correct_taps(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    target = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    ref = randomised(torchvision.models.resnet50(), seed=7)
    torch.save(ref.state_dict(), target)
    probe = zoo.load("torchvision:resnet50", device="cpu", check=False)
    assert probe.card["arch"] == "imagenet_resnet50" and probe.card["taps_verified"]
    assert len(probe.identity()["fingerprint"]) == 16       # what every job's key holds
    feats = probe.features(X, ["bn1", "relu"], grad=True)
    assert not torch.equal(feats["bn1"], feats["relu"])     # no in-place aliasing


def test_a_trusted_pickled_imagenet_model_gets_its_size_and_normalisation(tmp_path):
    ref = randomised(torchvision.models.resnet18(), seed=8)
    path = tmp_path / "whole.pt"
    torch.save(ref, path)
    with pytest.raises(CheckpointError, match="trust"):
        zoo.load(path, device="cpu")
    probe = zoo.load(path, device="cpu", trust=True, check=False)
    c = probe.card
    assert probe.input_size == 224 and c["mean"] == [0.485, 0.456, 0.406]
    assert c["arch"] == "imagenet_resnet18" and c["taps_verified"] and "assumed" in c["normalisation"]
    with torch.no_grad():
        assert torch.allclose(probe(X), normalised(ref, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD)(X),
                              atol=1e-4)


def test_a_deepmind_wideresnet_file_says_its_activation_was_assumed(tmp_path):
    model_dicts, _, _ = _robustbench()
    from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet
    path = tmp_path / "dm.pt"
    torch.save(DMWideResNet(depth=10, width=1).state_dict(), path)
    probe = zoo.load(path, device="cpu", check=False)
    assert probe.card["arch"] == "dm_wrn" and "activation assumed ReLU" in probe.card["notice"]
    (tmp_path / "dm.json").write_text(json.dumps({"activation": "swish"}))
    probe = zoo.load(path, device="cpu", check=False)
    assert probe.card["activation"] == "swish" and "notice" not in probe.card
