"""zoo.load from every checkpoint format, and the bad checkpoints it must refuse."""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import tiny_probe
from core import archs, data, zoo
from core.errors import CheckpointError, UnknownLayerError, UnknownModelError

X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def same_logits(a, b, atol=1e-5):
    with torch.no_grad():
        return torch.allclose(a(X), b(X), atol=atol)


def test_shipped_roundtrip_fp16(tmp_path, probe):
    zoo.export(probe, "tiny-model", directory=tmp_path)
    assert zoo.names(tmp_path) == ["tiny-model"]
    card = zoo.card("tiny-model", tmp_path)
    assert card["arch"] == "resnet18" and card["width"] == 8
    assert card["weights"]["dtype"] == "float16" and len(card["weights"]["sha256"]) == 64
    loaded = zoo.load("tiny-model", directory=tmp_path, device="cpu")
    assert loaded.name == "tiny-model" and loaded.fingerprint() == card["weights"]["sha256"][:16]
    assert same_logits(loaded, probe, atol=5e-2)  # fp16 weights
    assert not any(p.requires_grad for p in loaded.parameters())


def test_unknown_name(tmp_path):
    with pytest.raises(UnknownModelError, match="neither a shipped model"):
        zoo.load("no-such-model", directory=tmp_path)
    with pytest.raises(UnknownModelError):
        zoo.card("no-such-model", tmp_path)


def test_plain_state_dict_and_wrapped(tmp_path, probe):
    sd = probe.model.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 4},
               tmp_path / "wrapped.pth")
    for f in ("plain.pt", "wrapped.pth"):
        loaded = zoo.load(tmp_path / f, device="cpu")
        assert loaded.card["arch"] == "resnet18" and loaded.card["width"] == 8
        assert same_logits(loaded, probe)
    assert zoo.load(tmp_path / "wrapped.pth").card["format"] == "{'state_dict': state_dict}"


def test_safetensors_with_and_without_metadata(tmp_path, probe):
    sd = {k: v.contiguous() for k, v in probe.model.state_dict().items()}
    save_file(sd, str(tmp_path / "meta.safetensors"),
              metadata={"arch": "resnet18", "width": "8", "num_classes": "10"})
    save_file(sd, str(tmp_path / "bare.safetensors"))
    for f in ("meta.safetensors", "bare.safetensors"):
        assert same_logits(zoo.load(tmp_path / f, device="cpu"), probe)


def _robustness_checkpoint(model: torch.nn.Module, mean, std) -> dict:
    """Exactly the layout MadryLab's robustness library saves: an AttackerModel
    (normalizer + model + attacker.{normalize, model}) inside DataParallel."""
    sd = {}
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    sd["module.normalizer.new_mean"], sd["module.normalizer.new_std"] = m, s
    for k, v in model.state_dict().items():
        sd["module.model." + k] = v
        sd["module.attacker.model." + k] = v
    sd["module.attacker.normalize.new_mean"], sd["module.attacker.normalize.new_std"] = m, s
    return {"model": sd, "optimizer": {"state": {}, "param_groups": []},
            "schedule": None, "epoch": 150}


@pytest.mark.parametrize("arch,width", [("resnet18", 8), ("resnet50", 4)])
def test_robustness_library_checkpoint(tmp_path, arch, width):
    ref = tiny_probe(width=width, arch=arch)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    torch.save(_robustness_checkpoint(ref.model, mean, std), tmp_path / "checkpoint.pt.best")
    loaded = zoo.load(tmp_path / "checkpoint.pt.best", device="cpu")
    assert loaded.card["format"] == "robustness"
    assert loaded.card["arch"] == arch and loaded.card["width"] == width
    # the normaliser stored in the checkpoint is used, not CIFAR's default
    assert torch.allclose(loaded.mean.flatten(), torch.tensor(mean))
    with torch.no_grad():
        expected = ref.model((X - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        assert torch.allclose(loaded(X), expected, atol=1e-5)


def test_torchvision_from_hub_cache(tmp_path, monkeypatch):
    """The real download path, fed by a file placed where torchvision looks."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    target = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), target)
    probe = zoo.load("torchvision:resnet18", device="cpu")
    assert probe.input_size == 224 and "layer4.1" in probe.layers
    # a folder reaches it as the weights' own transforms prepare an image
    given = weights.transforms()
    assert probe.preprocessing.resize == given.resize_size[0]
    assert probe.preprocessing.interpolation == given.interpolation.value
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(zoo.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(zoo.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(probe(x), ref.eval()((x - mean) / std), atol=1e-5)
    with pytest.raises(UnknownModelError):
        zoo.load("torchvision:not_a_model")


def test_robustbench_from_model_dir(tmp_path):
    """RobustBench's own loader, fed a file at {model_dir}/{dataset}/{threat}/{name}.pt."""
    zoo._alias_autoattack()
    import robustbench as rb
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    entry = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]
    torch.manual_seed(0)
    ref = entry["model"]()
    target = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": ref.state_dict()}, target)
    probe = zoo.load("robustbench:Standard", model_dir=tmp_path, device="cpu")
    assert probe.name == "robustbench:Standard" and rb is not None
    with torch.no_grad():
        assert torch.allclose(probe(X), ref.eval()(X), atol=1e-4)


# ------------------------------------------------------------------ bad files

def test_missing_and_empty_and_corrupt(tmp_path):
    with pytest.raises(UnknownModelError):
        zoo.load(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        zoo.load(tmp_path / "empty.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    (tmp_path / "notes.pt").write_text("my notes on robust models\n" * 20)
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(4096))
    for name in ("noise.pt", "notes.pt", "noise.safetensors"):
        with pytest.raises(CheckpointError, match="not a readable") as e:
            zoo.load(tmp_path / name)
        assert "Error" not in str(e.value)   # a sentence, not the parser's internals


def test_truncated_checkpoint(tmp_path, probe):
    torch.save(probe.model.state_dict(), tmp_path / "full.pt")
    blob = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        zoo.load(tmp_path / "cut.pt")


class Payload:
    """A pickled object whose unpickling would run code (it writes a file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_pickle_with_code_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"state_dict": Payload(str(marker))}, f)
    with pytest.raises(CheckpointError, match="execute code"):
        zoo.load(tmp_path / "evil.pt")
    assert not marker.exists(), "refusing must not run the payload"
    # with explicit trust the file is unpickled (the payload runs) but it is
    # still no state dict, and that is said clearly
    with pytest.raises(CheckpointError, match="no state dict|not a state dict"):
        zoo.load(tmp_path / "evil.pt", trust=True)
    assert marker.exists()


class ShellPayload:
    """A pickled object whose unpickling would run a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_calling_the_shell_is_refused_as_code(tmp_path):
    # torch words this refusal "unsupported GLOBAL posix.system whose module posix is
    # blocked", in lower case: it must still read as code, not as an unreadable file
    marker = tmp_path / "pwned.txt"
    torch.save({"state_dict": ShellPayload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"would execute code.*(posix|os)\.system"):
        zoo.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_card_beside_other_weights_does_not_lend_its_identity(tmp_path, probe):
    zoo.export(probe, "shipped", directory=tmp_path)
    other = tiny_probe(seed=7)
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()},
              str(tmp_path / "mine.safetensors"))
    (tmp_path / "mine.json").write_bytes((tmp_path / "shipped.json").read_bytes())
    mine = zoo.load(tmp_path / "mine.safetensors", device="cpu")
    same = zoo.load(tmp_path / "shipped.safetensors", device="cpu")   # the card's own file
    shipped = zoo.load("shipped", directory=tmp_path, device="cpu")
    assert same.fingerprint() == shipped.fingerprint()
    assert mine.fingerprint() != shipped.fingerprint() and "weights" not in mine.card
    assert same_logits(mine, other) and not same_logits(mine, shipped, atol=1e-2)


def test_pickled_plain_object_refused(tmp_path):
    with open(tmp_path / "obj.pt", "wb") as f:
        pickle.dump({"weights": Payload("/nonexistent/x")}, f)
    with pytest.raises(CheckpointError):
        zoo.load(tmp_path / "obj.pt")


def test_state_dict_that_does_not_fit_names_keys(tmp_path, probe):
    sd = dict(probe.model.state_dict())
    sd.pop("layer2.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as e:
        zoo.load(tmp_path / "broken.pt", arch="resnet18", width=8)
    msg = str(e.value)
    assert "missing keys: layer2.0.conv1.weight" in msg and "unexpected keys: extra.weight" in msg
    # wrong width: shape mismatches are listed
    torch.save(probe.model.state_dict(), tmp_path / "w8.pt")
    with pytest.raises(CheckpointError, match="shape mismatches: conv1.weight"):
        zoo.load(tmp_path / "w8.pt", arch="resnet18", width=16)
    # keys of no known architecture
    torch.save({"fc.weight": torch.zeros(10, 4)}, tmp_path / "alien.pt")
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        zoo.load(tmp_path / "alien.pt")


def test_not_a_zip_but_zip_suffix(tmp_path):
    with zipfile.ZipFile(tmp_path / "weird.pt", "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    with pytest.raises(CheckpointError):
        zoo.load(tmp_path / "weird.pt")


# --------------------------------------------------------------------- probe

def test_taps_and_unknown_layer(probe):
    assert probe.layers[0] == "relu" and probe.layers[-2:] == ["avgpool", "linear"]
    assert len([n for n in probe.layers if n.startswith("layer")]) == 8
    feats = probe.features(X, ["layer1.0", "layer3.1"])
    assert list(feats) == ["layer1.0", "layer3.1"] and feats["layer3.1"].shape == (3, 32, 8, 8)
    with pytest.raises(UnknownLayerError, match="did you mean layer3.1"):
        probe.features(X, ["layer3.l"])
    all_taps = probe.all_layers
    assert "layer1.0.conv1" in all_taps and "layer1.0.relu1" in all_taps
    assert all_taps.index("layer1.0.conv1") < all_taps.index("layer1.0.bn1") < all_taps.index("linear")


def test_taps_are_clones_and_hooks_removed(probe):
    f1 = probe.features(X, ["layer1.0.bn2", "layer1.0"])
    # the block's relu runs after bn2 + shortcut: a shared buffer would make them equal
    assert (f1["layer1.0.bn2"] < 0).any() and (f1["layer1.0"] >= 0).all()
    assert all(not m._forward_hooks for m in probe.modules())


def test_taps_act_only_on_their_own_thread(probe):
    """The app's sessions share a model: one session's tap must neither stop nor be
    fed by another session's forward pass."""
    import threading
    with torch.no_grad():
        logits = probe(X)
    errors, outputs, done = [], [], threading.Event()

    def tapping():
        with probe.tap("layer1.0.conv1") as run:
            while not done.is_set():
                outputs.append(run(X[:1]).shape[0])

    def plain():
        try:
            for _ in range(50):
                with torch.no_grad():
                    assert torch.allclose(probe(X), logits, atol=1e-6)
        except BaseException as e:  # noqa: BLE001 - the test reports what leaked in
            errors.append(repr(e))
        finally:
            done.set()
    threads = [threading.Thread(target=tapping), threading.Thread(target=plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and outputs and set(outputs) == {1}


def test_representation_and_logits(probe):
    rep = probe.representation(X)
    assert rep.shape == (3, 64)
    with torch.no_grad():
        assert torch.allclose(probe.model.linear(rep), probe(X), atol=1e-5)


def test_card_json_of_export_is_valid(tmp_path, probe):
    zoo.export(probe, "m", directory=tmp_path, card_extra={"label": "tiny"})
    c = json.loads((tmp_path / "m.json").read_text())
    assert c["label"] == "tiny" and c["parameters"] == sum(p.numel() for p in probe.parameters())


def test_archs_registry():
    with pytest.raises(ValueError, match="unknown architecture"):
        archs.build("vgg99")
    assert data.MEAN and archs.identify({"x": torch.zeros(1)}) is None
