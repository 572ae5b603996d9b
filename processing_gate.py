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
        self._waiting: list[tuple[float, int]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    @contextmanager
    def slot(self, deadline: float):
        """Hold one slot for the block, after every waiter with an earlier deadline has had one."""
        ticket = (deadline, next(self._order))
        with self._changed:
            heapq.heappush(self._waiting, ticket)
            while self._busy >= self._slots or self._waiting[0] != ticket:
                self._changed.wait()
            heapq.heappop(self._waiting)
            self._busy += 1
            # The next in line may fit too: let it look.
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()

    @property
    def busy(self) -> int:
        """Slots held right now."""
        return self._busy
