"""Running jobs (core.jobs.Job) through the results store, for the CLI and the app.

- `stored`: a job's result if the store (or assets/) has it, computing nothing;
- `run`: the result, computed once per key (the store's locks) with progress,
  the jobs it needs first, each through the store as well;
- `run_side_by_side`: several optimisation jobs at once, one thread each, their
  progress events (with preview frames) handed to the caller's thread as they come.

Streamlit-free: ui.backend adds the app's parts (status widgets, one compute
queue per server, the out-of-memory fallback) around these.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from core.jobs import Job
from core.progress import Event, Reporter, span
from core.jobs.results import ResultStore, default_store


def stored(job: Job, store: ResultStore | None = None) -> Any | None:
    """The stored result of `job`, or None; nothing is computed."""
    return (store or default_store()).get(job.kind, job.inputs)


def run_printed(job: Job, force: bool = False) -> Any:
    """A job's result through the default store, its progress printed (the command line)."""
    import sys

    from core.progress import printer
    value, fresh = run(job, printer(job.label), force=force)
    print(("\n" if fresh else "") + f"{job.label}: {'computed' if fresh else 'from the store'}",
          file=sys.stderr)
    return value


def compute(job: Job, progress: Reporter | None = None, store: ResultStore | None = None) -> Any:
    """Compute `job` now (not its needs: those come from the store, or are computed
    and stored first). Its own result is not stored: `run` does that."""
    needs = list(job.needs.items())
    values = {}
    for i, (name, need) in enumerate(needs):
        values[name], _ = run(need, span(progress, i, 1, len(needs) + 1, f"{need.label}: "), store)
    return job.run(span(progress, len(needs), 1, len(needs) + 1) if needs else progress,
                   **values)


def run(job: Job, progress: Reporter | None = None, store: ResultStore | None = None,
        force: bool = False) -> tuple[Any, bool]:
    """(result, computed_now): from the store, or computed once with progress and
    stored. force=True drops the stored result first (not those of its needs)."""
    store = store or default_store()
    if force:
        store.delete(job.kind, job.inputs)
    return store.get_or_compute(job.kind, job.inputs, lambda: compute(job, progress, store))


def run_side_by_side(jobs: list[Job], show: Callable[[int, Event], None],
                     store: ResultStore | None = None) -> list[Any]:
    """The results of several jobs computed at once, a thread each; show(index,
    event) runs in the calling thread for every progress event, so a UI can draw
    frames as they arrive. Stored results come back at once; an error in any job
    is raised here once all have stopped."""
    store = store or default_store()
    results = [stored(j, store) for j in jobs]
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    events: queue.Queue = queue.Queue()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i], _ = run(jobs[i], lambda e: events.put((i, e)), store)
        except BaseException as e:  # noqa: BLE001 - raised in the calling thread below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in todo]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) or not events.empty():
        try:
            i, event = events.get(timeout=0.1)
        except queue.Empty:
            continue
        show(i, event)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
