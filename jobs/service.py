"""Jobs as the web sees them: submit (store the checked request, write the state, queue a message), read, cancel.

Also the few writes the web and the worker share: expiring a job, giving up on one whose worker was
lost, and queueing a finished job's webhook.
"""

from __future__ import annotations

import hashlib
import hmac
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
from jobs.states import CANCELLED, EXPIRED, FAILED, PARTIAL, QUEUED, RUNNING, TERMINAL, JobQueue, JobTable, When
from web.idempotency import IdempotencyKeys

log = logging.getLogger("ai_image_generator.jobs")
REQUEST_FOLDER = ".jobs"  # hidden: the image route never serves a dot segment
REQUEST_KIND = "job-request"  # the store's tag for these documents, which a retention rule expires
SECRET_KEY = ".signing/webhook-secret"


def run_message(job_id: str) -> str:
    """The queue message that asks a worker to run a job."""
    return json.dumps({"type": "run", "job_id": job_id})


def webhook_message(job_id: str, attempt: int, not_before: float) -> str:
    """The queue message that asks a worker to send attempt `attempt` of a job's webhook."""
    return json.dumps({"type": "webhook", "job_id": job_id, "attempt": attempt, "not_before": not_before})


def lost_changes(job: dict, now: float) -> dict:
    """The writes that end a job whose worker was lost after calling the model: what it stored, kept."""
    stored = job.get("stored_images") or []
    error = {"code": "worker_lost", "status": 500,
             "detail": "the worker running this job stopped after its images were asked of the model; it is not "
                       f"run again, so nothing is paid for twice; {len(stored)} of {job['count']} images were "
                       "stored before it stopped and are listed in the manifest"}
    # The manifest's shape, with what is known: the images stored; why the rest are missing is `error`.
    manifest = {"images": [image["key"] for image in stored], "request_id": job["job_id"],
                "model_id": (stored[0].get("model_id") if stored else None) or job.get("model_id") or "",
                "image_details": stored, "errors": [], "timings_ms": {}}
    return {"state": PARTIAL if stored else FAILED, "updated_at": now, "finished_at": now, "lease_until": 0,
            "error": error, "manifest": manifest}


class JobService:
    """The job operations shared by the web routes and the worker."""

    def __init__(self, table: JobTable, queue: JobQueue, store, *, queue_seconds: int, retention_days: int,
                 lost_after_seconds: float = 150.0, webhook_secret: str = ""):
        self.table = table
        self.queue = queue
        self.store = store
        self.queue_seconds = queue_seconds
        self.retention_seconds = retention_days * 86400
        # A running job whose lease ended this long ago has no live worker: its deadline has passed too.
        self.lost_after_seconds = lost_after_seconds
        self.configured_secret = webhook_secret
        self._secret: str | None = None

    # -- submit -------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, kind: str, owner: str, webhook_url: str | None,
               submitted_request_id: str, idempotency: tuple[str, str] | None = None) -> tuple[dict, bool]:
        """Keep the checked request, write the job `queued`, then queue its message; (job, replayed).

        With `idempotency` = (Idempotency-Key, body fingerprint) the job's id is derived from the key
        (under the service's secret, so nobody can work it out from a guessed key), and a retried POST,
        to any web instance, finds the job the first one made instead of making another.
        """
        if idempotency is None:
            job_id = uuid.uuid4().hex
        else:
            IdempotencyKeys.check_key(idempotency[0])
            job_id = hmac.new(self.master_secret().encode(), f"job\0{owner}\0{idempotency[0]}".encode(),
                              hashlib.sha256).hexdigest()[:32]
            existing = self.table.get(job_id)
            if existing is not None:
                return self._replay(existing, idempotency[1]), True
        request_key = f"{REQUEST_FOLDER}/{job_id}.request.json"
        # The request goes to the store, not the message or the table: an edit's images can be
        # megabytes, more than an SQS message (256 KiB) or a DynamoDB item (400 KB) holds.
        document = encode_request(request)
        try:
            self.store.put_new(request_key, document, {"request-id": job_id},
                               content_type="application/json", kind=REQUEST_KIND)
        except KeyExists:
            # An earlier try with this Idempotency-Key stopped after keeping its request: the same one?
            if self.store.get(request_key) != document:
                raise IdempotencyMismatch("this Idempotency-Key was used with a different request body") from None
        now = time.time()
        job = {"job_id": job_id, "state": QUEUED, "kind": kind, "owner": owner, "created_at": now, "updated_at": now,
               "start_by": now + self.queue_seconds, "expires_at": int(now + self.retention_seconds),
               "request_key": request_key, "submitted_request_id": submitted_request_id, "attempts": 0,
               "output_folder": request.output_folder, "task": request.task, "count": request.count,
               "model_id": request.model_id, "paid": False, "unqueued": False, "stored_images": [],
               "webhook_url": webhook_url, "webhook_state": "pending" if webhook_url else "none",
               "webhook_attempts": [], "fingerprint": idempotency[1] if idempotency else None}
        try:
            self.table.create(job)
        except KeyExists:
            # Another instance made it a moment ago, for the same Idempotency-Key.
            return self._replay(self.table.get(job_id) or job, idempotency[1] if idempotency else ""), True
        self._queue(job)
        return job, False

    def _replay(self, job: dict, fingerprint: str) -> dict:
        """The job an Idempotency-Key made, if the body is the same; queued again in case its message was lost."""
        if job.get("fingerprint") != fingerprint:
            raise IdempotencyMismatch("this Idempotency-Key was used with a different request body")
        if job["state"] == FAILED and job.get("unqueued"):
            # The first try could not queue it (the queue was down): this retry queues it after all,
            # unless its end was already announced (a send that timed out may have got through).
            job = self.table.update(job["job_id"], {"state": QUEUED, "unqueued": False, "error": None,
                                                    "updated_at": time.time()},
                                    (When((FAILED,), equals=(("unqueued", True), ("webhook_state", "pending"))),
                                     When((FAILED,), equals=(("unqueued", True), ("webhook_state", "none"))))) or job
            if job["state"] == QUEUED:
                self._queue(job)
        elif job["state"] == QUEUED:
            # The first try may have stopped between writing the job and queueing it. A second message is
            # harmless: a worker claims a job conditionally, so only one delivery runs it. If this send
            # fails, the caller gets a 503 and the job stays as it is (its first message may be queued).
            self.queue.send(run_message(job["job_id"]))
        return job

    def _queue(self, job: dict) -> None:
        try:
            self.queue.send(run_message(job["job_id"]))
        except ServiceError:
            # Not queued, so never run: say so in the job rather than leave it waiting forever. A retry
            # with the same Idempotency-Key queues it again.
            self.table.update(job["job_id"], {"state": FAILED, "unqueued": True, "updated_at": time.time(),
                                              "error": {"code": "jobs_unavailable", "status": 503,
                                                        "detail": "the job could not be queued; nothing was made"}},
                              (When((QUEUED,)),))
            raise

    # -- read and cancel ----------------------------------------------------------------------------

    def get(self, job_id: str, owner: str | None) -> dict:
        """The job; JobNotFound unless it is the caller's. A job left behind (never started in time, or
        its worker long gone) is ended here, so no job shows `queued` or `running` forever."""
        job = self.table.get(job_id) if _plausible(job_id) else None
        if job is None or (owner is not None and job.get("owner") != owner):
            raise JobNotFound(f"no job {job_id!r}")
        now = time.time()
        if job["state"] == QUEUED and now > job["start_by"]:
            job = self.expire(job_id) or self.table.get(job_id) or job
        elif job["state"] == RUNNING and float(job.get("lease_until") or 0) < now - self.lost_after_seconds:
            ended = self.table.update(job_id, lost_changes(job, now),
                                      (When((RUNNING,), lease_ended_before=now - self.lost_after_seconds),))
            if ended is not None:
                log.warning("job %s: its worker was lost; ended %s", job_id, ended["state"])
                self.queue_webhook(ended)
            job = ended or self.table.get(job_id) or job
        return job

    def expire(self, job_id: str) -> dict | None:
        """Mark a queued job expired (conditionally) and queue its webhook; the new document, or None."""
        now = time.time()
        expired = self.table.update(job_id, {"state": EXPIRED, "updated_at": now, "finished_at": now, "error": {
            "code": "job_expired", "status": 410,
            "detail": "the job waited in the queue past its start-by time and was not run; nothing was made"}},
            (When((QUEUED,)),))
        if expired is not None:
            self.queue_webhook(expired)
        return expired

    def cancel(self, job_id: str, owner: str | None) -> dict:
        """Cancel a queued job (again: the same answer); JobNotCancellable once it has started or ended."""
        job = self.get(job_id, owner)
        if job["state"] == CANCELLED:
            return job  # a retried DELETE (nginx may send it on to another instance) is not a failure
        now = time.time()
        cancelled = self.table.update(job_id, {"state": CANCELLED, "updated_at": now, "finished_at": now},
                                      (When((QUEUED,)),))
        if cancelled is None:
            current = self.table.get(job_id) or job
            raise JobNotCancellable(f"job {job_id} is {current['state']}; only a queued job can be cancelled",
                                    state=current["state"])
        self.queue_webhook(cancelled)
        return cancelled

    # -- webhooks -----------------------------------------------------------------------------------

    def queue_webhook(self, job: dict) -> None:
        """Queue the first attempt of an ended job's webhook (a worker sends it), once."""
        if not job.get("webhook_url") or job["state"] not in TERMINAL or job.get("webhook_state") != "pending":
            return
        self.queue.send(webhook_message(job["job_id"], 1, time.time()))
        self.table.update(job["job_id"], {"webhook_state": "queued"},
                          (When(tuple(TERMINAL), equals=(("webhook_state", "pending"),)),))

    def master_secret(self) -> str:
        """The master webhook secret: the setting, else one made once and kept in the (shared) store."""
        if self.configured_secret:
            return self.configured_secret
        if self._secret is None:
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
            self._secret = stored.decode().strip()
        return self._secret


def _plausible(job_id: str) -> bool:
    # Ids are 32 hex digits; anything else is not looked up at all.
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
