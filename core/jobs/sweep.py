"""Sweeps: a grid of analyses (SPEC.yaml) expanded into the app's own jobs, run in this
process or as Ray tasks (on this machine or a cluster), results written to the store.

A spec names models and, per analysis, its grid:

    models: [resnet18-l2-1.0, resnet18-linf-8, resnet18-standard-s0]
    cka:        {pairs: all, layers: blocks, inputs: [benign, linf], kernel: [linear], n: 10000}
    stitching:  {pairs: all, layers: all, method: [task, direct]}
    accuracy:   true
    inversion:  {images: [foolbox-00, foolbox-01], method: adam, steps: 150}
    features:   {indices: [0, 1, 2], method: adam}
    max_jobs: 500        # more only with --yes

Each entry is an analysis's grid (core.analyses: its `Grid`), whose jobs and keys are the
app's own (CKA pairs in one order, so B vs A is A vs B transposed); a key already stored is skipped, so an
interrupted sweep resumes. On Ray (`engine` "local" or a cluster address) each job is
one task: the models and the data set go to the object store once, a job's needs are
tasks whose results feed it, a task is retried when it fails, and the driver alone
writes each result to the store as it arrives (workers never touch SQLite).
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core import PROJECT, jobs, progress
from core.errors import RobustLensError
from core.jobs import Job, Loader
from core.jobs.results import ResultStore, default_store

ROOT = PROJECT
MAX_JOBS = 500              # a bigger grid runs only when asked with --yes
RETRIES = 2                 # a task that fails (or whose worker dies) runs again this often


class SweepSpecError(RobustLensError, ValueError):
    """A sweep spec that cannot run: the message says what to change."""


@dataclass
class Outcome:
    """What a sweep did: jobs in the grid, already stored, computed now, failures."""
    planned: int = 0
    stored: int = 0
    computed: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"jobs": self.planned, "already stored": self.stored,
                "computed": self.computed, "failed": self.failed,
                "seconds": round(self.seconds, 1)}


# ------------------------------------------------------------------ expansion

def load_spec(path: str | os.PathLike) -> dict:
    import yaml
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise SweepSpecError(f"cannot read the sweep spec {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise SweepSpecError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(spec, dict):
        raise SweepSpecError(f"{path}: a sweep spec is a mapping (models:, cka:, ...)")
    return spec


def listed(value: Any, name: str) -> list:
    """A spec value as a non-empty list (a single value is a list of one)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SweepSpecError(f"{name} is empty")
    return values


def pairs(value: Any, models: list[str], ordered: bool, name: str) -> list[tuple[str, str]]:
    """'all' (every pair of the models: unordered with self-pairs for CKA, ordered
    without for stitching) or a list of [a, b]."""
    if value in (None, "all"):
        if ordered:
            return list(itertools.permutations(models, 2))
        return list(itertools.combinations_with_replacement(models, 2))
    pairs = []
    for p in listed(value, f"{name}.pairs"):
        if not (isinstance(p, list) and len(p) == 2):
            raise SweepSpecError(f"{name}.pairs: each pair is [model, model], not {p!r}")
        pairs.append((str(p[0]), str(p[1])))
    return pairs


def expand(spec: dict, load: Loader) -> list[Job]:
    """The jobs of a spec, without duplicates, in the spec's order; a bad model,
    layer, image or option is a SweepSpecError naming it, before anything runs."""
    from core import analyses
    grids = {g.name: g for g in analyses.sweeps()}
    unknown = set(spec) - set(grids) - {"models", "max_jobs"}
    if unknown:
        raise SweepSpecError(f"unknown entries {sorted(unknown)} in the sweep spec; known: "
                             f"models, max_jobs, {', '.join(grids)}")
    models = [str(m) for m in listed(spec.get("models") or [], "models")]
    for m in models:
        try:
            load(m)
        except RobustLensError as e:
            raise SweepSpecError(f"model {m!r}: {e}") from e
    built: list[Job] = []
    for name, grid in grids.items():
        if not spec.get(name):
            continue
        options = spec[name] if isinstance(spec[name], dict) else {}
        try:
            built.extend(grid.expand(options, models, load))
        except SweepSpecError:
            raise
        except (RobustLensError, ValueError, KeyError, TypeError) as e:
            raise SweepSpecError(f"{name}: {e}") from e
    unique = list({j.key: j for j in built}.values())
    if not unique:
        raise SweepSpecError(f"the sweep spec names no analysis: add one of {', '.join(grids)}")
    return unique


def image(key: str, size: int) -> Any:
    """A gallery image of a spec by its key, at a model's input size."""
    from core import data
    found = data.image_for(key, None, size)
    if found is None:
        raise SweepSpecError(f"no image {key!r}: name a shipped sample (foolbox-00 .. "
                             "foolbox-19), a photo or a test image (test-N)")
    return found[0]


def check_size(planned: list[Job], spec: dict, yes: bool) -> None:
    limit = int(spec.get("max_jobs", MAX_JOBS))
    if len(planned) > limit and not yes:
        raise SweepSpecError(f"this sweep is {len(planned):,} jobs, more than {limit:,}: "
                             "run it again with --yes to start it anyway")


# ------------------------------------------------------------------ execution

def _closure(planned: list[Job]) -> list[Job]:
    """The planned jobs and every job they need, each once, needs first."""
    order: dict[str, Job] = {}

    def visit(job: Job) -> None:
        for need in job.needs.values():
            visit(need)
        order.setdefault(job.key, job)
    for job in planned:
        visit(job)
    return list(order.values())


def _counter(total: int) -> Callable[[bool], None]:
    """A step per finished job, shown by core.progress's printer: counts and time left."""
    show, t0, counts = progress.printer("sweep"), time.time(), {"done": 0, "failed": 0}

    def step(failed: bool = False) -> None:
        counts["done"] += 1
        counts["failed"] += failed
        left = (time.time() - t0) / counts["done"] * (total - counts["done"])
        progress.report(show, counts["done"], total, f"{counts['done']}/{total} jobs, "
                        f"{counts['failed']} failed, about {left:.0f} s left")
    return step


def execute(planned: list[Job], load: Loader, engine: str | None = None,
            store: ResultStore | None = None) -> Outcome:
    """Compute the jobs not yet stored (built with `load`): in this process (engine
    None) or on Ray ("local": a Ray started on this machine; else a cluster address)."""
    store = store or default_store()
    t0 = time.time()
    todo = [j for j in _closure(planned) if not store.has(j.kind, j.inputs)]
    waiting = {j.key for j in todo}
    out = Outcome(planned=len(planned), stored=sum(j.key not in waiting for j in planned))
    if todo:
        if engine:
            _run_on_ray(todo, out, store, load, engine)
        else:
            _run_here(todo, out, store)
        print(file=sys.stderr)
    out.seconds = time.time() - t0
    return out


def _run_here(todo: list[Job], out: Outcome, store: ResultStore) -> None:
    from core.jobs import runner
    step = _counter(len(todo))
    for job in todo:
        try:
            runner.run(job, None, store)
        except Exception as e:  # noqa: BLE001 - reported with the job, the rest go on
            out.failed.append(f"{job.label}: {e}")
            step(True)
            continue
        out.computed += 1
        step()


def _compute_task(spec: dict, key: str, names: list[str], splits: dict, need_names: list[str],
                  *refs: Any) -> tuple[Any, float]:
    """A Ray task: rebuild the job from its plain spec, with the models and data of the
    object store (Ray hands them over resolved), and compute it with its needs'
    results; (result, seconds)."""
    from core import data
    from core.models.probe import pick_device
    models, needs = refs[:len(names)], refs[len(names):]
    device = pick_device()
    probes = {n: m.to(device) for n, m in zip(names, models)}
    for split, (ds, source) in splits.items():
        data.provide(split, ds, source)
    job = jobs.rebuild(spec, probes.__getitem__)
    if job.key != key:
        raise RuntimeError(f"{job.label}: rebuilt with another key on this worker")
    t0 = time.time()
    value = job.run(None, **dict(zip(need_names, needs)))
    return value, time.time() - t0


def start_ray(engine: str, **options: Any) -> None:
    """Ray for a sweep, unless this process has it already: 'local' starts one on this
    machine (its workers import this checkout); an address joins a cluster, whose
    workers get the project's code through Ray's runtime environment (the models and
    data go through the object store, so the weights and data folders stay home)."""
    import ray
    if ray.is_initialized():
        return
    if engine == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, **options)
    else:
        ray.init(address=engine, log_to_driver=False, runtime_env={
            "working_dir": str(ROOT),
            "excludes": [".git", "artifacts", "bench/results", "pretrained", "assets",
                         "*.sqlite"]}, **options)


def _run_on_ray(todo: list[Job], out: Outcome, store: ResultStore, load: Loader,
                engine: str) -> None:
    import ray

    from core import data
    start_ray(engine)
    gpus = ray.cluster_resources().get("GPU", 0)
    models = {s: ray.put(load(s).to("cpu")) for s in {s for j in todo for s in j.models}}
    splits = sorted({s for j in todo for s in j.splits})
    # once, for every task: each split with how job keys name its source
    data_ref = ray.put({s: (data.cifar10(s), data.cifar10_source(s)) for s in splits})
    task = ray.remote(max_retries=RETRIES, retry_exceptions=True)(_compute_task)
    refs: dict[str, Any] = {}
    pending: dict[Any, tuple[Job, Any]] = {}     # result ref -> (job, its seconds' ref)
    for job in todo:    # needs come first: their refs feed the jobs that need them
        need_refs = [refs[n.key] if n.key in refs else ray.put(store.get(n.kind, n.inputs))
                     for n in job.needs.values()]
        # a CIFAR-sized job shares a GPU (two runs share one at full speed); larger ones not
        share = 1 if any(load(s).input_size > 64 for s in job.models) else 0.5
        value, seconds = task.options(num_cpus=1, num_gpus=share if gpus else 0, num_returns=2,
                                      name=f"robustlens-{job.kind}").remote(
            job.spec, job.key, job.models, data_ref, list(job.needs),
            *[models[s] for s in job.models], *need_refs)
        refs[job.key] = value
        pending[value] = (job, seconds)
    step = _counter(len(todo))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job, seconds = pending.pop(ready[0])
        try:
            value, seconds = ray.get([ready[0], seconds])
        except Exception as e:  # noqa: BLE001 - a task's error, reported; the rest go on
            out.failed.append(f"{job.label}: {_cause(e)}")
            step(True)
            continue
        store.put(job.kind, job.inputs, value, seconds, computed=True)
        out.computed += 1
        step()


def _cause(e: Exception) -> str:
    """A Ray task error as the sentence of its cause."""
    cause = getattr(e, "cause", None)
    return str(cause) if cause is not None else str(e).strip().splitlines()[-1]
