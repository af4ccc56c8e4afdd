"""Sweeps (core.sweep) on a local Ray with 2 CPUs, on the tiny world: the results equal
the in-process ones, a killed worker does not lose the sweep, a second run computes
nothing, bad specs stop before anything runs, and stores from several machines merge."""
from __future__ import annotations

import functools
import sys
import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

from core import __main__ as cli_main
from core import jobs, sweep, zoo
from core.results import ResultStore

ROBUST, STANDARD = "resnet18-l2-1.0", "resnet18-standard-s0"
SPEC = {"models": [ROBUST, STANDARD],
        "cka": {"pairs": [[ROBUST, STANDARD]], "n": 80, "inputs": ["benign", "linf"]},
        "inversion": {"images": ["foolbox-00"], "steps": 8}}


@pytest.fixture(scope="module")
def ray_local():
    """Ray on this machine with 2 CPUs, stopped (with its workers) after the module."""
    ray = pytest.importorskip("ray")
    sweep.start_ray("local", num_cpus=2)
    yield ray
    ray.shutdown()


def loader():
    return functools.lru_cache(maxsize=None)(lambda s: zoo.load(s, device="cpu"))


def store(tmp_path, name: str) -> ResultStore:
    return ResultStore(tmp_path / f"{name}.sqlite", assets=None)


def test_a_sweep_on_ray_equals_the_in_process_sweep_and_resumes(world, ray_local, tmp_path):
    load = loader()
    planned = sweep.expand(SPEC, load)
    assert [j.kind for j in planned] == ["cka", "cka", "inversion", "inversion"]
    assert any(j.needs for j in planned)                   # adversarial examples first
    here, on_ray = store(tmp_path, "here"), store(tmp_path, "ray")
    done_here = sweep.execute(planned, load, None, here)
    done_ray = sweep.execute(planned, load, "local", on_ray)
    assert done_here.failed == done_ray.failed == []
    assert done_here.computed == done_ray.computed == 6     # with the two needs
    for job in planned:
        a, b = here.get(job.kind, job.inputs), on_ray.get(job.kind, job.inputs)
        if job.kind == "cka":
            assert np.allclose(np.asarray(a["matrix"]), np.asarray(b["matrix"]), atol=1e-5)
        else:
            assert torch.allclose(torch.as_tensor(a["images"]), torch.as_tensor(b["images"]),
                                  atol=1e-4)
    need = next(n for j in planned for n in j.needs.values())
    assert on_ray.has(need.kind, need.inputs)              # needs are stored as they arrive
    again = sweep.execute(planned, load, "local", on_ray)   # an interrupted sweep resumes
    assert (again.computed, again.stored) == (0, len(planned))


def _kill_first_task(prefix: str, killed: list[int], stop: threading.Event) -> None:
    """Kill the first Ray task named prefix... of this process's own Ray (a descendant
    of this process), never another test run's."""
    while not stop.is_set() and not killed:
        ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True,
                            text=True).stdout
        rows = [line.split(None, 2) for line in ps.splitlines()]
        parent = {int(r[0]): int(r[1]) for r in rows}
        for pid, _, args in (r for r in rows if len(r) == 3):
            if args.startswith(f"ray::{prefix}") and _descends(int(pid), os.getpid(), parent):
                subprocess.run(["kill", "-9", pid])
                killed.append(int(pid))
                return
        time.sleep(0.1)


def _descends(pid: int, ancestor: int, parent: dict[int, int]) -> bool:
    while pid > 1:
        pid = parent.get(pid, 0)
        if pid == ancestor:
            return True
    return False


def test_a_killed_worker_still_completes_the_sweep(world, ray_local, tmp_path):
    load = loader()
    spec = {"models": [ROBUST], "inversion": {"images": ["foolbox-00", "foolbox-01"],
                                              "steps": 1500}}
    planned = sweep.expand(spec, load)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_first_task,
                              args=("robustlens-inversion", killed, stop), daemon=True)
    killer.start()
    try:
        done = sweep.execute(planned, load, "local", store(tmp_path, "killed"))
    finally:
        stop.set()
        killer.join()
    assert killed, "no task was running to be killed"
    assert done.failed == [] and done.computed == 2


def test_bad_specs_are_one_sentence_before_anything_runs(world, tmp_path, capsys):
    cases = [({"models": ["no-such-model"], "accuracy": True}, "model 'no-such-model'"),
             ({"models": [ROBUST], "cka": {"layers": ["layer9.9"]}}, "layer9.9"),
             ({"models": [ROBUST], "inversion": {"images": ["nowhere"]}}, "no image 'nowhere'"),
             ({"models": [ROBUST], "ckaa": {}}, "unknown entries ['ckaa']"),
             ({"models": [ROBUST]}, "names no analysis"),
             ({"models": [ROBUST, STANDARD], "cka": {"n": 80}, "max_jobs": 2},
              "this sweep is 3 jobs, more than 2: run it again with --yes")]
    for spec, message in cases:
        path = tmp_path / "spec.yaml"
        path.write_text(json.dumps(spec))                   # JSON is YAML
        assert cli_main.main(["sweep", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    from core.results import default_store
    assert default_store().entries() == []                # nothing ran


def test_the_cli_sweeps_and_precomputes_on_ray_with_the_apps_keys(world, ray_local, tmp_path,
                                                                  capsys):
    from core import views
    from core.results import default_store
    deck = tmp_path / "deck.yaml"
    deck.write_text(json.dumps({"views": [{"page": "inversion",
                                           "params": {"inv_steps": 10, "inv_img": "foolbox-02"}}]}))
    assert cli_main.main(["precompute", str(deck), "--ray", "local"]) == 0
    wanted = views.view_jobs(loader(), "inversion", {"inv_steps": 10, "inv_img": "foolbox-02"})
    assert all(default_store().compute_count(j.kind, j.inputs) == 1 for j in wanted)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"models": [ROBUST, STANDARD],
                                "inversion": {"images": ["foolbox-02"], "steps": 10}}))
    capsys.readouterr()
    assert cli_main.main(["sweep", str(spec), "--ray", "local"]) == 0
    # the sweep asks for the keys the page does: all stored, nothing computed again
    out = json.loads(capsys.readouterr().out)
    assert (out["jobs"], out["already stored"], out["computed"]) == (2, 2, 0)
    assert all(default_store().compute_count(j.kind, j.inputs) == 1 for j in wanted)


def test_stores_from_several_machines_merge(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBUSTLENS_CACHE", str(tmp_path / "home"))
    from core.results import default_store
    home, away = default_store(), store(tmp_path, "away")
    model = {"name": "m", "fingerprint": "f"}
    only_home = {"model": model, "test": "home"}
    only_away = {"model": model, "test": "away"}
    both = {"model": model, "test": "both"}
    home.put("accuracy", only_home, {"clean_accuracy": 0.5})
    home.put("accuracy", both, {"clean_accuracy": 0.7})
    away.put("accuracy", only_away, {"clean_accuracy": 0.6})
    away.put("accuracy", both, {"clean_accuracy": 0.71})          # computed elsewhere
    away.put("cka", {"a": model, "b": model}, {"matrix": [[1.0]]})   # version 1: stale
    away.put("retired_kind", {"x": 1}, {"y": 2})
    assert cli_main.main(["store", "merge", str(away.path)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["added"], counts["different"], counts["skipped"]) == (1, 1, 2)
    assert {e["inputs"]["test"] for e in home.entries("accuracy")} == {"home", "away", "both"}
    assert home.get("accuracy", both) == {"clean_accuracy": 0.7}   # a clash keeps the local
    assert not home.has("cka", {"a": model, "b": model})
    assert cli_main.main(["store", "merge", str(tmp_path / "missing.sqlite")]) == 2
    assert "there is no results store" in capsys.readouterr().err
    assert jobs.is_current("accuracy", only_home) and not jobs.is_current("cka", {})


def test_the_example_spec_expands_into_the_apps_jobs(world):
    """assets/sweeps/zoo.yaml, as the README shows it: every entry known, every job built,
    the stitching rows the page's matrix (same keys)."""
    from helpers import ROOT
    from core import views
    load = loader()
    spec = sweep.load_spec(ROOT / "assets" / "sweeps" / "zoo.yaml")
    planned = sweep.expand(spec, load)
    sweep.check_size(planned, spec, yes=False)
    kinds = {j.kind for j in planned}
    assert kinds == {"cka", "stitch_cell", "accuracy", "inversion", "feature_grid"}
    page = views.view_jobs(load, "stitching", {"st_method": "direct"})
    assert {j.key for j in page} <= {j.key for j in planned}


def test_a_sweep_joins_a_ray_cluster_by_its_address(tmp_path):
    """A Ray head started apart (`ray start --head`), joined with --ray HOST:PORT: the
    project's code reaches its workers through the runtime environment, the results
    reach this machine's store. The head and its workers are killed afterwards."""
    import os
    import signal
    import socket

    from helpers import ROOT
    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "ROBUSTLENS_CACHE": str(tmp_path / "c")}
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--num-cpus", "2", "--port",
                             str(port), "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"models": [ROBUST, STANDARD],
                                "inversion": {"images": ["foolbox-03"], "steps": 10}}))
    try:
        for _ in range(60):                                    # the head listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        run = subprocess.run([sys.executable, "-m", "core", "sweep", str(spec), "--ray",
                              f"127.0.0.1:{port}"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        os.killpg(head.pid, signal.SIGKILL)                    # the head, raylet and workers
        head.wait(30)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Pushing file package" in run.stderr              # the code went to the cluster
    assert json.loads(run.stdout)["computed"] == 2
