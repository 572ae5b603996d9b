"""A job's states, the conditions its writes are made under, and the two storage protocols every backend keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, PARTIAL, FAILED, CANCELLED, EXPIRED = "succeeded", "partial", "failed", "cancelled", "expired"
STATES = (QUEUED, RUNNING, SUCCEEDED, PARTIAL, FAILED, CANCELLED, EXPIRED)
TERMINAL = frozenset({SUCCEEDED, PARTIAL, FAILED, CANCELLED, EXPIRED})


@dataclass(frozen=True)
class When:
    """One condition a conditional write may go ahead under; a write takes a list of them, any one enough."""

    states: tuple[str, ...]
    worker: str | None = None  # the job must be held by this worker
    lease_ended_before: float | None = None  # the job's lease must have ended before this epoch time
    equals: tuple[tuple[str, object], ...] = ()  # (field, value) pairs the job must have

    def holds(self, job: dict) -> bool:
        """Whether `job` (as stored) meets this condition."""
        if job.get("state") not in self.states:
            return False
        if self.worker is not None and job.get("worker") != self.worker:
            return False
        # A field a document lacks counts as False (a job written before the field existed).
        if any(job.get(name, False if value is False else None) != value for name, value in self.equals):
            return False
        return self.lease_ended_before is None or float(job.get("lease_until") or 0) < self.lease_ended_before


@dataclass(frozen=True)
class Message:
    """One delivery of a queue message."""

    body: str
    receipt: str  # what deletes it or changes its visibility; valid for this delivery only
    receive_count: int  # how many times it has been delivered, this one included


class JobTable(Protocol):
    """Job states: one document per job, every change a conditional write."""

    def create(self, job: dict) -> None:
        """Write a new job; KeyExists when its id is taken."""

    def get(self, job_id: str) -> dict | None:
        """The job's document, or None."""

    def update(self, job_id: str, changes: dict, when: tuple[When, ...], append: dict | None = None) -> dict | None:
        """Set `changes` (and append to lists in `append`) if any of `when` holds; the new document, else None."""

    def check(self) -> None:
        """Raise if the table cannot be reached."""


class JobQueue(Protocol):
    """An at-least-once queue with a dead-letter queue: SQS, or SQLite offline."""

    max_receives: int  # deliveries before a message moves to the dead-letter queue

    def send(self, body: str, delay_seconds: int = 0) -> None:
        """Queue a message, hidden for `delay_seconds` (at most 900)."""

    def receive(self, max_messages: int, wait_seconds: float, visibility_seconds: int) -> list[Message]:
        """Up to `max_messages`, waiting up to `wait_seconds` for the first; each hidden for `visibility_seconds`."""

    def delete(self, receipt: str) -> None:
        """Remove a delivered message for good."""

    def set_visibility(self, receipt: str, seconds: int) -> None:
        """Hide a delivered message for `seconds` more from now (0: deliver again at once)."""

    def check(self) -> None:
        """Raise if the queue cannot be reached."""
