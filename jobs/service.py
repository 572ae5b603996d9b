"""Jobs as the web sees them: submit (store the checked request, write the state, queue a message), read, cancel."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid

from generation.errors import (
    IdempotencyMismatch,
    JobNotCancellable,
    JobNotFound,
    JobsUnavailable,
    KeyExists,
    ServiceError,
)
from image_generation import GenerationRequest
from jobs.request_codec import encode_request
from jobs.states import CANCELLED, EXPIRED, QUEUED, JobQueue, JobTable, When
from web.idempotency import IdempotencyKeys

log = logging.getLogger("ai_image_generator.jobs")
REQUEST_FOLDER = ".jobs"  # hidden: the image route never serves a dot segment
REQUEST_KIND = "job-request"  # the store's tag for these documents, which a retention rule expires
SECRET_KEY = ".signing/webhook-secret"


def run_message(job_id: str) -> str:
    """The queue message that asks a worker to run a job."""
    return json.dumps({"type": "run", "job_id": job_id})


def webhook_message(job_id: str, attempt: int, not_before: float) -> str:
    """The queue message that asks a worker to try a job's webhook again."""
    return json.dumps({"type": "webhook", "job_id": job_id, "attempt": attempt, "not_before": not_before})


class JobService:
    """The job operations shared by the web routes and the worker."""

    def __init__(self, table: JobTable, queue: JobQueue, store, *, queue_seconds: int, retention_days: int):
        self.table = table
        self.queue = queue
        self.store = store
        self.queue_seconds = queue_seconds
        self.retention_seconds = retention_days * 86400

    def submit(self, request: GenerationRequest, *, kind: str, owner: str, webhook_url: str | None,
               submitted_request_id: str, idempotency: tuple[str, str] | None = None) -> tuple[dict, bool]:
        """Keep the checked request, write the job `queued`, then queue its message; (job, replayed).

        With `idempotency` = (Idempotency-Key, body fingerprint) the job's id is derived from the key,
        so a retried POST, to any web instance, finds the job the first one made instead of making another.
        """
        if idempotency is None:
            job_id = uuid.uuid4().hex
        else:
            IdempotencyKeys.check_key(idempotency[0])
            job_id = hashlib.sha256(f"job\0{owner}\0{idempotency[0]}".encode()).hexdigest()[:32]
            existing = self.table.get(job_id)
            if existing is not None:
                return self._replay(existing, idempotency[1]), True
        request_key = f"{REQUEST_FOLDER}/{job_id}.request.json"
        # The request goes to the store, not the message or the table: an edit's images can be
        # megabytes, more than an SQS message (256 KiB) or a DynamoDB item (400 KB) holds.
        try:
            self.store.put_new(request_key, encode_request(request), {"request-id": job_id},
                               content_type="application/json", kind=REQUEST_KIND)
        except KeyExists:
            pass  # an earlier try with this Idempotency-Key stopped after keeping the same request
        now = time.time()
        job = {"job_id": job_id, "state": QUEUED, "kind": kind, "owner": owner, "created_at": now, "updated_at": now,
               "start_by": now + self.queue_seconds, "expires_at": int(now + self.retention_seconds),
               "request_key": request_key, "submitted_request_id": submitted_request_id, "attempts": 0,
               "output_folder": request.output_folder, "task": request.task, "count": request.count,
               "model_id": request.model_id, "webhook_url": webhook_url,
               "webhook_state": "pending" if webhook_url else "none", "webhook_attempts": [],
               "fingerprint": idempotency[1] if idempotency else None}
        try:
            self.table.create(job)
        except KeyExists:
            # Another instance made it a moment ago, for the same Idempotency-Key.
            return self._replay(self.table.get(job_id) or job, idempotency[1] if idempotency else ""), True
        self._queue(job_id)
        return job, False

    def _replay(self, job: dict, fingerprint: str) -> dict:
        """The job an Idempotency-Key made, if the body is the same; queued again in case its message was lost."""
        if job.get("fingerprint") != fingerprint:
            raise IdempotencyMismatch("this Idempotency-Key was used with a different request body")
        if job["state"] == QUEUED:
            # The first try may have stopped between writing the job and queueing it. A second message is
            # harmless: a worker claims a job conditionally, so only one delivery runs it.
            self._queue(job["job_id"])
        return job

    def _queue(self, job_id: str) -> None:
        try:
            self.queue.send(run_message(job_id))
        except ServiceError:
            # Not queued, so never run: say so in the job rather than leave it waiting forever.
            self.table.update(job_id, {"state": "failed", "updated_at": time.time(),
                                       "error": {"code": "jobs_unavailable", "status": 503,
                                                 "detail": "the job could not be queued; nothing was made"}},
                              (When((QUEUED,)),))
            raise

    def get(self, job_id: str, owner: str | None) -> dict:
        """The job (shown `expired` once it waited past its start-by time); JobNotFound unless it is the caller's."""
        job = self.table.get(job_id) if _plausible(job_id) else None
        if job is None or (owner is not None and job.get("owner") != owner):
            raise JobNotFound(f"no job {job_id!r}")
        if job["state"] == QUEUED and time.time() > job["start_by"]:
            job = self.expire(job_id) or self.table.get(job_id) or job
        return job

    def expire(self, job_id: str) -> dict | None:
        """Mark a queued job expired (conditionally); the new document, or None if it was no longer queued."""
        now = time.time()
        return self.table.update(job_id, {"state": EXPIRED, "updated_at": now, "finished_at": now, "error": {
            "code": "job_expired", "status": 410,
            "detail": "the job waited in the queue past its start-by time and was not run; nothing was made"}},
            (When((QUEUED,)),))

    def cancel(self, job_id: str, owner: str | None) -> dict:
        """Cancel a queued job; JobNotCancellable once it has started or ended."""
        job = self.get(job_id, owner)
        now = time.time()
        cancelled = self.table.update(job_id, {"state": CANCELLED, "updated_at": now, "finished_at": now},
                                      (When((QUEUED,)),))
        if cancelled is None:
            current = self.table.get(job_id) or job
            raise JobNotCancellable(f"job {job_id} is {current['state']}; only a queued job can be cancelled",
                                    state=current["state"])
        return cancelled

    def webhook_master_secret(self, configured: str) -> str:
        """The master webhook secret: the setting, else one made once and kept in the (shared) store."""
        if configured:
            return configured
        stored = self.store.get(SECRET_KEY)
        if stored is None:
            from jobs.webhooks import new_secret

            try:
                self.store.put_new(SECRET_KEY, new_secret().encode(), {}, content_type="text/plain")
            except KeyExists:
                pass  # another process made it first: use theirs
            stored = self.store.get(SECRET_KEY)
        if stored is None:
            raise JobsUnavailable("the webhook secret could not be kept in the store")
        return stored.decode().strip()


def _plausible(job_id: str) -> bool:
    # Ids are 32 hex digits; anything else is not looked up at all.
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
