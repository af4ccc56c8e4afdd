"""Progress: one event for every long computation, read by the app, the CLI and the benchmarks.

A computation takes `progress`, a function of one Event (or None), and reports
through `report`: how far it is (done of total, in its own unit: images, steps,
cells), a line of text, and for optimisations the current loss and, on frame
steps, a preview of the images. A callback may raise to cancel a computation.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

import torch


@dataclass(frozen=True)
class Event:
    done: float
    total: float
    text: str = ""
    loss: float | None = None
    preview: torch.Tensor | None = None   # images (N, 3, H, W) on frame steps

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0


Reporter = Callable[[Event], None]


def report(progress: Reporter | None, done: float, total: float, text: str = "",
           loss: float | None = None, preview: torch.Tensor | None = None) -> None:
    """Send an Event to `progress` when there is one."""
    if progress is not None:
        progress(Event(done, total, text, loss, preview))


def span(progress: Reporter | None, start: float, width: float, total: float = 1.0,
         prefix: str = "") -> Reporter | None:
    """A reporter for a part of a computation: its events fill [start, start + width]
    of the whole (of size `total`), their text prefixed."""
    if progress is None:
        return None

    def part(e: Event) -> None:
        progress(Event(start + width * e.fraction, total, prefix + e.text, e.loss, e.preview))
    return part


def printer(label: str, stream: TextIO | None = None) -> Reporter:
    """One self-overwriting line per event on stderr: percent, text, seconds (CLI, benchmarks)."""
    t0 = time.time()

    def show(e: Event) -> None:
        text = e.text or (f"loss {e.loss:.4f}" if e.loss is not None else "")
        print(f"\r{label[:60]}: {e.fraction:6.1%} {text[:50]:50s} {time.time() - t0:6.0f} s",
              end="", file=stream or sys.stderr, flush=True)
    return show
