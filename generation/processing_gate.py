"""Bounds how many images a process decodes, screens and stores at once; the earliest deadline goes first."""

from __future__ import annotations

import heapq
import itertools
import threading
from contextlib import contextmanager


class ProcessingGate:
    """A fair semaphore ordered by deadline.

    When many model answers arrive together (a burst of requests with the same latency), taking them
    all at once holds every image's copies in memory at the same time and finishes every request
    late; taking a few at a time, oldest request first, finishes requests one after another.
    """

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self._slots = slots
        self._busy = 0
        self._waiting: list[tuple[float, int, threading.Event]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, deadline: float):
        """Hold one slot for the block, after every waiter with an earlier deadline has had one."""
        with self._lock:
            if self._busy < self._slots:
                self._busy += 1
                turn = None
            else:
                turn = threading.Event()
                heapq.heappush(self._waiting, (deadline, next(self._order), turn))
        if turn is not None:
            # Woken by the holder that handed its slot over: only the one waiter it chose wakes,
            # so hundreds of waiters cost nothing while they wait.
            turn.wait()
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                _, _, turn = heapq.heappop(self._waiting)
                turn.set()  # the slot passes straight to the earliest deadline; busy stays the same
            else:
                self._busy -= 1

    @property
    def waiting(self) -> int:
        """Callers queued for a slot right now."""
        with self._lock:
            return len(self._waiting)

    @property
    def busy(self) -> int:
        """Slots held right now."""
        return self._busy
