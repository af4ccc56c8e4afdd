"""The subcommands of `python -m core`: each a (register arguments, run) pair; the
analyses' own (cka, stitch, invert, ...) come from their modules (core.analyses)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

from core import analyses
from core.errors import RobustLensError
from core.jobs.runner import run_printed
from core.models import zoo

__all__ = ["COMMANDS", "RobustLensError"]


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="zoo entries to train (default: all)")
    p.add_argument("--all", action="store_true", help="the whole zoo, then measure every "
                   "model (clean, PGD-20, APGD) into its card and export it")
    p.add_argument("--epochs", type=int, help="override the zoo recipe's epochs")
    p.add_argument("--subset", type=int, help="train on n images only (smoke runs)")
    p.add_argument("--data", help="CIFAR-10 root (official batches or ImageFolder)")
    p.add_argument("--data-set", default="cifar10",
                   help="train on another data set (svhn, cifar100, mnist, fashion-mnist: "
                        "`python -m core data --set NAME` first); the model is named "
                        "NAME-<data set>")
    p.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    p.add_argument("--stop-after-epoch", type=int, help="end this call after that epoch")
    p.add_argument("--no-export", action="store_true", help="do not write pretrained/")
    p.add_argument("--parallel", type=int, help="runs at once, one process each (default: "
                   "all of them on a GPU, one on the CPU)")
    p.add_argument("--budget", type=float, help="seconds of training: the runs are timed "
                   "side by side and each recipe's epochs cut to fit")
    p.add_argument("--measure-n", type=int, help="with --all: test images for clean and "
                   "PGD-20 accuracy (default: all 10,000)")
    p.add_argument("--archive", help="with --all: write the weights and cards to this .tar")
    p.add_argument("--time-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    p.add_argument("--barrier-count", type=int, default=1, help=argparse.SUPPRESS)


def _train(args: argparse.Namespace) -> dict:
    """Train zoo models (resumable); export finished ones to pretrained/."""
    import dataclasses
    from pathlib import Path

    from core.training import train
    names = list(train.ZOO) if args.all or not args.names else args.names
    cfgs = []
    for name in names:
        if name not in train.ZOO:
            raise RobustLensError(f"no zoo recipe {name!r}; known: {', '.join(train.ZOO)}")
        cfg = dataclasses.replace(train.ZOO[name], data_root=args.data, device=args.device)
        if args.data_set != "cifar10":
            if args.all:
                raise RobustLensError("--all measures the CIFAR-10 zoo; train another data "
                                      "set's models by name")
            cfg = dataclasses.replace(cfg, name=f"{name}-{args.data_set}",
                                      data_set=args.data_set)
        if args.epochs:
            cfg.epochs = args.epochs
        if args.subset:
            cfg.subset = args.subset
        cfgs.append(cfg)
    if args.time_steps:  # a child of train_parallel timing its steps
        barrier = (Path(args.barrier), args.barrier_count) if args.barrier else None
        print(json.dumps(train.seconds_per_step(cfgs[0], args.time_steps, args.time_steps // 3,
                                                barrier)), flush=True)
        return None
    from core.models.probe import pick_device
    parallel = args.parallel or (len(cfgs) if pick_device(args.device).type == "cuda" else 1)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    if parallel > 1 or args.budget:
        epochs = {}
        for s in range(0, len(cfgs), parallel):
            epochs |= train.train_parallel(cfgs[s:s + parallel], args.budget, log,
                                           timing_steps=int(os.environ.get(
                                               "ROBUSTLENS_TIMING_STEPS", 30)))
        cfgs = [dataclasses.replace(c, epochs=epochs[c.name]) for c in cfgs]
    else:
        for cfg in cfgs:
            train.train(cfg, stop_after_epoch=args.stop_after_epoch)
    out: dict = {"train_wall_s": round(time.time() - t0, 1), "exported": {}}
    if args.no_export:
        return out
    caps = {c.name: train.ZOO[c.name].epochs for c in cfgs}
    for cfg in cfgs:
        if train.load_run(cfg).card["training"]["complete"]:
            out["exported"][cfg.name] = _export_run(
                cfg, {"budget_s": args.budget, "epochs_cap": caps[cfg.name]} if args.budget else {})
    if args.all:
        out["measured"] = _measure_parallel(list(out["exported"]), args, parallel, log)
        if args.archive:
            out["archive"] = _archive(list(out["exported"]), args.archive)
    return out


def _measure_parallel(names: list[str], args: argparse.Namespace, parallel: int, log) -> dict:
    """Clean, PGD-20 and strong-attack accuracy of exported models, written to their
    cards; several at once, one process each."""
    from core.training import train
    from core.models import zoo
    extra = (["-n", str(args.measure_n)] if args.measure_n else []) + (
        ["--data", args.data] if args.data else []) + (
        ["--device", args.device] if args.device else [])
    for s in range(0, len(names), parallel):
        train.run_children({n: ["eval", n, "--write", "--strong", *extra]
                            for n in names[s:s + parallel]}, log)
    return {n: zoo.card(n)["measured"] for n in names}


def _archive(names: list[str], path: str) -> str:
    """One .tar of the models' weights and cards (what a GPU run hands back)."""
    import tarfile

    from core.models import zoo
    with tarfile.open(path, "w") as tar:
        for n in names:
            for suffix in (".safetensors", ".json"):
                tar.add(zoo.PRETRAINED / f"{n}{suffix}", arcname=f"pretrained/{n}{suffix}")
    return path


def _export_run(cfg, training_extra: dict | None = None) -> str:
    from core.training import train
    from core.models import zoo
    probe = train.load_run(cfg)
    probe.card["training"].update(training_extra or {})
    return str(zoo.export(probe, cfg.name, fresh=True))


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="zoo runs to export (default: all finished)")


def _export(args: argparse.Namespace) -> dict:
    """Write finished training runs to pretrained/ (fp16 safetensors + card)."""
    from core.training import train
    out = {}
    for name in args.names or list(train.ZOO):
        if name not in train.ZOO:
            raise RobustLensError(f"no zoo recipe {name!r}")
        if (train.run_dir(name) / "last.pt").exists():
            out[name] = _export_run(train.ZOO[name])
    return out


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="shipped models (default: all)")
    p.add_argument("-n", type=int, default=None, help="first n test images of a fixed "
                   "shuffle (default: the whole test set)")
    p.add_argument("--write", action="store_true", help="store the numbers in the cards")
    p.add_argument("--strong", action="store_true", help="also APGD-CE and APGD-DLR "
                   "(AutoAttack's code) at the model's own eps on 1,000 images, and PGD-20 "
                   "at 4x eps")
    p.add_argument("--unforeseen", action="store_true", help="only the accuracy under the "
                   "unforeseen attacks (snow, Gabor, JPEG) on 1,000 images (-n: fewer), added "
                   "to the cards' measured numbers with --write")
    p.add_argument("--data", help="CIFAR-10 root")
    p.add_argument("--device")


def _eval(args: argparse.Namespace) -> dict:
    """Measure clean and PGD-20 accuracy of shipped models (optionally into their cards)."""
    from core.training import evaluation
    from core.models import zoo
    out = {}
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    for name in args.names or zoo.names():
        if args.unforeseen:
            out[name] = evaluation.unforeseen_robustness(
                name, min(args.n or evaluation.STRONG_N, evaluation.STRONG_N), args.data,
                args.device, args.write, log)
            continue
        out[name] = evaluation.measure(name, n=args.n, root=args.data, device=args.device,
                                       write=args.write, strong=args.strong, log=log)
    return out


def _data_args(p: argparse.ArgumentParser) -> None:
    from core.data import datasets
    p.add_argument("--set", default="cifar10", choices=datasets.NAMES,
                   help="which data set (the stitching paper's others: 32 px, MNIST-like "
                        "sets with one channel)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--download", action="store_true",
                   help="download the official CIFAR-10 batches (torchvision; internet)")
    g.add_argument("--from", dest="source", help="a cifar-10-batches-py folder, an "
                   "ImageFolder tree or a .tar.gz of one, copied/extracted to the cache")


def _data(args: argparse.Namespace) -> dict:
    """Get CIFAR-10 (or --set another data set) into the cache folder, or say where it
    is found."""
    import shutil
    from pathlib import Path

    from core import data
    from core.data import datasets
    if args.set != "cifar10":
        if args.download or args.source:
            return datasets.fetch(args.set, Path(args.source).expanduser() if args.source
                                  else None)
        found = {}
        for split in ("train", "test"):
            try:
                ds = datasets.load(args.set, split)
                found[split] = {"images": len(ds), "source": ds.source}
            except data.DataNotFoundError as e:
                found[split] = str(e)
        return found
    if args.download:
        data.download_cifar10()
    elif args.source:
        src = Path(args.source).expanduser()
        if not src.exists():
            raise RobustLensError(f"{src} does not exist")
        if src.is_file():
            data.extract_archive(src)
        else:
            kind, path = data.locate_cifar10("test", src)
            dest = data.cache_dir() / "data" / (path.name if kind == "batches" else "cifar10-jpeg")
            if not dest.exists():
                shutil.copytree(path if kind == "batches" else path.parent, dest)
    found = {}
    for split in ("train", "test"):
        try:
            ds = data.cifar10(split)
            found[split] = {"images": len(ds), "source": ds.source}
        except data.DataNotFoundError as e:
            found[split] = str(e)
    return found


def _precompute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("deck", nargs="?", help="a talk deck (YAML or JSON), e.g. "
                   "assets/decks/three-papers.yaml")
    p.add_argument("--ship-list", action="store_true", help="every view of core.shiplist "
                   "(what the app shows offline), the shipped decks included")
    p.add_argument("--device")
    p.add_argument("--to-assets", action="store_true",
                   help="also copy the results into assets/results (shipped, precomputed)")
    p.add_argument("--prune", action="store_true",
                   help="with --to-assets: delete shipped results that neither this deck nor "
                        "any page's default view shows (older recipes, older versions of a "
                        "job kind)")
    _ray_arg(p)


def _ray_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", metavar="local|ADDRESS", help="run the jobs as Ray tasks: 'local' "
                   "starts Ray on this machine, an address (HOST:6379, ray://HOST:10001) joins "
                   "a cluster; without it they run in this process")


def _model_made_only(value):
    """assets/ holds numbers and model-made images only: an optimisation that starts
    from a data-set image (feature addition, interpolation) ships without its step-0
    frame, which is that image (or a pixel blend of two)."""
    if isinstance(value, dict) and isinstance(value.get("frames"), list):
        if (value.get("settings") or {}).get("seed") != "noise":
            value = {**value, "frames": [f for f in value["frames"] if f[0] != 0]}
    return value


def _precompute(args: argparse.Namespace) -> dict:
    """Compute and store everything the views of a talk deck (or the ship list) show."""
    from core import jobs, views
    from core.views import shiplist
    from core.jobs import sweep
    from core.jobs.results import default_store
    if args.ship_list:
        wanted = [{"page": p, "params": q, "title": f"{p or 'home'} {q}"}
                  for p, q in shiplist.ship_list()]
        title = "ship list"
    elif args.deck:
        try:
            deck = views.load_deck(args.deck)
        except OSError as e:
            raise RobustLensError(f"cannot read the deck {args.deck}: {e.strerror}") from e
        except ValueError as e:
            raise RobustLensError(str(e)) from e
        wanted, title = deck["views"], deck.get("title")
    else:
        raise RobustLensError("name a deck, or give --ship-list")
    load = zoo.loader(args.device)
    summary, failed, planned = [], [], {}
    for i, view in enumerate(wanted, 1):
        try:
            view_jobs = views.view_jobs(load, view["page"], view["params"])
        except (RobustLensError, ValueError) as e:
            failed.append(f"view {i} ({view['title']}): {e}")
            continue
        planned.update({job.key: (i, view, job) for job in view_jobs})
        summary.append({"view": i, "title": view["title"], "jobs": len(view_jobs)})
    on_ray = getattr(args, "ray", None)
    if on_ray:    # the same jobs as Ray tasks, their results stored here
        failed += sweep.execute([job for _, _, job in planned.values()], load, on_ray).failed
    for i, view, job in planned.values():
        if on_ray and not default_store().has(job.kind, job.inputs):
            continue            # it failed on Ray (reported above): not run again here
        try:
            run_printed(job)    # from the store after a Ray run, computed here otherwise
        except RobustLensError as e:
            failed.append(f"view {i} ({view['title']}): {e}")
            continue
        if args.to_assets and jobs.kinds()[job.kind].shipped:
            default_store().export_asset(job.kind, job.inputs, scrub=_model_made_only)
    if failed:
        raise RobustLensError("some views could not be computed:\n" + "\n".join(failed))
    out = {"deck": title, "views": len(summary)}
    if args.to_assets and getattr(args, "prune", False):
        out["pruned"] = _prune_assets(load, [(v["page"], v["params"]) for v in wanted])
    return out


def _prune_assets(load: Callable, wanted: list[tuple[str, dict]]) -> int:
    """Delete assets/results entries that no wanted view, no shipped deck, no ship-list
    view and no page default shows (stale keys of older recipes or versions)."""
    from core.views import shiplist
    from core import views
    from core.jobs.results import default_store
    wanted = wanted + shiplist.ship_list() + [(page, {}) for page in views.PAGES]
    keep = set()
    for page, params in wanted:
        try:
            keep.update(j.key for j in views.view_jobs(load, page, params))
        except (RobustLensError, ValueError):
            continue  # a view this zoo cannot show keeps nothing
    folder = default_store().assets
    removed = 0
    for path in sorted(folder.glob("*.json")) if folder and folder.is_dir() else []:
        if path.stem not in keep:
            path.unlink()
            path.with_suffix(".safetensors").unlink(missing_ok=True)
            path.with_suffix(".inputs").unlink(missing_ok=True)
            removed += 1
    return removed


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a sweep spec (YAML): models and a grid per analysis "
                   "(see core/sweep.py)")
    _ray_arg(p)
    p.add_argument("--yes", action="store_true", help="start a grid larger than its max_jobs")
    p.add_argument("--device", help="in this process: cuda, mps or cpu (default: best)")


def _sweep(args: argparse.Namespace) -> dict:
    """Expand a sweep spec into the app's jobs and compute those not yet stored."""
    from core.jobs import sweep
    spec = sweep.load_spec(args.spec)
    load = zoo.loader(args.device if not args.ray else "cpu")
    planned = sweep.expand(spec, load)
    sweep.check_size(planned, spec, args.yes)
    out = sweep.execute(planned, load, args.ray)
    if out.failed:
        raise RobustLensError(f"{len(out.failed)} of {out.planned} jobs failed (the others are "
                              "stored; run the sweep again to retry them):\n"
                              + "\n".join(out.failed))
    return out.to_dict()


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["merge"], help="merge: bring another store's results here")
    p.add_argument("other", help="another results store (results.sqlite of a sweep elsewhere)")


def _store(args: argparse.Namespace) -> dict:
    """Merge another results store into this one (the app's)."""
    from core import jobs
    from core.jobs.results import default_store
    store = default_store()
    counts = store.merge(args.other, jobs.is_current)
    return {"store": str(store.path), **counts,
            "note": "on a clash the value here was kept; 'skipped': older versions of a "
                    "job kind, or rows whose key does not match their inputs"}


def _operator_link_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://localhost:8501",
                   help="the server's address as you open it (default: %(default)s)")


def _operator_link(args: argparse.Namespace) -> dict:
    """The operator's link to a shared server: open it to have every right of a local
    server and a compute lane of your own (the key is in the cache folder)."""
    from core.server import access
    return {"link": access.operator_link(args.url),
            "note": "keep it to yourself: whoever opens it has the operator's rights"}


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], object]]] = {
    "train": (_train_args, _train),
    "export": (_export_args, _export),
    "eval": (_eval_args, _eval),
    "data": (_data_args, _data),
    "precompute": (_precompute_args, _precompute),
    "sweep": (_sweep_args, _sweep),
    "store": (_store_args, _store),
    "operator-link": (_operator_link_args, _operator_link),
    # each analysis's own (core.analyses): cka, stitch, invert, ...
    **{c.name: (c.arguments, c.run) for c in analyses.commands()},
}
