"""One way to do each thing in core/ (issue 17): each concept is defined once; no
estimate reads class-sorted batches; job kinds are versioned; the CLI and the app
ask for the same keys; a job is rebuilt from plain data in another process; a
precomputed deck neither serves nor ships results of an older version."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_probe
from core import attacks, cka, cli, data, jobs, runner, stitching, views, zoo
from core.results import ResultStore, canonical, default_store, make_key

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "core").rglob("*.py"))


def _trees() -> dict[str, ast.Module]:
    """Every module of core/ by its path there (models/probe.py)."""
    return {p.relative_to(ROOT / "core").as_posix(): ast.parse(p.read_text()) for p in CORE}


def _defined(trees: dict[str, ast.Module]) -> dict[str, list[str]]:
    """Every module-level function and class, and every method of those classes,
    -> the files defining it (a job builder's local run() is not a concept)."""
    out: dict[str, list[str]] = {}
    for name, tree in trees.items():
        for node in tree.body:
            members = node.body if isinstance(node, ast.ClassDef) else []
            for n in [node, *members]:
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                    out.setdefault(n.name, []).append(name)
    return out


# ----------------------------------------------------------- single definitions

# concept -> the one file that defines it (a newcomer looks there)
HOMES = {
    "batches": "data/__init__.py", "batch_sizes": "data/__init__.py",
    "shuffled_order": "data/__init__.py", "fixed_subset": "data/__init__.py",
    "image_for": "data/__init__.py",
    "tap": "models/probe.py", "features": "models/probe.py", "_StopForward": "models/probe.py",
    "_hooks": "models/probe.py", "short_names": "models/probe.py",
    "check_layers": "models/probe.py",
    "to_uint8": "data/images.py", "to_tensor": "data/images.py", "image_id": "data/images.py",
    "norms": "data/images.py", "to_model_size": "data/images.py",
    "load_upload": "data/images.py",
    "Event": "progress.py", "report": "progress.py", "span": "progress.py",
    "printer": "progress.py",
    "plain": "jobs/results.py", "make_key": "jobs/results.py",
    "Settings": "analyses/inversion.py", "cpu_threads": "analyses/inversion.py",
    "run": "jobs/runner.py", "run_side_by_side": "jobs/runner.py", "stored": "jobs/runner.py",
    "Kind": "jobs/__init__.py", "Cost": "jobs/__init__.py", "seconds": "jobs/__init__.py",
    "rebuild": "jobs/__init__.py", "make": "jobs/__init__.py",
    "stitch_matrix": "analyses/stitching.py", "cka_request": "analyses/cka.py",
    "Grid": "analyses/stitching.py", "perturb": "analyses/attacks.py",
    "examples": "analyses/attacks.py", "register": "analyses/__init__.py",
}
GONE = {"_image_batches", "_batches", "_take", "_steps_per_epoch", "_n_images", "_is_dataset",
        "_count_images", "_count", "_tap", "_defaults", "_threaded", "_flat_norm",
        "_per_image_norm", "_short", "_plain", "_progress_printer", "_adversarial", "_adv_key",
        "_features", "_call", "_span"}


# ui/backend.py (Streamlit) is to become a thin wrapper of core.runner: not edited here
WRAPPED_LATER = {("stored", "backend.py")}


def test_each_concept_is_defined_in_one_place():
    defined = _defined(_trees())
    for name, home in HOMES.items():
        files = [f for f in defined.get(name, []) if (name, f) not in WRAPPED_LATER]
        assert files == [home], (name, defined.get(name))
    assert not GONE & set(defined), GONE & set(defined)


def test_one_way_to_batch_hook_shuffle_and_encode():
    trees = _trees()
    for name, tree in trees.items():
        source = (ROOT / "core" / name).read_text()
        assert "_ADV_CACHE" not in source, name
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "hasattr" and len(node.args) == 2 \
                    and isinstance(node.args[1], ast.Constant):
                assert node.args[1].value != "batches", f"{name}: hasattr(..., 'batches')"
            if isinstance(node, ast.Attribute) and node.attr == "register_forward_hook":
                assert name == "models/probe.py", f"{name} sets its own forward hooks"
            if isinstance(node, ast.Attribute) and node.attr == "randperm":
                # train.py keeps its data and epoch orders on the training device
                assert name in ("data/__init__.py", "training/train.py"), f"{name} draws its own order"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("dump", "dumps"):
                assert not any(k.arg == "default" for k in node.keywords), \
                    f"{name}: a JSON converter of its own (use results.plain)"


def test_compute_code_does_not_import_the_plotting_layer():
    """Only an analysis's command line (its _cli functions, which write PNGs) reaches
    the figures."""
    drawing = {"figures", "exports", "backend"}
    for name, tree in _trees().items():
        if name.startswith(("figures/", "views/")) or name in ("cli.py", "__main__.py"):
            continue
        cli = {n for node in tree.body if isinstance(node, ast.FunctionDef)
               and node.name.startswith("_cli") for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node not in cli:
                mods = {node.module or ""} | {a.name for a in node.names}
                assert not {m.rsplit(".", 1)[-1] for m in mods} & drawing, (name, mods)


def test_jobs_take_one_settings_value_with_public_defaults():
    from core import inversion
    s = inversion.Settings.for_task("visualize", "normgrad")
    assert (s.steps, s.step_size) == inversion.DEFAULTS["visualize"]["normgrad"]
    assert inversion.Settings.for_task("invert", steps=7, eps=2.0).eps == 2.0
    with pytest.raises(ValueError, match="method"):
        inversion.Settings.for_task("invert", "sgd")
    with pytest.raises(TypeError):
        inversion.Settings.for_task("invert", colour=1)


# ------------------------------------------------------ class-sorted batches

def _class_coded(per_class: int = 16, size: int = 8) -> data.ImageTensorDataset:
    """Stored class by class (as CIFAR-10 is); the pixels of class c are 20 c / 255."""
    labels = torch.arange(10).repeat_interleave(per_class)
    images = (labels * 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, size, size)
    return data.ImageTensorDataset(images.contiguous(), labels, "class-coded")


class ClassesSeen:
    """The classes in every batch a probe's network reads (decoded from the pixels)."""

    def __init__(self, *probes) -> None:
        self.batches: list[set[int]] = []
        self.handles = [p.model.conv1.register_forward_pre_hook(self._see(p)) for p in probes]

    def _see(self, probe):
        def hook(_module, args):
            if len(args[0]) == 1:
                return  # the dry run that finds layer shapes (one blank image)
            x = args[0] * probe.std + probe.mean  # the input before normalisation
            # PGD moves pixels by at most 8/255: the class still rounds right
            self.batches.append(set((x[:, 0, 0, 0] * 255 / 20).round().long().tolist()))
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for h in self.handles:
            h.remove()


def test_no_estimate_reads_class_sorted_batches():
    a = tiny_probe(width=4, seed=0, name="a", input_size=8)
    b = tiny_probe(width=4, seed=1, name="b", input_size=8)
    ds = _class_coded()
    pgd = attacks.PGD("linf", 8 / 255, 2 / 255, 2)
    # accuracies run clean: under attack, only the correctly classified images of a
    # batch are attacked, and a random model gets a single class right
    estimates = {
        "cka": lambda: cka.cka_matrix(a, b, ds, ["relu"], ["relu"], batch_size=16),
        "adversarial cka": lambda: cka.cka_matrix(a, b, ds, ["relu"], ["relu"], batch_size=16,
                                                  attack_a=pgd, limit=64),
        "accuracy": lambda: attacks.accuracy(a, ds, batch_size=16, limit=64),
        "adversarial examples": lambda: attacks.examples(a, ds, pgd, 16, limit=64),
        "direct matching": lambda: stitching.fit(a, b, "layer2.0", ds, "direct",
                                                 batch_size=16, max_batches=4),
        "task matching": lambda: stitching.fit(a, b, "layer2.0", ds, "task", epochs=2,
                                               batch_size=16, max_batches=3),
        "evaluate": lambda: stitching.evaluate(a, ds, batch_size=16),
        "stitch cell": lambda: stitching.stitch_cell(a, b, "layer1.0", "direct", ds, ds,
                                                     batch_size=16),
    }
    for name, estimate in estimates.items():
        with ClassesSeen(a, b) as seen:
            estimate()
        assert seen.batches, name
        sorted_batches = [s for s in seen.batches if len(s) == 1]
        assert not sorted_batches, f"{name} read {len(sorted_batches)} single-class batches"
    # the check itself: a pass in the data set's order reads single-class batches
    with ClassesSeen(a) as seen:
        attacks.accuracy(a, ds, batch_size=16, shuffle_seed=None)
    assert all(len(s) == 1 for s in seen.batches)


# passes whose answer is given in the data set's order (indices into it)
IN_ORDER = {"test_outputs"}


def test_every_job_kind_reads_seeded_batches_unless_it_answers_in_order(world, monkeypatch):
    from helpers import snapshot_jobs
    reads: list[tuple[str, int | None]] = []
    current = {"kind": None}
    real = data.batches

    def spy(source, batch_size, device="cpu", shuffle_seed=0, limit=None, epoch=0):
        if isinstance(source, data.ImageTensorDataset):  # a data set, not given batches
            reads.append((current["kind"], shuffle_seed))
        return real(source, batch_size, device, shuffle_seed, limit, epoch)
    import sys

    import core.analyses  # noqa: F401  (every analysis module, imported by its package)
    # every module of core that took `batches` by name, whichever imported it first
    for name, module in list(sys.modules.items()):
        if name.startswith("core.") and getattr(module, "batches", None) is real:
            monkeypatch.setattr(module, "batches", spy)
    load = _loader()
    built = snapshot_jobs(load)
    for job in built.values():
        for part in [*job.needs.values(), job]:  # needs first: the job reads them stored
            current["kind"] = part.kind
            runner.run(part)
    assert {k for k, _ in reads} >= {"cka", "adversarial_examples", "stitch_cell", "accuracy",
                                     "test_outputs"}
    for kind, seed in reads:
        assert seed is not None or kind in IN_ORDER, f"{kind} reads the data set in its order"


def test_every_kind_declares_the_models_and_splits_its_key_names(world):
    """What a sweep ships to a Ray worker (the models, the CIFAR-10 splits) comes from
    each kind's declaration: it must be exactly what the job's key names. The kinds'
    jobs: the value snapshots', and those of every page's default view."""
    from helpers import snapshot_jobs
    load = _loader()
    from core import stitching
    from core.analyses import cka, similarity
    examples = [*snapshot_jobs(load).values(),
                *(job for page in views.pages() for job in views.view_jobs(load, page, {})),
                # kinds no page shows yet: cross-task stitching (here CIFAR-10 to itself),
                # any similarity measure, the samples under an attack (a view's expander)
                cka.attack_examples_job(load, "resnet18-linf-8", "snow", count=2),
                stitching.cross_task_job(load, "resnet18-linf-8", "resnet18-standard-s0",
                                         "layer2.0", train_set="cifar10", test_sets=["cifar10"]),
                similarity.similarity_job(load, "resnet18-linf-8", "resnet18-standard-s0",
                                          "svcca", n=80)]
    built = [part for job in examples for part in (*job.needs.values(), job)]
    assert {job.kind for job in built} == set(jobs.kinds())

    def fingerprints(value) -> set[str]:
        if isinstance(value, dict):
            return ({value["fingerprint"]} if "fingerprint" in value else set()).union(
                *(fingerprints(v) for v in value.values()))
        if isinstance(value, list):
            return set().union(*(fingerprints(v) for v in value))
        return set()
    for job in built:
        assert fingerprints(job.inputs) == {load(m).fingerprint() for m in job.models}, job.kind
        named = repr(job.inputs)
        assert set(job.splits) == {s for s in ("train", "test") if f"cifar10-{s}" in named}, job.kind


# ----------------------------------------------------------------- versions

def _loader():
    probes: dict = {}

    def load(spec: str):
        if spec not in probes:
            probes[spec] = zoo.load(spec, device="cpu")
        return probes[spec]
    return load


def test_bumping_a_kind_version_changes_its_key(world, monkeypatch):
    load = _loader()
    image = data.cifar_samples()[0].image
    before = jobs.inversion_job(load, "resnet18-l2-1.0", image, steps=3)
    assert before.version == 1 and "version" not in before.inputs
    monkeypatch.setitem(jobs.KINDS, "inversion",
                        dataclasses.replace(jobs.KINDS["inversion"], version=2))
    after = jobs.inversion_job(load, "resnet18-l2-1.0", image, steps=3)
    assert after.inputs == {**before.inputs, "version": 2} and after.key != before.key
    assert after.spec["version"] == 2
    with pytest.raises(ValueError, match="version 1; this code computes version 2"):
        jobs.rebuild(before.spec, load)


def test_precompute_neither_serves_nor_ships_a_stale_version(world, tmp_path, monkeypatch):
    store = default_store()
    assets = tmp_path / "assets"
    assets.mkdir()
    monkeypatch.setattr(store, "assets", assets)
    deck = tmp_path / "deck.json"
    deck.write_text(json.dumps({"title": "t", "views": [
        {"page": "cka", "params": {"cka_n": 1000}}]}))
    job = views.view_jobs(_loader(), "cka", {"cka_n": 1000})[0]
    v1_inputs = {k: v for k, v in job.inputs.items() if k != "version"}
    stale = make_key("cka", v1_inputs)
    (assets / f"{stale}.json").write_text(json.dumps({"matrix": [[1.0]]}))
    assert stale != job.key and store.get("cka", v1_inputs) is not None
    assert runner.stored(job) is None  # the old version is not served
    cli._precompute(argparse.Namespace(deck=str(deck), ship_list=False, device="cpu",
                                       to_assets=True, prune=True))
    shipped = {p.stem for p in assets.glob("*.json")}
    assert job.key in shipped and stale not in shipped


# ------------------------------------------------------- CLI, app, plain data

def test_the_cli_and_the_app_ask_for_the_same_keys(world, monkeypatch):
    from core.__main__ import main
    from helpers import run_app
    load = _loader()
    params = {"a": "resnet18-linf-8", "b": "resnet18-standard-s0", "cka_n": 1000}
    assert main(["cka", "--a", params["a"], "--b", params["b"], "-n", "1000",
                 "--device", "cpu"]) == 0
    cli_keys = {e["key"] for e in default_store().entries("cka")}
    assert cli_keys == {j.key for j in views.view_jobs(load, "cka", params)}
    asked: set[str] = set()
    real_get = ResultStore.get

    def get(self, kind, inputs):
        asked.add(make_key(kind, inputs))
        return real_get(self, kind, inputs)
    monkeypatch.setattr(ResultStore, "get", get)
    extra = {"cka": {"cka_n": 1000}, "inversion": {"inv_steps": 12}}
    for page in ("cka", "stitching", "manipulation", "inversion"):
        asked.clear()
        page_params = {"a": params["a"], "b": params["b"], **extra.get(page, {})}
        at = run_app(f"pages/{page}.py", {k: str(v) for k, v in page_params.items()})
        assert not at.exception, (page, [e.value for e in at.exception])
        view = views.view_jobs(load, page, page_params) + views.view_extras(load, page,
                                                                            page_params)
        keys = {j.key for j in view} | {n.key for j in view for n in j.needs.values()}
        assert asked and asked <= keys, (page, asked - keys)


def test_a_job_is_rebuilt_from_plain_data_in_another_process(world):
    from helpers import snapshot_jobs
    built = snapshot_jobs(_loader())
    specs = {name: json.loads(json.dumps(job.spec)) for name, job in built.items()}
    load = _loader()
    assert {n: jobs.rebuild(s, load).key for n, s in specs.items()} == {
        n: j.key for n, j in built.items()}
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from core import jobs, zoo\n"
        "specs = json.loads(sys.stdin.read())\n"
        "load = lambda spec: zoo.load(spec, device='cpu')\n"
        "print(json.dumps({n: jobs.rebuild(s, load).key for n, s in specs.items()}))\n")
    env = {**os.environ, "ROBUSTLENS_PRETRAINED": str(world["zoo"])}
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps(specs), env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout) == {n: j.key for n, j in built.items()}


def test_optimisations_run_side_by_side_with_live_frames(world):
    load = _loader()
    image = data.cifar_samples()[3].image
    pair = [jobs.inversion_job(load, spec, image, steps=4)
            for spec in ("resnet18-l2-1.0", "resnet18-standard-s0")]
    events: list = []
    results = runner.run_side_by_side(pair, lambda i, e: events.append((i, e)))
    for i in (0, 1):
        mine = [e for k, e in events if k == i]
        assert [e.done for e in mine] == list(range(5)) and mine[0].preview is not None
        assert isinstance(mine[-1].loss, float)
        assert np.isclose(mine[-1].loss, float(results[i]["loss"].mean()))
    again: list = []
    assert runner.run_side_by_side(pair, lambda i, e: again.append(e))[1]["psnr"] == \
        results[1]["psnr"]
    assert again == []  # from the store: nothing computed, nothing shown
    value, fresh = runner.run(pair[0])
    assert not fresh and torch.equal(value["images"], results[0]["images"])


DECK_KEYS = json.loads((ROOT / "tests" / "deck_keys.json").read_text())


@pytest.mark.skipif(len(zoo.names()) < 5, reason="the shipped zoo is absent")
def test_the_shipped_deck_keeps_its_keys_except_the_versioned_kinds():
    """The keys of every job of the talk deck and the page defaults on the shipped zoo,
    recorded by the code before issue 17 (tests/deck_keys.json): kinds at version 1
    keep them, CKA (version 2) has its inputs plus the version."""
    load = _loader()
    if {n: load(n).fingerprint() for n in zoo.names()} != DECK_KEYS["fingerprints"]:
        pytest.skip("the shipped zoo changed since the record: record again")
    if DECK_KEYS["with_test_set"] != data.has_cifar10("test"):
        pytest.skip("recorded with the test set present" if DECK_KEYS["with_test_set"]
                    else "recorded without the test set")
    deck = views.load_deck(ROOT / DECK_KEYS["deck"])
    wanted = [(v["page"], v["params"]) for v in deck["views"]] + [(p, {}) for p in views.PAGES]
    now = [j for page, params in wanted for j in views.view_jobs(load, page, params)]
    # the views have changed what they show since (issue 13): compare the jobs both ask for
    keys = {r["key"] for r in DECK_KEYS["jobs"]}
    inputs = {(r["kind"], json.dumps(r["inputs"], sort_keys=True))
              for r in DECK_KEYS["jobs"] if "inputs" in r}
    compared = 0
    for job in now:
        if job.version == 1:
            compared += job.key in keys
            continue
        older = {k: v for k, v in canonical(job.inputs).items() if k != "version"}
        if (job.kind, json.dumps(older, sort_keys=True)) in inputs:
            assert job.key not in keys, job.label     # the new version has its own key
            compared += 1
    assert compared >= 100, compared


def test_each_public_optimisation_defaults_to_its_tasks_settings(probe):
    # a notebook's call and the app's job (which passes Settings.for_task(task)) run
    # the same optimisation: same steps, step size and radius
    from core import inversion
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    runs = {
        "invert": lambda: inversion.invert(probe, x[:1], steps=1),
        "visualize": lambda: inversion.visualize_feature(probe, 0, steps=1),
        "add": lambda: inversion.add_feature(probe, x[:1], 0, steps=1),
        "interpolate": lambda: inversion.interpolate(probe, x[:1], x[1:], frames=2, steps=1),
        "explain": lambda: inversion.explain_misclassification(probe, x[0], 3, steps=1)["result"],
    }
    for task, run in runs.items():
        expected = inversion.Settings.for_task(task, steps=1)
        recorded = run().settings
        assert (recorded["steps"], recorded["step_size"], recorded["eps"]) == (
            expected.steps, expected.step_size, expected.eps), task
