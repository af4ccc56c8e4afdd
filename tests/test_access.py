"""A shared server gives visitors what its operator allows and nothing more (core.access,
core.compute_queue): local or shared by the address it was started with, server paths
only under the operator's folders, hub names that are names, downloads within a budget,
and compute lanes in which no visitor delays the operator."""
from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
import torch
import torchvision

from core import access, zoo
from core.access import AccessError, Rights, Server
from core.compute_queue import ComputeQueue, ServerBusyError
from core.errors import CheckpointError, UnknownModelError


def test_a_server_is_local_only_when_bound_to_loopback():
    for address in ("localhost", "127.0.0.1", "127.0.1.1", "::1", "[::1]"):
        assert access.is_loopback_address(address), address
    for address in (None, "", "0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "myhost.local"):
        assert not access.is_loopback_address(address), address
    assert not Server.started("localhost", {}).shared
    assert Server.started("0.0.0.0", {}).shared and Server.started("", {}).shared


def test_a_local_server_and_the_operator_have_every_right_visitors_none_by_default():
    local, shared = Server.started("127.0.0.1", {}), Server.started("0.0.0.0", {})
    for rights in (local.rights(operator=False), shared.rights(operator=True)):
        assert rights.pickles and rights.downloads and rights.folders is None
        assert rights.run_limit_s == float("inf") and not rights.visitor
    visitor = shared.rights(operator=False)
    assert visitor.visitor and not visitor.pickles and not visitor.downloads
    assert visitor.folders == () and visitor.run_limit_s == 120


def test_the_operators_environment_turns_each_capability_on(tmp_path):
    env = {"ROBUSTLENS_ALLOW_PICKLES": "1", "ROBUSTLENS_ALLOW_DOWNLOADS": "yes",
           "ROBUSTLENS_SERVER_FOLDERS": f"{tmp_path}{os.pathsep}~/models",
           "ROBUSTLENS_DOWNLOAD_BUDGET_GB": "0.5", "ROBUSTLENS_VISITOR_RUN_S": "30",
           "ROBUSTLENS_VISITOR_JOBS": "2", "ROBUSTLENS_VISITOR_QUEUE": "0"}
    server = Server.started("0.0.0.0", env)
    visitor = server.rights(operator=False)
    assert visitor.pickles and visitor.downloads and visitor.run_limit_s == 30
    assert visitor.folders == (tmp_path.resolve(), (Path.home() / "models").resolve())
    assert visitor.download_budget_bytes == 2**29
    assert (server.visitor_jobs, server.visitor_queue) == (2, 0)
    with pytest.raises(AccessError, match="ROBUSTLENS_VISITOR_RUN_S"):
        Server.started("0.0.0.0", {"ROBUSTLENS_VISITOR_RUN_S": "two minutes"})


@pytest.fixture
def folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "model.pt").write_bytes(b"x")
    (outside / "secret.pt").write_bytes(b"x")
    (allowed / "link-out").symlink_to(outside)
    (allowed / "link-in.pt").symlink_to(allowed / "sub" / "model.pt")
    return allowed, outside, Rights(shared=True, operator=False, folders=(allowed.resolve(),))


def test_paths_inside_the_operators_folders_are_read(folders):
    allowed, _, rights = folders
    assert access.readable_path(str(allowed / "sub" / "model.pt"), rights) == \
        (allowed / "sub" / "model.pt").resolve()
    assert access.readable_path(str(allowed / "link-in.pt"), rights).name == "model.pt"
    assert access.readable_path(str(allowed / "sub" / ".." / "sub"), rights).name == "sub"
    assert access.readable_path(str(allowed / "not-yet.pt"), rights).name == "not-yet.pt"


def test_every_way_out_of_the_folders_is_one_sentence(folders, tmp_path):
    allowed, outside, rights = folders
    attacks = [str(allowed / ".." / "outside" / "secret.pt"), str(outside / "secret.pt"),
               str(allowed / "link-out" / "secret.pt"), str(allowed / "link-out"),
               str(allowed / ".." / "outside" / "missing.pt"), "/etc/passwd", "/etc/nothing",
               "../../etc/passwd", "~/.ssh/id_rsa", "~", f"file://{allowed}/sub/model.pt",
               "a" * 5000, str(allowed) + "/" + "b" * 300, "sub/model.pt", str(allowed) + "\0x",
               str(tmp_path / "allowed-twin" / "x.pt")]
    said = set()
    for attack in attacks:
        with pytest.raises(AccessError) as e:
            access.readable_path(attack, rights)
        said.add(str(e.value))
    assert said == {"This shared server reads only files in the folders its operator allows, "
                    "and this is not one of them."}   # the same whether or not a file exists


def test_without_folders_a_visitor_reads_no_path(folders):
    allowed, _, _ = folders
    nothing = Rights(shared=True, operator=False, folders=())
    with pytest.raises(AccessError, match="reads no files by path.*ROBUSTLENS_SERVER_FOLDERS"):
        access.readable_path(str(allowed / "sub" / "model.pt"), nothing)
    local = Rights()
    assert access.readable_path(str(allowed / "sub" / "model.pt"), local).is_file()
    with pytest.raises(AccessError, match="not a path"):
        access.readable_path("file:///etc/passwd", local)


@pytest.mark.parametrize("spec", [
    "madrylab:../secrets", "madrylab:a/b", "timm:../../etc/passwd", "timm:..", "timm:.hidden",
    "torchvision:resnet50/../x", "robustbench:../../etc/passwd", "robustbench:a/b",
    "robustbench:cifar10/Linf/..", "robustbench:cifar10/../Carmon2019Unlabeled",
    "madrylab:" + "x" * 300, "timm:resnet50 ", "timm:~root"])
def test_hub_names_are_names_never_paths(spec, tmp_path, offline):
    with pytest.raises(UnknownModelError, match="is not a model name"):
        zoo.load(spec, model_dir=tmp_path, device="cpu")


def test_names_the_hubs_use_pass():
    for source, name in [("madrylab", "resnet50_l2_eps3"), ("madrylab", "resnet18_linf_eps4.0.ckpt"),
                         ("timm", "inception_v3.tf_adv_in1k"), ("torchvision", "resnet50"),
                         ("robustbench", "Carmon2019Unlabeled"),
                         ("robustbench", "imagenet/Linf/Salman2020Do_R50")]:
        zoo.check_hub_name(source, name)


def test_without_downloads_a_hub_name_loads_only_from_this_machines_cache(tmp_path, monkeypatch,
                                                                            offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert zoo.cached_weights("torchvision:resnet18") is None
    with pytest.raises(CheckpointError, match="not on this machine, and downloading it is off"):
        zoo.load("torchvision:resnet18", device="cpu", download=False)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), target)   # as torchvision keeps it
    assert zoo.cached_weights("torchvision:resnet18") == target
    probe = zoo.load("torchvision:resnet18", device="cpu", download=False, check=False)
    assert probe.card["source"] == "torchvision"
    # robustbench: the model folder's file
    assert zoo.cached_weights("robustbench:Carmon2019Unlabeled", tmp_path) is None
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    (tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt").write_bytes(b"x")
    assert zoo.cached_weights("robustbench:Carmon2019Unlabeled", tmp_path).name == \
        "Carmon2019Unlabeled.pt"


def test_the_download_ledger_keeps_visitors_within_the_budget(tmp_path):
    ledger = access.DownloadLedger(tmp_path / "downloads.json")
    budget = Rights(shared=True, operator=False, downloads=True, download_budget_bytes=1000)
    ledger.check_room(budget, free_bytes=2**40)
    ledger.record("timm:a", 600)
    ledger.check_room(budget, free_bytes=2**40)
    ledger.record("timm:b", 600)
    assert access.DownloadLedger(tmp_path / "downloads.json").spent() == 1200   # kept on disk
    with pytest.raises(AccessError, match="download budget is spent"):
        ledger.check_room(budget, free_bytes=2**40)
    with pytest.raises(AccessError, match="nearly full"):
        access.DownloadLedger(tmp_path / "other.json").check_room(budget, free_bytes=2**20)
    with pytest.raises(AccessError, match="Downloads are off.*ROBUSTLENS_ALLOW_DOWNLOADS"):
        ledger.check_room(Rights(shared=True, operator=False, downloads=False))


def test_the_operator_key_is_made_once_and_kept_private(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path))
    key = access.operator_key({})
    assert len(key) >= 24 and access.operator_key({}) == key
    assert stat.S_IMODE((tmp_path / "operator-key").stat().st_mode) == 0o600
    assert access.is_operator_key(key, {}) and not access.is_operator_key(key[:-1], {})
    assert not access.is_operator_key("", {}) and not access.is_operator_key(None, {})
    assert access.operator_key({"ROBUSTLENS_OPERATOR_KEY": "mine"}) == "mine"
    assert access.operator_link("http://talk:8501/", {}) == f"http://talk:8501/?operator={key}"


def _hold(queue: ComputeQueue, session: str, visitor: bool, release: threading.Event,
          started: list, errors: list) -> threading.Thread:
    def run() -> None:
        try:
            with queue.slot(session, visitor):
                started.append(session)
                release.wait(30)
        except ServerBusyError as e:
            errors.append((session, str(e)))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_no_visitor_delays_the_operator_and_visitors_queue_within_limits():
    queue = ComputeQueue(visitor_jobs=1, visitor_queue=1)
    release, started, errors = threading.Event(), [], []
    first = _hold(queue, "v1", True, release, started, errors)
    while "v1" not in started:
        time.sleep(0.01)
    second = _hold(queue, "v2", True, release, started, errors)
    while queue.waiting < 1:
        time.sleep(0.01)
    with pytest.raises(ServerBusyError, match="busy: 2 visitors' runs are ahead"):
        with queue.slot("v3", True):
            pass
    t0 = time.time()
    with queue.slot("operator", False):                 # its own lane: no wait
        assert time.time() - t0 < 1
    assert started == ["v1"]
    release.set()
    first.join(10)
    second.join(10)
    assert started == ["v1", "v2"] and not errors and queue.waiting == 0


def test_a_session_computes_one_thing_at_a_time():
    queue = ComputeQueue()
    with queue.slot("s", False):
        with pytest.raises(ServerBusyError, match="computing already"):
            with queue.slot("s", False):
                pass
    with queue.slot("s", False):                        # released after each run
        pass
