"""RobustLens' backend, importable and testable without Streamlit.

    data/       image sources: CIFAR-10, image folders, shipped samples, uploads (images)
    models/     what a model is and where it comes from: archs, probe (taps), zoo (load)
    analyses/   one module per analysis, each owning its computation, its job kinds,
                their cost, its sweep grid and its command line: attacks, cka,
                stitching, inversion (and its relatives), ...
    jobs/       a result as a job (Job, the kinds' registry), the results store,
                running jobs, sweeps
    views/      the pages' settings, what each view computes, decks, the ship list
    figures/    plotly figures and exported files
    server/     who may do what on a shared server, and its compute queue
    training/   training and measuring the shipped zoo

The names of the flat layout before (core.zoo, core.cka, core.results, ...) stay
importable: each is the same module object as its new home.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent     # the checkout: assets/, pretrained/

# the flat layout's module names -> their homes (public API: DESIGN.md)
MOVED = {
    "images": "data.images", "archs": "models.archs", "probe": "models.probe",
    "zoo": "models.zoo", "attacks": "analyses.attacks", "cka": "analyses.cka",
    "stitching": "analyses.stitching", "inversion": "analyses.inversion",
    "runner": "jobs.runner", "results": "jobs.results", "sweep": "jobs.sweep",
    "train": "training.train", "evaluation": "training.evaluation",
    "access": "server.access", "compute_queue": "server.compute_queue",
    "shiplist": "views.shiplist", "exports": "figures.exports",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import core.zoo` gives core.models.zoo itself (one module, two names)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Alias())


def __getattr__(name: str):
    """`from core import zoo`: the module at its home."""
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
