"""The command line, end to end on the tiny world: it shares the app's results store."""
from __future__ import annotations

import json

from core import cli, zoo
from core.__main__ import main
from core.results import default_store


def run(*argv: str) -> int:
    return main(list(argv))


def test_eval_writes_measured_numbers_into_cards(world, tmp_path, capsys, monkeypatch):
    import shutil
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(world["zoo"], zoo_dir)
    monkeypatch.setattr(zoo, "PRETRAINED", zoo_dir)
    assert run("eval", "resnet18-l2-1.0", "--write", "--device", "cpu") == 0
    card = zoo.card("resnet18-l2-1.0", zoo_dir)
    m = card["measured"]
    assert m["n"] == 80 and 0 <= m["clean"] <= 1
    assert "PGD-20 L2 eps 1 step 0.25" in m["pgd"] and m["weights_sha256"] == card["weights"]["sha256"]


def test_the_unforeseen_attacks_on_the_command_line(world, tmp_path, capsys, monkeypatch):
    """eval --unforeseen adds to a card's numbers; cka and stitch take the attacks."""
    import shutil
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(world["zoo"], zoo_dir)
    monkeypatch.setattr(zoo, "PRETRAINED", zoo_dir)
    assert run("eval", "resnet18-linf-8", "--write", "--device", "cpu", "-n", "16") == 0
    assert run("eval", "resnet18-linf-8", "--unforeseen", "-n", "16", "--write",
               "--device", "cpu") == 0
    m = zoo.card("resnet18-linf-8", zoo_dir)["measured"]
    assert m["n"] == 16 and "pgd" in m  # the earlier numbers stay
    assert m["unforeseen"]["n"] == 16 and all(0 <= m["unforeseen"][k] <= m["clean"]
                                               for k in ("snow", "gabor", "jpeg"))
    capsys.readouterr()
    assert run("cka", "--a", "resnet18-linf-8", "--adv-a", "gabor", "-n", "16",
               "--device", "cpu") == 0
    assert len(json.loads(capsys.readouterr().out)["matrix"]) == 11
    assert run("stitch", "--front", "resnet18-linf-8", "--end", "resnet18-standard-s0",
               "--layers", "layer2.0", "--method", "direct", "--robust-attack", "jpeg",
               "--device", "cpu") == 0
    printed = json.loads(capsys.readouterr().out)
    assert "JPEG" in json.dumps(printed)
    assert 0 <= printed["pairs"][0]["cells"]["direct/layer2.0"]["robust_accuracy"] <= 1


def test_cka_stitch_invert_share_the_store(world, tmp_path, capsys):
    out = tmp_path / "cka.json"
    assert run("cka", "--a", "resnet18-linf-8", "--b", "resnet18-standard-s0", "-n", "80",
               "--out", str(out), "--device", "cpu") == 0
    res = json.loads(out.read_text())
    assert len(res["matrix"]) == 11 and res["n"] == 80
    capsys.readouterr()
    assert run("stitch", "--front", "resnet18-linf-8", "--end", "resnet18-standard-s0",
               "--layers", "layer2.0", "--method", "direct", "--device", "cpu") == 0
    printed = json.loads(capsys.readouterr().out)
    assert 0 <= printed["pairs"][0]["cells"]["direct/layer2.0"]["clean_accuracy"] <= 1
    assert run("invert", "--model", "resnet18-l2-1.0", "--model", "resnet18-standard-s0",
               "--image", "foolbox-03", "--steps", "5", "--out", str(tmp_path / "png"),
               "--device", "cpu") == 0
    assert list((tmp_path / "png").glob("*.png"))
    kinds = {e["kind"] for e in default_store().entries()}
    assert {"cka", "stitch_cell", "accuracy", "inversion"} <= kinds
    # a second run reads the store instead of computing
    assert run("cka", "--a", "resnet18-linf-8", "--b", "resnet18-standard-s0", "-n", "80",
               "--device", "cpu") == 0
    assert "from the store" in capsys.readouterr().err


def test_cka_of_a_pair_in_either_order_is_one_key_as_in_the_app(world, capsys):
    """The CLI asks for CKA(B, A) under the key of CKA(A, B) and transposes it, as the
    app does: one computation, one stored result."""
    import numpy as np
    from core import cka
    a, b = "resnet18-standard-s0", "resnet18-linf-8"      # not in the canonical order
    assert run("cka", "--a", a, "--b", b, "-n", "80", "--device", "cpu") == 0
    ab = json.loads(capsys.readouterr().out)
    assert run("cka", "--a", b, "--b", a, "-n", "80", "--device", "cpu") == 0
    printed = capsys.readouterr()
    ba = json.loads(printed.out)
    assert "from the store" in printed.err
    (entry,) = default_store().entries("cka")
    job, transposed = cka.cka_request(zoo.loader("cpu"), a, b, "blocks", n=80)
    assert transposed and entry["key"] == job.key
    assert ab["layers_a"] == ba["layers_b"] and ab["layers_b"] == ba["layers_a"]
    assert np.array_equal(np.array(ab["matrix"]).T, np.array(ba["matrix"]))


def test_errors_are_messages_with_exit_code_2(world, capsys):
    assert run("cka", "--a", "no-such-model") == 2
    assert "error:" in capsys.readouterr().err
    assert run("invert", "--model", "resnet18-l2-1.0", "--image", "nowhere.png") == 2
    assert run("stitch", "--front", "resnet18-linf-8") == 2


def test_data_command_reports_where_data_is(world, capsys):
    assert run("data") == 0
    found = json.loads(capsys.readouterr().out)
    assert found["test"]["images"] == 80 and found["train"]["images"] == 120
    assert cli.COMMANDS.keys() >= {"train", "export", "eval", "data", "cka", "stitch",
                                   "invert", "precompute"}


def test_shipped_assets_drop_frames_made_of_data_set_pixels():
    from core.cli import _model_made_only
    frames = [[0, "x0"], [15, "x15"], [30, "x30"]]
    add = _model_made_only({"frames": frames, "settings": {"task": "add", "seed": None}})
    mix = _model_made_only({"frames": frames, "settings": {"task": "interpolate", "seed": "mix"}})
    noise = _model_made_only({"frames": frames, "settings": {"task": "invert", "seed": "noise"}})
    assert [f[0] for f in add["frames"]] == [15, 30] == [f[0] for f in mix["frames"]]
    assert noise["frames"] == frames


def test_no_shipped_asset_holds_a_step_zero_frame_of_an_image():
    import json
    from core.results import ASSETS
    for f in ASSETS.glob("*.json"):
        d = json.loads(f.read_text())
        if isinstance(d, dict) and d.get("frames") and (d.get("settings") or {}).get("seed") != "noise":
            assert all(fr[0] != 0 for fr in d["frames"]), f.name
