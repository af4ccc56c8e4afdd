"""The heavy computations of one server, in two lanes: the operator's (every session of
a local server), one at a time as ever; and visitors', a few at once with a short queue
behind them, so that no visitor's job delays the operator and memory stays bounded."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from core.server.access import AccessError


class ServerBusyError(AccessError):
    """No room in the visitors' queue, or the session is computing already."""


class ComputeQueue:
    def __init__(self, visitor_jobs: int = 1, visitor_queue: int = 4) -> None:
        self.visitor_jobs, self.visitor_queue = visitor_jobs, visitor_queue
        self._operator = threading.Lock()
        self._visitors = threading.BoundedSemaphore(visitor_jobs)
        self._state = threading.Lock()
        self._waiting = 0
        self._sessions: set[str] = set()

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextlib.contextmanager
    def slot(self, session: str, visitor: bool,
             on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        """Hold a place in the session's lane while computing: one computation per
        session; a visitor's waits behind at most `visitor_queue` others or is refused.
        on_wait(runs ahead) is called once if it has to wait."""
        with self._state:
            if session in self._sessions:
                raise ServerBusyError("This session is computing already; its run must end "
                                      "before another starts.")
            self._sessions.add(session)
        try:
            lane = self._visitors if visitor else self._operator
            if not lane.acquire(blocking=False):
                with self._state:
                    if visitor and self._waiting >= self.visitor_queue:
                        raise ServerBusyError(
                            f"This shared server is busy: {self._waiting + self.visitor_jobs} "
                            "visitors' runs are ahead of yours. Try again in a minute.")
                    self._waiting += visitor
                    ahead = self._waiting
                if on_wait:
                    on_wait(ahead)
                try:
                    lane.acquire()
                finally:
                    with self._state:
                        self._waiting -= visitor
            try:
                yield
            finally:
                lane.release()
        finally:
            with self._state:
                self._sessions.discard(session)
