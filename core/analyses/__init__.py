"""The analyses: each module here is one slice that owns its computation, its job kinds
(how a job is built from plain settings, what it costs), its sweep grid, its command
line and its pages, and registers them with `register(Analysis(...))` at its end.

Everything that lists analyses (the CLI, sweeps, the ship list, the app's menu, the
time estimates) asks this registry; a new analysis is a new module here, its page
script in pages/ and its test. Modules are found by name: importing this package
imports every module in it.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from core.jobs import Job, Kind, Loader


@dataclass(frozen=True)
class Command:
    """A subcommand of `python -m core`: its arguments, and what it does (its
    docstring is its help line)."""
    name: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]


@dataclass(frozen=True)
class Sweep:
    """An entry of a sweep spec (its name in the YAML): expand(options, models, load)
    gives its grid's jobs; options is the entry's mapping ({} for `true`)."""
    name: str
    expand: Callable[[Mapping[str, Any], list[str], Loader], Sequence[Job]]


@dataclass(frozen=True)
class Page:
    """A page of the app: its script in pages/, its menu entry, title and texts, its
    settings (core.views.Setting, each declared once) and the jobs a view of it
    shows, view_jobs(load, settings) -> jobs (what precompute computes and the ship list
    ships)."""
    key: str                          # its URL path
    script: str
    title: str
    icon: str
    order: int                        # place in the menu
    settings: tuple
    view_jobs: Callable[[Loader, Mapping[str, Any]], list[Job]]
    summary: str = ""                 # what it shows, in a line (under its title, at home)
    # what a view looks up beside its jobs, shown when stored or on a click, never shipped
    # for every view (a clicked cell's calibration, a baseline, samples under an attack)
    view_extras: Callable[[Loader, Mapping[str, Any]], list[Job]] | None = None
    about: str = ""                   # how, in its About popover
    paper: str = ""                   # the work it shows, in full and in short
    cite: str = ""


@dataclass(frozen=True)
class Analysis:
    name: str
    kinds: Mapping[str, Kind] = field(default_factory=dict)
    commands: tuple[Command, ...] = ()
    sweeps: tuple[Sweep, ...] = ()
    pages: tuple[Page, ...] = ()


ANALYSES: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Called by each analysis module at its end: its kinds join core.jobs' registry."""
    from core import jobs
    ANALYSES[analysis.name] = analysis
    for name, kind in analysis.kinds.items():
        jobs.KINDS[name] = kind
    return analysis


def commands() -> list[Command]:
    return [c for a in ANALYSES.values() for c in a.commands]


def sweeps() -> list[Sweep]:
    return [g for a in ANALYSES.values() for g in a.sweeps]


def pages() -> list[Page]:
    return sorted((p for a in ANALYSES.values() for p in a.pages), key=lambda p: p.order)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
