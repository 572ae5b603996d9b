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
from jobs.service import JobService, lost_changes, run_message, webhook_message
from jobs.states import FAILED, PARTIAL, QUEUED, RUNNING, SUCCEEDED, TERMINAL, Message, When
from jobs.views import public_job
from web.logging_setup import work_id
from web.problems import error_json

log = logging.getLogger("ai_image_generator.worker")
# Failures that paid for nothing: the job goes back to the queue for a later attempt.
UNPAID_CODES = frozenset({"model_throttled", "model_busy"})
# How long a queue receive waits for a message: long enough to be cheap (an idle worker asks SQS
# 17,000 times a day), short enough that a stop is not held up by a long poll.
POLL_SECONDS = 5
PURGE_EVERY_SECONDS = 3600
# SQS refuses to hide a message for more than 12 hours from when it was received; a little less.
MAX_HIDE_SECONDS = 43000
# Heartbeats renew this many held jobs at once, so one slow call does not starve the others' leases.
HEARTBEAT_THREADS = 8


class PoisonJob(Exception):
    """A job this worker cannot run at all (its request is missing or unreadable)."""


class JobRunner:
    """Handles one delivered message: a job to run or a webhook to send."""

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
        self._beats = ThreadPoolExecutor(HEARTBEAT_THREADS, thread_name_prefix="heartbeat")

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
                self._send_webhook(message, job_id, int(body["attempt"]), float(body.get("not_before", 0)))
            else:
                self._run(message, job_id)
        except Exception as error:  # noqa: BLE001 - one job's failure must not stop the worker
            log.exception("job %s: %s message, delivery %d, failed", job_id, kind, message.receive_count)
            if kind == "webhook":
                self._back_off(message)  # the job's own state is not this message's business
            else:
                self._attempt_failed(message, job_id, error)
        finally:
            work_id.reset(token)

    # -- running a job ------------------------------------------------------------------------------

    def _run(self, message: Message, job_id: str) -> None:
        job = self.table.get(job_id)
        if job is None or job["state"] in TERMINAL:
            # Gone (past retention) or ended: a repeated delivery has nothing to run, but an ended job
            # whose webhook was never queued (its worker stopped just then) gets it queued now.
            if job is not None:
                self.jobs.queue_webhook(job)
            self.queue.delete(message.receipt)
            return
        if job["state"] == QUEUED and time.time() > job["start_by"]:
            self.jobs.expire(job_id)
            self.queue.delete(message.receipt)
            return
        now = time.time()
        # Claimed conditionally: a second delivery of the message, to this worker or another, finds the
        # job running under a live lease and does nothing. A job whose worker called the model is taken
        # only once that worker is surely gone (its deadline too has passed), and then only to end it.
        claimed = self.table.update(job_id, {
            "state": RUNNING, "worker": self.worker_id, "lease_until": now + self.visibility_seconds,
            "updated_at": now, "started_at": job.get("started_at") or now, "attempts": int(job["attempts"]) + 1},
            (When((QUEUED,)), When((RUNNING,), lease_ended_before=now, equals=(("paid", False),)),
             When((RUNNING,), lease_ended_before=now - self.jobs.lost_after_seconds)))
        if claimed is None:
            current = self.table.get(job_id)
            if current is None or current["state"] in TERMINAL:
                self.queue.delete(message.receipt)
            else:
                # Another worker holds it: look again once its lease (and, if it paid, its grace) has run out.
                lease_end = float(current.get("lease_until") or now)
                if current.get("paid"):
                    lease_end += self.jobs.lost_after_seconds
                self._later(message, run_message(job_id), lease_end - now + 1)
            return
        if claimed.get("paid"):
            # An earlier attempt called the model and its worker is gone: running it again would pay twice.
            self._finish(message, job_id, **_split(lost_changes(claimed, time.time())))
            return
        with self._holding(message, job_id):
            if self.stopping.is_set():
                self._release(message, job_id, delay=0)
                return
            request = self._load_request(claimed)
            paid = self.table.update(job_id, {"paid": True},
                                     (When((RUNNING,), worker=self.worker_id, equals=(("paid", False),)),))
            if paid is None:
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
            result = self.pipeline.run(request, job_id, on_stored=lambda image: self._stored(job_id, image))
        except DeadlineExceeded as error:
            state = PARTIAL if error.extra.get("images") else FAILED
            self._finish(message, job_id, state, error=error_json(error))
            return
        except ServiceError as error:
            failed = error.result.failed if error.result is not None else []
            unpaid = failed and all(r.error.code in UNPAID_CODES for r in failed)
            if unpaid and message.receive_count < self.queue.max_receives:
                # Throttled or busy on every image: nothing was paid, so a later attempt costs nothing extra.
                self.table.update(job_id, {"paid": False, "last_error": error_json(error)},
                                  (When((RUNNING,), worker=self.worker_id),))
                self._release(message, job_id, delay=_back_off_seconds(message.receive_count))
                return
            self._finish(message, job_id, FAILED, error=error_json(error))
            return
        from web.manifest import render_manifest

        manifest = render_manifest(result, self.jobs.store, lambda key: "")
        self._finish(message, job_id, SUCCEEDED if not result.failed else PARTIAL, manifest=manifest)

    def _stored(self, job_id: str, image) -> None:
        """Record one stored image in the job as it lands: callers see progress, and a lost worker's images."""
        from web.manifest import moderation_json

        entry = {"key": image.key, "seed": image.seed, "width": image.width, "height": image.height,
                 "model_id": image.model_id, "moderation": moderation_json(image.moderation)}
        self.table.update(job_id, {"updated_at": time.time()}, (When((RUNNING,), worker=self.worker_id),),
                          append={"stored_images": [entry]})

    def _finish(self, message: Message, job_id: str, state: str, *, manifest: dict | None = None,
                error: dict | None = None, **changes) -> None:
        now = time.time()
        changes.update({"state": state, "updated_at": now, "finished_at": now, "lease_until": 0})
        if manifest is not None:
            changes["manifest"] = manifest
        if error is not None:
            changes["error"] = error
        done = self.table.update(job_id, changes, (When((RUNNING,), worker=self.worker_id),))
        if done is None:
            log.error("job %s: ended %s but another worker holds it now; its state was not changed", job_id, state)
        else:
            log.info("job %s: %s", job_id, state)
            # Queued before the run message goes: a worker stopping here leaves the run message, whose
            # next delivery queues the webhook (see _run), so a webhook is never lost.
            self.jobs.queue_webhook(done)
        self.queue.delete(message.receipt)

    def _release(self, message: Message, job_id: str, delay: int) -> None:
        """Give a claimed, unpaid job back to the queue, to be claimed again after `delay` seconds."""
        self.table.update(job_id, {"state": QUEUED, "worker": None, "lease_until": 0, "updated_at": time.time()},
                          (When((RUNNING,), worker=self.worker_id, equals=(("paid", False),)),))
        self._later(message, run_message(job_id), delay)

    def _later(self, message: Message, body: str, delay: float) -> None:
        """Have a message delivered again after `delay` seconds, without spending its last deliveries.

        Waiting on a job held elsewhere, or giving one back, is no failure; but each delivery counts
        toward the redrive policy, so near its end the message is sent afresh (count 0) instead.
        """
        delay = int(min(MAX_HIDE_SECONDS, max(0, delay)))
        if message.receive_count >= self.queue.max_receives - 1:
            self.queue.send(body, delay_seconds=min(900, delay))
            self.queue.delete(message.receipt)
        else:
            self.queue.set_visibility(message.receipt, delay)

    def _attempt_failed(self, message: Message, job_id: str, error: Exception) -> None:
        """An attempt broke: back off, or on the last delivery (or once paid) fail the job; never pay twice."""
        if isinstance(error, (PoisonJob, ServiceError)):
            reason = str(error)
        else:
            # The exception's text may hold paths or ARNs: the log has it, the caller gets its kind.
            reason = f"an unexpected {type(error).__name__} (the worker's log has the details)"
        try:
            job = self.table.get(job_id)
            if job is not None and job["state"] in TERMINAL:
                # It ended (what failed came after, e.g. queueing its webhook): the next delivery of this
                # message finds it ended and queues what is missing.
                self._back_off(message)
                return
            paid = bool(job and job.get("paid") and job.get("worker") == self.worker_id)
            if paid:
                # After the model was called: never again (that would pay twice). It ends with what it stored.
                ended = self.table.update(job_id, lost_changes(job, time.time()) | {"error": {
                    "code": "job_failed", "status": 500, "detail": "the job failed after its images were asked "
                    f"of the model, so it is not tried again; images it stored are in the manifest: {reason}"}},
                    (When((RUNNING,), worker=self.worker_id),))
                if ended is not None:
                    self.jobs.queue_webhook(ended)
                    self.queue.delete(message.receipt)
                    return
            elif message.receive_count >= self.queue.max_receives:
                now = time.time()
                failed = self.table.update(job_id, {
                    "state": FAILED, "updated_at": now, "finished_at": now, "lease_until": 0,
                    "error": {"code": "job_failed", "status": 500, "detail":
                              f"the job failed on each of its {message.receive_count} deliveries and its message "
                              f"went to the dead-letter queue; last failure: {reason}"}},
                    (When((QUEUED,)), When((RUNNING,), worker=self.worker_id)))
                if failed is not None:
                    self.jobs.queue_webhook(failed)
            else:
                self.table.update(job_id, {"state": QUEUED, "worker": None, "lease_until": 0,
                                           "last_error": {"code": "attempt_failed", "detail": reason}},
                                  (When((RUNNING,), worker=self.worker_id, equals=(("paid", False),)),))
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
        """Renew every held job's lease and its message's invisibility, side by side (every third of it)."""
        with self._held_lock:
            held = list(self.held.items())
        for future in [self._beats.submit(self._renew, receipt, job_id) for receipt, job_id in held]:
            future.result()

    def _renew(self, receipt: str, job_id: str) -> None:
        if receipt not in self.held:
            return  # it finished (and deleted its message) since the beat began
        token = work_id.set(job_id)
        try:
            try:
                self.queue.set_visibility(receipt, self.visibility_seconds)
            except ServiceError:
                if receipt not in self.held:
                    return  # it finished meanwhile: its receipt is gone with its message
                raise
            renewed = self.table.update(job_id, {"lease_until": time.time() + self.visibility_seconds},
                                        (When((RUNNING,), worker=self.worker_id),))
            if renewed is None and receipt in self.held:
                current = self.table.get(job_id) or {}
                if current.get("state") not in TERMINAL:  # else it just ended, by this worker
                    log.error("job %s: its lease was lost (heartbeats late?); it finishes, but another worker "
                              "may have ended it", job_id)
        except Exception:  # noqa: BLE001 - the next beat tries again; the lease is longer than a beat
            log.exception("job %s: heartbeat failed", job_id)
        finally:
            work_id.reset(token)

    # -- webhooks -----------------------------------------------------------------------------------

    def _send_webhook(self, message: Message, job_id: str, attempt: int, not_before: float) -> None:
        """Send attempt `attempt` of an ended job's webhook (at least once), record it, queue the next if due."""
        remaining = not_before - time.time()
        if remaining > 1:
            # A queue delays a message at most 15 minutes (SQS); a longer wait is served in steps.
            self._later(message, webhook_message(job_id, attempt, not_before), remaining)
            return
        job = self.table.get(job_id)
        done = job is None or job["state"] not in TERMINAL or not job.get("webhook_url") \
            or any(a.get("n") == attempt for a in job.get("webhook_attempts") or [])
        if done:
            self.queue.delete(message.receipt)  # gone, or this attempt was already made and recorded
            return
        view = public_job(job, self.jobs.store, self.image_url)
        payload = json.dumps({"type": f"job.{job['state']}", "timestamp": view.get("finished_at"),
                              "data": view}, ensure_ascii=False).encode()
        secret = webhooks.secret_for_owner(self.webhook_secret, job.get("owner") or "")
        outcome = webhooks.deliver(job["webhook_url"], payload, secret, f"{job_id}.{job['state']}",
                                   allowed_networks=self.webhook_networks, timeout=self.webhook_timeout)
        if outcome.delivered():
            state = "delivered"
        elif attempt <= len(self.webhook_retries):
            state = "retrying"
            wait = self.webhook_retries[attempt - 1]
            # The next try is queued before this one is recorded: a stop in between repeats this
            # attempt (at least once) rather than losing the rest.
            self.queue.send(webhook_message(job_id, attempt + 1, time.time() + wait), delay_seconds=min(900, wait))
        else:
            state = "failed"
        record = {"webhook_attempts": [{**outcome.as_json(), "n": attempt}]}
        # A copy of this attempt sent at the same moment may have delivered it: never undo "delivered".
        if self.table.update(job_id, {"webhook_state": state}, tuple(
                When(tuple(TERMINAL), equals=(("webhook_state", before),)) for before in ("queued", "retrying")),
                append=record) is None:
            self.table.update(job_id, {}, (When(tuple(TERMINAL)),), append=record)
        self.queue.delete(message.receipt)
        log.info("job %s: webhook attempt %d %s", job_id, attempt, state)


def _split(changes: dict) -> dict:
    """lost_changes() as _finish's arguments."""
    changes = dict(changes)
    for name in ("updated_at", "finished_at", "lease_until"):
        changes.pop(name)
    return changes


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
                    try:
                        self.purge()
                    except Exception:  # noqa: BLE001 - a busy database is no reason to stop working
                        log.exception("could not purge expired jobs; tried again in an hour")
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
    redrive = getattr(jobs.queue, "redrive_max_receives", None)
    queue_max = redrive() if redrive else None
    if queue_max is not None and queue_max != jobs.queue.max_receives:
        # The worker must know the last delivery before the queue moves the message aside, or a poison
        # job would stay `running`; the queue's own count is the one that acts.
        log.warning("the queue's redrive maxReceiveCount is %d but AIG_JOB_MAX_RECEIVES is %d; using %d",
                    queue_max, jobs.queue.max_receives, queue_max)
        jobs.queue.max_receives = queue_max
    public_base = settings.public_base_url.rstrip("/")
    runner = JobRunner(jobs, services.pipeline, worker_id=worker_id(),
                       visibility_seconds=settings.job_visibility_seconds,
                       webhook_secret=jobs.master_secret(),
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
