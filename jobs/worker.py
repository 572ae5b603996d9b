"""The job worker: `python -m jobs.worker`. Long-polls the queue, claims each job conditionally, runs it, notifies.

Run as many as the load needs, on any hosts that share the store, queue and table. SIGTERM (systemd's
stop) lets running jobs finish and gives back any claimed job that has not started paying.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from generation.errors import DeadlineExceeded, ServiceError
from jobs import webhooks
from jobs.request_codec import decode_request
from jobs.service import JobService, webhook_message
from jobs.states import CANCELLED, EXPIRED, FAILED, PARTIAL, QUEUED, RUNNING, SUCCEEDED, TERMINAL, Message, When
from jobs.views import public_job
from web.logging_setup import work_id

log = logging.getLogger("ai_image_generator.worker")
# Failures that paid for nothing: the job goes back to the queue for a later attempt.
UNPAID_CODES = frozenset({"model_throttled", "model_busy"})
# How long a queue receive waits for a message: long enough to be cheap, short enough to stop promptly.
POLL_SECONDS = 10
PURGE_EVERY_SECONDS = 3600


class PoisonJob(Exception):
    """A job this worker cannot run at all (its request is missing or unreadable)."""


class JobRunner:
    """Handles one delivered message: a job to run or a webhook to retry."""

    def __init__(self, jobs: JobService, pipeline, *, worker_id: str, visibility_seconds: int,
                 webhook_secret: str, webhook_networks=(), webhook_retries=(), webhook_timeout: float = 10.0,
                 image_url=lambda key: f"/images/{key}"):
        self.jobs = jobs
        self.pipeline = pipeline
        self.worker_id = worker_id
        self.visibility_seconds = visibility_seconds
        self.webhook_secret = webhook_secret
        self.webhook_networks = webhook_networks
        self.webhook_retries = tuple(webhook_retries)
        self.webhook_timeout = webhook_timeout
        self.image_url = image_url
        self.stopping = threading.Event()
        # receipt -> job id of the jobs this worker holds, for the heartbeat
        self.held: dict[str, str] = {}
        self._held_lock = threading.Lock()

    @property
    def table(self):
        return self.jobs.table

    @property
    def queue(self):
        return self.jobs.queue

    def handle(self, message: Message) -> None:
        """Act on one delivery; never raises (a failure leaves the message to come back, or die)."""
        try:
            body = json.loads(message.body)
            kind, job_id = body["type"], body["job_id"]
        except (ValueError, KeyError, TypeError):
            # Not ours to read: left undeleted, it comes back until the redrive policy moves it aside.
            log.error("message is not a job message; left for the dead-letter queue: %.200r", message.body)
            self._back_off(message)
            return
        token = work_id.set(job_id)  # every log line of this job, in any thread, names it
        try:
            if kind == "webhook":
                self._retry_webhook(message, job_id, body)
            else:
                self._run(message, job_id)
        except Exception as error:  # noqa: BLE001 - one job's failure must not stop the worker
            log.exception("job %s: attempt %d failed", job_id, message.receive_count)
            self._attempt_failed(message, job_id, error)
        finally:
            work_id.reset(token)

    # -- running a job ------------------------------------------------------------------------------

    def _run(self, message: Message, job_id: str) -> None:
        job = self.table.get(job_id)
        if job is None or job["state"] in TERMINAL:
            # Gone (past retention) or ended: a repeated delivery of a finished job has nothing to do,
            # but a job a caller cancelled, or a GET found expired, still owes its webhook.
            self.queue.delete(message.receipt)
            if job is not None and job["state"] in (CANCELLED, EXPIRED) and job.get("webhook_state") == "pending":
                self.notify(job)
            return
        if job["state"] == QUEUED and time.time() > job["start_by"]:
            expired = self.jobs.expire(job_id)
            self.queue.delete(message.receipt)
            if expired is not None:
                self.notify(expired)
            return
        now = time.time()
        # Claimed conditionally: a second delivery of the message, to this worker or another, finds the
        # job running under a live lease and does nothing, so no image is paid for twice.
        claimed = self.table.update(job_id, {
            "state": RUNNING, "worker": self.worker_id, "lease_until": now + self.visibility_seconds,
            "updated_at": now, "started_at": job.get("started_at") or now, "attempts": int(job["attempts"]) + 1},
            (When((QUEUED,)), When((RUNNING,), lease_ended_before=now)))
        if claimed is None:
            current = self.table.get(job_id)
            if current is None or current["state"] in TERMINAL:
                self.queue.delete(message.receipt)
            else:
                # Another worker holds it: look again once its lease would have run out.
                wait = float(current.get("lease_until") or now) - now
                self.queue.set_visibility(message.receipt, max(1, int(wait) + 1))
            return
        if job.get("paid"):
            # An earlier attempt called the model and never finished (its worker died): again would pay twice.
            self._finish(message, job_id, FAILED, error={
                "code": "worker_lost", "status": 500,
                "detail": "an earlier attempt at this job stopped after its images were asked of the model; "
                          "it is not run again, so nothing is paid for twice; images it stored are listed in "
                          "the request record",
                "record": f"{job['output_folder']}/.requests/{job_id}.json"})
            return
        with self._holding(message, job_id):
            if self.stopping.is_set():
                self._release(message, job_id, delay=0)
                return
            request = self._load_request(claimed)
            if self.table.update(job_id, {"paid": True}, (When((RUNNING,), worker=self.worker_id),)) is None:
                log.warning("job %s: lost its claim before starting; left to its new holder", job_id)
                return
            self._run_pipeline(message, claimed, request)

    def _load_request(self, job: dict):
        raw = self.jobs.store.get(job["request_key"])
        if raw is None:
            raise PoisonJob(f"its request document {job['request_key']} is missing from the store")
        try:
            return decode_request(raw)
        except (ValueError, KeyError, TypeError) as error:
            raise PoisonJob(f"its request document cannot be read: {error}") from None

    def _run_pipeline(self, message: Message, job: dict, request) -> None:
        job_id = job["job_id"]
        try:
            result = self.pipeline.run(request, job_id)
        except DeadlineExceeded as error:
            state = PARTIAL if error.extra.get("images") else FAILED
            self._finish(message, job_id, state, error=_error_json(error))
            return
        except ServiceError as error:
            failed = error.result.failed if error.result is not None else []
            unpaid = failed and all(r.error.code in UNPAID_CODES for r in failed)
            if unpaid and message.receive_count < self.queue.max_receives:
                # Throttled or busy on every image: nothing was paid, so a later attempt costs nothing extra.
                self.table.update(job_id, {"paid": False, "last_error": _error_json(error)},
                                  (When((RUNNING,), worker=self.worker_id),))
                self._release(message, job_id, delay=_back_off_seconds(message.receive_count))
                return
            self._finish(message, job_id, FAILED, error=_error_json(error))
            return
        from web.manifest import render_manifest

        manifest = render_manifest(result, self.jobs.store, lambda key: "")
        self._finish(message, job_id, SUCCEEDED if not result.failed else PARTIAL, manifest=manifest)

    def _finish(self, message: Message, job_id: str, state: str, *, manifest: dict | None = None,
                error: dict | None = None) -> None:
        now = time.time()
        changes = {"state": state, "updated_at": now, "finished_at": now, "lease_until": 0}
        if manifest is not None:
            changes["manifest"] = manifest
        if error is not None:
            changes["error"] = error
        done = self.table.update(job_id, changes, (When((RUNNING,), worker=self.worker_id),))
        self.queue.delete(message.receipt)
        if done is None:
            log.error("job %s: ended %s but another worker holds it now; its state was not changed", job_id, state)
            return
        log.info("job %s: %s", job_id, state)
        self.notify(done)

    def _release(self, message: Message, job_id: str, delay: int) -> None:
        """Give a claimed job back to the queue, to be claimed again after `delay` seconds."""
        self.table.update(job_id, {"state": QUEUED, "worker": None, "lease_until": 0, "updated_at": time.time()},
                          (When((RUNNING,), worker=self.worker_id),))
        self.queue.set_visibility(message.receipt, delay)

    def _attempt_failed(self, message: Message, job_id: str, error: Exception) -> None:
        """An attempt broke: back off, or on the last delivery fail the job and let the message go dead."""
        reason = str(error) if isinstance(error, (PoisonJob, ServiceError)) else f"{type(error).__name__}: {error}"
        try:
            if message.receive_count >= self.queue.max_receives:
                now = time.time()
                failed = self.table.update(job_id, {
                    "state": FAILED, "updated_at": now, "finished_at": now, "lease_until": 0, "error": {
                        "code": "job_failed", "status": 500,
                        "detail": f"the job failed on each of its {message.receive_count} deliveries and its "
                                  f"message went to the dead-letter queue; last failure: {reason}"}},
                    (When((QUEUED,)), When((RUNNING,), worker=self.worker_id)))
                if failed is not None:
                    self.notify(failed)
            else:
                self.table.update(job_id, {"state": QUEUED, "worker": None, "lease_until": 0,
                                           "last_error": {"code": "attempt_failed", "detail": reason}},
                                  (When((RUNNING,), worker=self.worker_id),))
        except Exception:  # noqa: BLE001 - the table itself may be what failed
            log.exception("job %s: could not record the failed attempt", job_id)
        self._back_off(message)

    def _back_off(self, message: Message) -> None:
        """Hide a failed message for a growing while; after its last delivery, not at all.

        Left undeleted and visible after its last delivery, the next receive finds it past the redrive
        policy's count and the queue moves it to the dead-letter queue.
        """
        last = message.receive_count >= self.queue.max_receives
        try:
            self.queue.set_visibility(message.receipt, 0 if last else _back_off_seconds(message.receive_count))
        except Exception:  # noqa: BLE001 - it comes back when its visibility ends anyway
            log.exception("could not set a message's back-off")

    # -- holding: the heartbeat keeps the message hidden and the lease alive ------------------------

    @contextlib.contextmanager
    def _holding(self, message: Message, job_id: str):
        """While inside, the heartbeat keeps this job's message hidden and its lease alive."""
        with self._held_lock:
            self.held[message.receipt] = job_id
        try:
            yield
        finally:
            with self._held_lock:
                self.held.pop(message.receipt, None)

    def heartbeat(self) -> None:
        """Renew every held job's lease and its message's invisibility (called every third of it)."""
        with self._held_lock:
            held = list(self.held.items())
        for receipt, job_id in held:
            try:
                self.queue.set_visibility(receipt, self.visibility_seconds)
                self.table.update(job_id, {"lease_until": time.time() + self.visibility_seconds},
                                  (When((RUNNING,), worker=self.worker_id),))
            except Exception:  # noqa: BLE001 - the next beat tries again; the lease is longer than a beat
                log.exception("job %s: heartbeat failed", job_id)

    # -- webhooks -----------------------------------------------------------------------------------

    def notify(self, job: dict, attempt: int = 1) -> None:
        """Send the job's webhook (attempt `attempt`); on failure queue the next try, if any is left."""
        url = job.get("webhook_url")
        if not url:
            return
        view = public_job(job, self.jobs.store, self.image_url)
        payload = json.dumps({"type": f"job.{job['state']}", "timestamp": view.get("finished_at"),
                              "data": view}, ensure_ascii=False).encode()
        secret = webhooks.secret_for_owner(self.webhook_secret, job.get("owner") or "")
        outcome = webhooks.deliver(url, payload, secret, f"{job['job_id']}.{job['state']}",
                                   allowed_networks=self.webhook_networks, timeout=self.webhook_timeout)
        retries_left = len(self.webhook_retries) - (attempt - 1)
        if outcome.delivered():
            state = "delivered"
        elif retries_left > 0:
            state = "retrying"
            wait = self.webhook_retries[attempt - 1]
            self.queue.send(webhook_message(job["job_id"], attempt + 1, time.time() + wait),
                            delay_seconds=min(900, wait))
        else:
            state = "failed"
        self.table.update(job["job_id"], {"webhook_state": state}, (When(tuple(TERMINAL)),),
                          append={"webhook_attempts": [outcome.as_json()]})
        log.info("job %s: webhook attempt %d %s", job["job_id"], attempt, state)

    def _retry_webhook(self, message: Message, job_id: str, body: dict) -> None:
        remaining = float(body.get("not_before", 0)) - time.time()
        if remaining > 1:
            # SQS delays at most 15 minutes; a longer wait is served in steps.
            self.queue.set_visibility(message.receipt, int(min(remaining, 43200)))
            return
        job = self.table.get(job_id)
        if job is not None and job["state"] in TERMINAL and job.get("webhook_state") == "retrying" \
                and len(job.get("webhook_attempts") or []) == int(body["attempt"]) - 1:
            self.notify(job, int(body["attempt"]))
        self.queue.delete(message.receipt)


def _error_json(error: ServiceError) -> dict:
    from web.problems import image_error_json, status_of

    body = {"code": error.code, "status": status_of(error.code), "detail": error.detail, **error.extra}
    if error.result is not None:
        body["image_errors"] = [image_error_json(r) for r in error.result.failed]
    return body


def _back_off_seconds(receive_count: int) -> int:
    return min(300, 5 * 2 ** max(0, receive_count - 1))


class Worker:
    """The process: receives while it has free slots, runs each job on a thread, beats, stops gracefully."""

    def __init__(self, runner: JobRunner, slots: int, purge=None):
        self.runner = runner
        self.slots = slots
        self.purge = purge
        self._free = threading.Semaphore(slots)

    def run(self) -> None:
        """Work until SIGTERM/SIGINT (or `runner.stopping` is set); then let running jobs finish."""
        stopping = self.runner.stopping
        beat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        beat.start()
        purged_at = 0.0
        with ThreadPoolExecutor(self.slots, thread_name_prefix="job") as pool:
            while not stopping.is_set():
                if not self._free.acquire(timeout=1):
                    continue
                taken = 1
                while taken < min(self.slots, 10) and self._free.acquire(blocking=False):
                    taken += 1
                try:
                    messages = self.runner.queue.receive(taken, POLL_SECONDS, self.runner.visibility_seconds)
                except ServiceError as error:
                    log.warning("could not receive from the queue: %s", error.detail)
                    messages = []
                    stopping.wait(2)
                for _ in range(taken - len(messages)):
                    self._free.release()
                for message in messages:
                    pool.submit(self._handle, message)
                if self.purge is not None and time.monotonic() - purged_at > PURGE_EVERY_SECONDS:
                    purged_at = time.monotonic()
                    self.purge()
            log.info("stopping: waiting for running jobs to finish")
        log.info("stopped")

    def _handle(self, message: Message) -> None:
        try:
            self.runner.handle(message)
        finally:
            self._free.release()

    def _beat(self) -> None:
        every = max(1.0, self.runner.visibility_seconds / 3)
        while not self.runner.stopping.wait(every):
            self.runner.heartbeat()
        # Running jobs still finish after a stop: keep beating for them.
        while self.runner.held:
            self.runner.heartbeat()
            time.sleep(every)


def worker_id() -> str:
    """This process's name in the job table: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def main() -> None:
    """Build the worker from AIG_* settings and run it until SIGTERM."""
    from services import build_job_service, build_services
    from settings import Settings
    from web.logging_setup import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    services = build_services(settings)
    jobs = build_job_service(settings, services.store)
    public_base = settings.public_base_url.rstrip("/")
    runner = JobRunner(jobs, services.pipeline, worker_id=worker_id(),
                       visibility_seconds=settings.job_visibility_seconds,
                       webhook_secret=jobs.webhook_master_secret(settings.webhook_secret),
                       webhook_networks=settings.webhook_networks, webhook_retries=settings.webhook_retries,
                       webhook_timeout=settings.webhook_timeout_seconds,
                       image_url=lambda key: services.signer.url(public_base, key))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stopping.set())
    purge = getattr(jobs.table, "purge", None)
    log.info("worker %s: %d job slots on the %s queue", runner.worker_id, settings.worker_jobs, settings.jobs)
    Worker(runner, settings.worker_jobs, purge).run()


if __name__ == "__main__":
    main()
