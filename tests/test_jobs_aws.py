"""Jobs in AWS mode over real HTTP: SQS and DynamoDB on moto's server, S3 on moto, Bedrock and Rekognition on
the stand-in, and worker processes (`python -m jobs.worker`) started and killed for real."""

from __future__ import annotations

import json
import signal
import time

import boto3
import pytest

from backends.aws_jobs import DynamoJobTable
from jobs.webhooks import verify
from tests.aws_fixtures import *  # noqa: F403 - the fixtures
from tests.jobs_stack import Receiver, job_env, make_resources, start_worker, wait_for_jobs
from tests.servers import stop

pytestmark = pytest.mark.integration

BODY = {"prompt": "a paper boat on a pond", "output_folder": "boats", "file_name_prefix": "boat", "count": 1,
        "width": 512, "height": 512}
SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@pytest.fixture
def jobs_world(aws_app, tmp_path):
    """Resources on moto, an AWS-mode app in process, and a way to start workers on the same settings."""
    workers = []

    def build(*, max_receives: int = 5, **aig: str):
        resources = make_resources(max_receives=max_receives)
        env = job_env(resources, AIG_JOB_MAX_RECEIVES=str(max_receives), AIG_WEBHOOK_SECRET=SECRET,
                      AIG_WEBHOOK_RETRY_SECONDS="1,1", AIG_BEDROCK_LIFECYCLE_CHECK_SECONDS="0", **aig)
        made = aws_app(**env)

        def worker(**more: str):
            process = start_worker({**env, "AIG_MODEL": "bedrock", "AIG_STORE": "s3", "AIG_MODERATION": "rekognition",
                                    "AIG_S3_BUCKET": made.settings.s3_bucket, "AIG_LOG_LEVEL": "info", **more},
                                   tmp_path / f"worker-{len(workers)}.log")
            workers.append(process)
            return process

        table = DynamoJobTable(boto3.client("dynamodb"), resources["table"])
        return made, resources, table, worker

    yield build
    for process in workers:
        stop(process)


def submit(client, body=BODY, **headers) -> str:
    answer = client.post("/jobs", json=body, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


def queue_depth(queue_url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_create_aws_makes_the_queue_with_a_dead_letter_queue_and_the_table_with_ttl(aws_app):
    made = aws_app()
    result = made.app.test_cli_runner().invoke(args=["jobs", "create-aws", "--queue", "q-cli", "--table", "t-cli"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("AIG_"))
    assert lines["AIG_JOBS"] == "aws" and lines["AIG_DYNAMODB_TABLE"] == "t-cli"
    sqs = boto3.client("sqs")
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=lines["AIG_SQS_QUEUE_URL"], AttributeNames=[
        "RedrivePolicy"])["Attributes"]["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(":q-cli-dead-letter") and int(policy["maxReceiveCount"]) == 5
    ttl = boto3.client("dynamodb").describe_time_to_live(TableName="t-cli")["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"
    again = made.app.test_cli_runner().invoke(args=["jobs", "create-aws", "--queue", "q-cli", "--table", "t-cli"])
    assert again.exit_code == 0, again.output  # running it twice finds what the first made


def test_fifty_jobs_all_succeed_with_their_images_stored(jobs_world, standin, s3):
    made, resources, table, worker = jobs_world()
    standin.configure(latency=0.2)
    worker(AIG_WORKER_JOBS="8")
    worker(AIG_WORKER_JOBS="8")
    job_ids = [submit(made.client, {**BODY, "count": 2}) for _ in range(50)]
    jobs = wait_for_jobs(table, job_ids, timeout=120)
    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    keys = [key for job in jobs.values() for key in job["manifest"]["images"]]
    assert len(keys) == len(set(keys)) == 100
    for key in keys:
        assert s3.head_object(Bucket=made.settings.s3_bucket, Key=key)["ContentType"] == "image/png"
    assert standin.stats()["invoke_calls"] == 100  # one call per image: nothing paid twice
    assert {job["attempts"] for job in jobs.values()} == {1}
    assert queue_depth(resources["queue_url"]) == 0
    view = made.client.get(f"/jobs/{job_ids[0]}").get_json()
    assert view["state"] == "succeeded" and view["manifest"]["image_details"][0]["url"].startswith("http")


def test_a_worker_killed_mid_job_loses_no_job_and_pays_for_no_image_twice(jobs_world, standin):
    # A short deadline, so a paid job of the killed worker is ended soon after its lease (lease + deadline).
    made, resources, table, worker = jobs_world(AIG_REQUEST_DEADLINE_SECONDS="8",
                                                AIG_BEDROCK_READ_TIMEOUT_SECONDS="6")
    standin.configure(latency=2.0)
    doomed = worker(AIG_WORKER_JOBS="4")
    job_ids = [submit(made.client) for _ in range(12)]
    # Kill it once it has jobs that called the model (paid) and are still waiting for the answer.
    wait_for_jobs(table, job_ids[:1], timeout=30, done=lambda job: job.get("paid") is True)
    held = [job_id for job_id in job_ids if (table.get(job_id) or {}).get("state") == "running"]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    worker(AIG_WORKER_JOBS="8")
    jobs = wait_for_jobs(table, job_ids, timeout=120)
    succeeded = [job for job in jobs.values() if job["state"] == "succeeded"]
    lost = [job for job in jobs.values() if job["state"] == "failed"]
    assert len(succeeded) + len(lost) == 12, [job["state"] for job in jobs.values()]
    assert lost and {job["error"]["code"] for job in lost} == {"worker_lost"}
    assert {job["job_id"] for job in lost} <= set(held)  # only jobs the killed worker had started
    # Each job paid once at most: the lost ones' calls were made by the dead worker and never again.
    assert standin.stats()["invoke_calls"] == len(succeeded) + len(lost)
    assert queue_depth(resources["queue_url"]) == 0


def test_a_poison_message_ends_in_the_dead_letter_queue_and_its_job_failed_with_the_reason(jobs_world, s3, standin):
    made, resources, table, worker = jobs_world(max_receives=2)
    job_id = submit(made.client)
    s3.put_object(Bucket=made.settings.s3_bucket, Key=f".jobs/{job_id}.request.json", Body=b"{broken")
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=resources["queue_url"], MessageBody="not a job message")
    worker()
    (job,) = wait_for_jobs(table, [job_id], timeout=60).values()
    assert job["state"] == "failed" and job["error"]["code"] == "job_failed"
    assert "2 deliveries" in job["error"]["detail"] and "cannot be read" in job["error"]["detail"]
    dead: list[str] = []
    give_up = time.monotonic() + 30
    while len(dead) < 2 and time.monotonic() < give_up:
        answer = sqs.receive_message(QueueUrl=resources["dead_letter_queue_url"], MaxNumberOfMessages=10,
                                     WaitTimeSeconds=1)
        dead += [m["Body"] for m in answer.get("Messages", [])]
    assert sorted(dead) == sorted([json.dumps({"type": "run", "job_id": job_id}), "not a job message"])
    assert standin.stats()["invoke_calls"] == 0


def test_webhooks_arrive_signed_are_retried_and_verify(jobs_world, standin):
    receiver = Receiver(statuses=(500, 204))
    try:
        made, resources, table, worker = jobs_world(AIG_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8")
        worker()
        job_id = submit(made.client, {**BODY, "webhook_url": receiver.url})
        (job,) = wait_for_jobs(table, [job_id], timeout=60,
                               done=lambda job: job.get("webhook_state") in ("delivered", "failed")).values()
        assert job["state"] == "succeeded" and job["webhook_state"] == "delivered"
        assert [a["status"] for a in job["webhook_attempts"]] == [500, 204]
        assert len(receiver.requests) == 2
        first, second = receiver.requests
        assert first[0]["webhook-id"] == second[0]["webhook-id"] == f"{job_id}.succeeded"
        for headers, body in receiver.requests:
            assert verify(SECRET, headers, body)
            assert not verify(SECRET, headers, body.replace(b"succeeded", b"failed"))
        event = receiver.events()[-1]
        assert event["type"] == "job.succeeded" and event["data"]["job_id"] == job_id
        assert event["data"]["manifest"]["images"] == job["manifest"]["images"]
        view = made.client.get(f"/jobs/{job_id}").get_json()
        assert view["webhook"]["state"] == "delivered" and len(view["webhook"]["attempts"]) == 2
    finally:
        receiver.close()


def test_a_webhook_to_a_private_address_is_refused_at_submit_and_at_delivery(jobs_world, standin):
    receiver = Receiver()
    try:
        # The web's allow-list lets loopback through; the worker's does not (as if DNS changed meanwhile).
        made, resources, table, worker = jobs_world(AIG_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8")
        refused = made.client.post("/jobs", json={**BODY, "webhook_url": "http://10.1.2.3/hook"})
        assert refused.status_code == 400 and "private" in refused.get_json()["errors"][0]["message"]
        worker(AIG_WEBHOOK_ALLOW_NETWORKS="", AIG_WEBHOOK_RETRY_SECONDS="")
        job_id = submit(made.client, {**BODY, "webhook_url": receiver.url})
        (job,) = wait_for_jobs(table, [job_id], timeout=60,
                               done=lambda job: job.get("webhook_state") in ("delivered", "failed")).values()
        assert job["webhook_state"] == "failed" and job["webhook_attempts"][0]["status"] is None
        assert "loopback" in job["webhook_attempts"][0]["error"]
        assert receiver.requests == []
    finally:
        receiver.close()


def test_sigterm_lets_a_worker_finish_its_running_job_and_exit(jobs_world, standin):
    made, resources, table, worker = jobs_world()
    standin.configure(latency=2.0)
    process = worker()
    job_id = submit(made.client)
    wait_for_jobs(table, [job_id], timeout=30, done=lambda job: job.get("paid") is True)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    (job,) = wait_for_jobs(table, [job_id], timeout=5).values()
    assert job["state"] == "succeeded" and standin.stats()["invoke_calls"] == 1
    assert queue_depth(resources["queue_url"]) == 0
