"""Jobs offline: /jobs routes, the SQLite queue and table, and the worker's runner driven message by message."""

from __future__ import annotations

import json
import threading
import time

import pytest

from generation.errors import JobsUnavailable, ModelThrottled
from jobs.service import run_message
from jobs.states import When
from jobs.webhooks import Attempt
from jobs.worker import JobRunner
from tests.fakes import FakeModel
from tests.test_access import cli_add

pytestmark = pytest.mark.unit

BODY = {"prompt": "a lighthouse at dusk", "output_folder": "coast", "file_name_prefix": "light", "count": 2,
        "width": 512, "height": 512}


@pytest.fixture
def stack(make_stack):
    """An offline app with a counting fake model, and a runner on the same SQLite file."""

    def build(model=None, *, placeholder=False, **overrides):
        model = None if placeholder else model or FakeModel()
        app, services = make_stack(model=model, **overrides)
        client = app.test_client()
        client.get("/healthz")
        from web.jobs_routes import job_service

        with app.app_context():
            jobs = job_service()
        runner = JobRunner(jobs, services.pipeline, worker_id="worker-a", visibility_seconds=30,
                           webhook_secret="whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=")
        return app, client, services, jobs, runner, model

    return build


def drain(runner, *, max_messages=10):
    """Deliver and handle every visible message once; how many were handled."""
    handled = 0
    for message in runner.queue.receive(max_messages, 0, runner.visibility_seconds):
        runner.handle(message)
        handled += 1
    return handled


def held_by(jobs, job_id: str, worker: str, *, lease_in: float, paid: bool = False, stored=()) -> None:
    """Make a queued job look claimed by `worker`, its lease ending `lease_in` seconds from now."""
    changes = {"state": "running", "worker": worker, "lease_until": time.time() + lease_in, "attempts": 1}
    if paid:
        changes["paid"] = True
    jobs.table.update(job_id, changes, (When(("queued",)),), append={"stored_images": list(stored)})


def test_a_job_is_accepted_at_once_and_ends_with_the_synchronous_manifest(stack, data_dir):
    app, client, services, jobs, runner, model = stack()
    answer = client.post("/jobs", json=BODY)
    assert answer.status_code == 202
    job = answer.get_json()
    assert answer.headers["Location"] == f"/jobs/{job['job_id']}" and job["state"] == "queued"
    assert model.calls == 0  # nothing is drawn before a worker takes it
    assert client.get(answer.headers["Location"]).get_json()["state"] == "queued"
    assert drain(runner) == 1
    done = client.get(answer.headers["Location"])
    view = done.get_json()
    assert done.headers["Cache-Control"] == "no-store"
    assert view["state"] == "succeeded" and view["attempts"] == 1 and model.calls == 2
    manifest = view["manifest"]
    assert manifest["request_id"] == job["job_id"] and len(manifest["images"]) == 2
    for detail in manifest["image_details"]:
        assert (data_dir / detail["key"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "/images/coast/light-" in detail["url"] and "signature=" in detail["url"]
        assert client.get(detail["url"]).status_code == 200
    assert "owner" not in view and "worker" not in view and "request_key" not in view
    assert runner.queue.depth() == 0


def test_an_edit_job_runs_the_edit_task(stack, data_dir):
    app, client, services, jobs, runner, model = stack(placeholder=True)
    made = client.post("/generate_images", json={**BODY, "count": 1}).get_json()
    answer = client.post("/jobs", json={"task": "remove_background", "source_key": made["images"][0],
                                        "output_folder": "coast", "file_name_prefix": "cut", "count": 1})
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["kind"] == "edit"
    drain(runner)
    view = client.get(answer.headers["Location"]).get_json()
    assert view["state"] == "succeeded", view
    assert view["manifest"]["task"] == "remove_background"
    assert view["manifest"]["source"] == made["images"][0]


@pytest.mark.parametrize("body, field", [
    ({**BODY, "count": 9}, "count"),
    ({**BODY, "output_folder": "../up"}, "output_folder"),
    ({**BODY, "webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url"),
    ({**BODY, "webhook_url": "http://169.254.169.254/latest/meta-data"}, "webhook_url"),
    ({**BODY, "webhook_url": "ftp://example.com/x"}, "webhook_url"),
    ({**BODY, "webhook_url": 7}, "webhook_url"),
    ({**BODY, "webhook_url": None}, "webhook_url"),
    ({**BODY, "task": "no_such_task"}, "task"),
])
def test_a_bad_job_is_refused_at_once_and_nothing_is_queued(stack, data_dir, body, field):
    app, client, services, jobs, runner, model = stack()
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 400
    assert field in [e["field"] for e in answer.get_json()["errors"]]
    assert runner.queue.depth() == 0
    assert not (data_dir / ".jobs").exists()


def test_a_queued_job_can_be_cancelled_and_is_then_never_run(stack, data_dir):
    app, client, services, jobs, runner, model = stack()
    location = client.post("/jobs", json=BODY).headers["Location"]
    answer = client.delete(location)
    assert answer.status_code == 200 and answer.get_json()["state"] == "cancelled"
    drain(runner)
    assert model.calls == 0 and runner.queue.depth() == 0
    assert client.get(location).get_json()["state"] == "cancelled"
    again = client.delete(location)  # a retried DELETE: the same answer, not an error
    assert again.status_code == 200 and again.get_json()["state"] == "cancelled"


def test_a_running_or_finished_job_cannot_be_cancelled(stack):
    app, client, services, jobs, runner, model = stack()
    location = client.post("/jobs", json=BODY).headers["Location"]
    drain(runner)
    answer = client.delete(location)
    assert answer.status_code == 409 and answer.get_json()["state"] == "succeeded"


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "A" * 32])
def test_an_unknown_job_is_404(stack, job_id):
    app, client, *_ = stack()
    for method in (client.get, client.delete):
        answer = method(f"/jobs/{job_id}")
        assert answer.status_code == 404 and answer.get_json()["code"] == "job_not_found"


def test_a_job_left_in_the_queue_past_its_start_by_time_expires_unrun(stack):
    app, client, services, jobs, runner, model = stack(job_queue_seconds=1)
    location = client.post("/jobs", json=BODY).headers["Location"]
    time.sleep(1.1)
    view = client.get(location).get_json()
    assert view["state"] == "expired" and view["error"]["code"] == "job_expired"
    drain(runner)
    assert model.calls == 0 and runner.queue.depth() == 0


def test_idempotency_key_gives_the_same_job_and_another_body_is_422(stack):
    app, client, services, jobs, runner, model = stack()
    first = client.post("/jobs", json=BODY, headers={"Idempotency-Key": "job-7"})
    second = client.post("/jobs", json=BODY, headers={"Idempotency-Key": "job-7"})
    assert first.status_code == second.status_code == 202
    assert first.get_json()["job_id"] == second.get_json()["job_id"]
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    other = client.post("/jobs", json={**BODY, "prompt": "another"}, headers={"Idempotency-Key": "job-7"})
    assert other.status_code == 422
    drain(runner)  # the replay queued a second message for the queued job: it must not run twice
    drain(runner)
    assert model.calls == 2
    assert client.get(first.headers["Location"]).get_json()["state"] == "succeeded"


def test_a_message_delivered_twice_at_once_pays_once(stack):
    model = FakeModel(latency=0.3)
    app, client, services, jobs, runner, model = stack(model=model)
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    jobs.queue.send(run_message(job_id))  # SQS standard queues may deliver a message twice
    other = JobRunner(jobs, services.pipeline, worker_id="worker-b", visibility_seconds=30, webhook_secret="x")
    messages = jobs.queue.receive(10, 0, 30)
    assert len(messages) == 2
    threads = [threading.Thread(target=r.handle, args=(m,)) for r, m in zip((runner, other), messages, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.calls == 2  # count 2: one call per image, once
    assert jobs.get(job_id, None)["state"] == "succeeded"


def test_a_job_whose_worker_died_after_paying_ends_with_what_it_stored_and_is_not_run_again(stack):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    stored = {"key": "coast/light-1.png", "seed": 7, "width": 512, "height": 512, "model_id": "fake-model",
              "moderation": {"verdict": "not_screened", "labels": [], "action": "none"}}
    # A worker that claimed it, called the model, stored one image, then died; its lease and grace are over.
    held_by(jobs, job_id, "dead-worker", lease_in=-1000, paid=True, stored=[stored])
    drain(runner)
    view = client.get(f"/jobs/{job_id}").get_json()
    assert view["state"] == "partial" and view["error"]["code"] == "worker_lost"
    assert view["manifest"]["images"] == ["coast/light-1.png"] and "1 of 2 images" in view["error"]["detail"]
    assert "/images/coast/light-1.png?expires=" in view["manifest"]["image_details"][0]["url"]
    assert model.calls == 0 and runner.queue.depth() == 0


def test_a_paid_job_whose_lease_just_ended_is_not_taken_before_its_grace(stack):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    # Its worker may only be late with a heartbeat: it may still finish, so nobody ends the job yet.
    held_by(jobs, job_id, "slow-worker", lease_in=-1, paid=True)
    drain(runner)
    assert jobs.get(job_id, None)["state"] == "running" and model.calls == 0
    assert runner.queue.depth() == 1  # hidden until the grace is over, then looked at again


def test_a_get_ends_a_running_job_whose_worker_is_long_gone(stack):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    held_by(jobs, job_id, "gone", lease_in=-1000, paid=True)
    view = client.get(f"/jobs/{job_id}").get_json()
    assert view["state"] == "failed" and view["error"]["code"] == "worker_lost"


def test_a_running_job_shows_each_image_as_it_is_stored(stack):
    model = FakeModel(latency=0.4)
    app, client, services, jobs, runner, model = stack(model=model)
    location = client.post("/jobs", json=BODY).headers["Location"]
    worker = threading.Thread(target=drain, args=(runner,))
    worker.start()
    seen = set()
    while worker.is_alive():
        view = client.get(location).get_json()
        if view["state"] == "running":
            seen.add(len(view.get("stored_images", [])))
        time.sleep(0.02)
    worker.join()
    assert client.get(location).get_json()["state"] == "succeeded"
    assert 0 in seen  # polled while it ran; each stored image shows up in stored_images as it lands
    progress = client.get(location).get_json()["stored_images"]
    assert len(progress) == 2 and all("signature=" in image["url"] for image in progress)


def test_a_job_held_under_a_live_lease_is_left_to_its_worker(stack):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    held_by(jobs, job_id, "busy-worker", lease_in=+30)
    drain(runner)
    assert model.calls == 0 and jobs.get(job_id, None)["state"] == "running"
    assert runner.queue.depth() == 1  # kept, hidden until the lease would end: it comes back if that worker dies


def test_throttling_on_every_image_puts_the_job_back_and_a_later_attempt_succeeds(stack):
    model = FakeModel(errors=[ModelThrottled("slow down"), ModelThrottled("slow down")])
    app, client, services, jobs, runner, model = stack(model=model)
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    drain(runner)
    job = jobs.get(job_id, None)
    assert job["state"] == "queued" and job["last_error"]["code"] == "model_throttled" and not job["paid"]
    message = next(iter(jobs.queue.receive(1, 0, 30)), None)
    assert message is None  # hidden for its back-off
    jobs.queue.database.connection().execute("UPDATE messages SET visible_at = 0")
    drain(runner)
    assert jobs.get(job_id, None)["state"] == "succeeded" and jobs.get(job_id, None)["attempts"] == 2


def test_a_poison_job_fails_with_its_reason_and_its_message_goes_dead(stack, data_dir):
    app, client, services, jobs, runner, model = stack(job_max_receives=3)
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    (data_dir / ".jobs" / f"{job_id}.request.json").write_text("{not json")
    connection = jobs.queue.database.connection()
    for _ in range(4):
        drain(runner)
        connection.execute("UPDATE messages SET visible_at = 0")  # skip the back-off
    view = jobs.get(job_id, None)
    assert view["state"] == "failed" and view["error"]["code"] == "job_failed"
    assert "3 deliveries" in view["error"]["detail"] and "cannot be read" in view["error"]["detail"]
    assert jobs.queue.dead_letters() == [run_message(job_id)] and jobs.queue.depth() == 0
    assert model.calls == 0


def test_a_message_that_is_not_a_job_goes_dead_after_its_deliveries(stack):
    app, client, services, jobs, runner, model = stack(job_max_receives=2)
    jobs.queue.send("garbage")
    connection = jobs.queue.database.connection()
    for _ in range(3):
        drain(runner)
        connection.execute("UPDATE messages SET visible_at = 0")
    assert jobs.queue.dead_letters() == ["garbage"]


def test_a_stopping_worker_gives_back_a_job_it_has_not_started(stack):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    runner.stopping.set()
    drain(runner)
    job = jobs.get(job_id, None)
    assert job["state"] == "queued" and model.calls == 0
    other = JobRunner(jobs, services.pipeline, worker_id="worker-b", visibility_seconds=30, webhook_secret="x")
    assert drain(other) == 1  # visible again at once
    assert jobs.get(job_id, None)["state"] == "succeeded"


def test_with_api_keys_a_job_is_seen_and_cancelled_by_its_owner_only(stack, tmp_path):
    app, client, services, jobs, runner, model = stack(api_keys_file=str(tmp_path / "keys.json"))
    mine, theirs = cli_add(app, "mine"), cli_add(app, "theirs")
    location = client.post("/jobs", json=BODY, headers={"X-API-Key": mine}).headers["Location"]
    assert client.get(location).status_code == 401
    assert client.get(location, headers={"X-API-Key": theirs}).status_code == 404
    assert client.delete(location, headers={"X-API-Key": theirs}).status_code == 404
    assert client.get(location, headers={"X-API-Key": mine}).status_code == 200
    secret_mine = client.get("/webhooks/secret", headers={"X-API-Key": mine}).get_json()["secret"]
    secret_theirs = client.get("/webhooks/secret", headers={"X-API-Key": theirs}).get_json()["secret"]
    assert secret_mine.startswith("whsec_") and secret_mine != secret_theirs


def test_without_api_keys_the_webhook_secret_is_not_served(stack):
    app, client, *_ = stack()
    answer = client.get("/webhooks/secret")
    assert answer.status_code == 403 and answer.get_json()["code"] == "webhook_secret_private"


def test_the_sqlite_queue_survives_a_new_process_view_of_the_file(stack, tmp_path):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    from backends.sqlite_jobs import SqliteDatabase, SqliteJobTable, SqliteQueue

    database = SqliteDatabase(str(jobs.queue.database.path))  # another process would open the same file
    (message,) = SqliteQueue(database, 5).receive(10, 0, 30)
    assert json.loads(message.body) == {"type": "run", "job_id": job_id}
    assert SqliteJobTable(database).get(job_id)["state"] == "queued"


def test_a_cancelled_job_still_sends_its_webhook_once_a_worker_sees_it(stack, monkeypatch):
    app, client, services, jobs, runner, model = stack(webhook_allow_networks=("203.0.113.0/24",))
    sent = []

    def deliver(url, body, secret, webhook_id, **options):
        sent.append((url, json.loads(body), webhook_id))
        return Attempt(time.time(), 204, None, 1.0)

    monkeypatch.setattr("jobs.worker.webhooks.deliver", deliver)
    location = client.post("/jobs", json={**BODY, "webhook_url": "http://203.0.113.5/hook"}).headers["Location"]
    client.delete(location)
    drain(runner)
    drain(runner)  # a second look finds it delivered: no second webhook
    assert [(url, event["type"], webhook_id.split(".")[1]) for url, event, webhook_id in sent] == [
        ("http://203.0.113.5/hook", "job.cancelled", "cancelled")]
    assert client.get(location).get_json()["webhook"]["state"] == "delivered"
    assert model.calls == 0


def test_a_webhook_retry_due_later_than_a_queue_can_delay_waits_in_steps(stack):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    drain(runner)
    # A retry due in two hours: SQS delays a message 15 minutes at most, so it comes back and is hidden again.
    jobs.queue.send(json.dumps({"type": "webhook", "job_id": job_id, "attempt": 2,
                                "not_before": time.time() + 7200}))
    assert drain(runner) == 1
    (visible_at,) = jobs.queue.database.connection().execute("SELECT visible_at FROM messages").fetchone()
    assert 7100 < visible_at - time.time() <= 7200
    assert drain(runner) == 0  # hidden meanwhile


def test_a_stopped_worker_lets_its_running_job_finish(stack):
    model = FakeModel(latency=0.5)
    app, client, services, jobs, runner, model = stack(model=model)
    from jobs.worker import Worker

    location = client.post("/jobs", json={**BODY, "count": 1}).headers["Location"]
    worker = Worker(runner, 2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    give_up = time.monotonic() + 10
    while client.get(location).get_json()["state"] != "running":
        assert time.monotonic() < give_up, "the job never started"
        time.sleep(0.01)
    runner.stopping.set()  # what SIGTERM does
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert client.get(location).get_json()["state"] == "succeeded" and model.calls == 1


def test_the_webhook_secret_command_prints_the_secret_the_service_signs_with(stack):
    app, client, services, jobs, runner, model = stack()
    result = app.test_cli_runner().invoke(args=["jobs", "webhook-secret"])
    assert result.exit_code == 0, result.output
    (secret,) = [line for line in result.stdout.splitlines() if line and not line.startswith("{")]
    assert secret.startswith("whsec_") and secret == jobs.master_secret()
    configured, *_ = stack(webhook_secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY")
    again = configured.test_cli_runner().invoke(args=["jobs", "webhook-secret"])
    assert "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY" in again.stdout


def test_a_job_written_without_a_paid_field_still_runs(stack):
    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    # As a web instance of an older release would have written it.
    jobs.queue.database.connection().execute("UPDATE jobs SET document = json_remove(document, '$.paid')")
    assert "paid" not in jobs.table.get(job_id)
    drain(runner)
    assert jobs.get(job_id, None)["state"] == "succeeded" and model.calls == 2


def test_a_retried_post_whose_send_fails_leaves_the_queued_job_alone(stack, monkeypatch):
    app, client, services, jobs, runner, model = stack()
    first = client.post("/jobs", json=BODY, headers={"Idempotency-Key": "k-1"})

    def down(*args, **kwargs):
        raise JobsUnavailable("the queue is down")

    monkeypatch.setattr(jobs.queue, "send", down)
    again = client.post("/jobs", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 503 and again.get_json()["code"] == "jobs_unavailable"
    monkeypatch.undo()
    assert jobs.get(first.get_json()["job_id"], None)["state"] == "queued"
    drain(runner)
    assert jobs.get(first.get_json()["job_id"], None)["state"] == "succeeded"


def test_waiting_on_a_held_job_does_not_spend_the_messages_last_deliveries(stack):
    app, client, services, jobs, runner, model = stack(job_max_receives=2)
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    held_by(jobs, job_id, "busy-worker", lease_in=+30)
    drain(runner)  # delivery 1 of 2: near the end, so it is sent afresh rather than hidden
    (count,) = jobs.queue.database.connection().execute("SELECT receive_count FROM messages").fetchone()
    assert count == 0 and jobs.queue.dead_letters() == []


def test_a_worker_lost_job_answers_in_the_manifest_schema(stack):
    import jsonschema

    from web.openapi import MANIFEST

    app, client, services, jobs, runner, model = stack()
    job_id = client.post("/jobs", json=BODY).get_json()["job_id"]
    held_by(jobs, job_id, "gone", lease_in=-1000, paid=True)
    view = client.get(f"/jobs/{job_id}").get_json()
    assert view["state"] == "failed"
    jsonschema.validate(view["manifest"], MANIFEST)
