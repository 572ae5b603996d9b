"""Fault injection through the stand-ins and a faulty S3 proxy: every answer is honest, nothing paid for is lost."""

from __future__ import annotations

import json
import threading
import time

import pytest

from backends import aws_clients
from standins.faulty_s3 import FaultyS3Proxy
from tests.test_aws_integration import body, keys_in, read

pytestmark = pytest.mark.integration

pytest_plugins = ["tests.aws_fixtures"]


@pytest.fixture
def faulty_s3(aws_env, moto_s3, monkeypatch):
    """A proxy in front of moto that fails a chosen share of image uploads; the app's S3 goes through it."""
    proxy = FaultyS3Proxy(moto_s3, seed=11).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    aws_clients.reset_session()
    yield proxy
    proxy.stop()


def assert_honest(response, s3, bucket):
    """A 200 names only stored keys; any other answer is a JSON problem with a request id."""
    data = response.get_json()
    assert data is not None, response.get_data(as_text=True)
    if response.status_code == 200:
        for key in data["images"]:
            assert read(s3, bucket, key)[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert response.content_type == "application/problem+json" and data["request_id"]
    return data


def run_concurrently(count, call):
    results = [None] * count
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, call())) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_throttling_on_30_percent_of_calls_mostly_succeeds_and_never_lies(aws_app, standin, s3, bucket):
    standin.configure(throttle_rate=0.3, seed=3)
    made = aws_app()
    responses = run_concurrently(12, lambda: made.app.test_client().post("/generate_images", json=body()))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    for response in responses:
        assert_honest(response, s3, bucket)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
    assert statuses.count(200) >= 10
    assert standin.stats()["errors_returned"].get("ThrottlingException", 0) > 0
    reported = [k for r in responses if r.status_code == 200 for k in r.get_json()["images"]]
    assert set(reported) <= set(keys_in(s3, bucket))


def test_a_model_slower_than_the_deadline_answers_504_in_time_and_pays_once_per_image(aws_app, standin, s3,
                                                                                      bucket):
    standin.configure(latency=4.0)
    made = aws_app(AIG_REQUEST_DEADLINE_SECONDS="2", AIG_BEDROCK_READ_TIMEOUT_SECONDS="1.5")
    response = made.client.post("/generate_images", json=body())
    # Answered at the deadline, not when the model finished: the calls are still in flight.
    assert response.status_code == 504 and standin.stats()["in_flight"] > 0
    assert_honest(response, s3, bucket)
    assert standin.stats()["invoke_calls"] == 4
    assert keys_in(s3, bucket) == []


def test_images_finishing_after_the_deadline_are_kept_and_recorded(aws_app, standin, s3, bucket):
    standin.configure(latency=0.5, rekognition_latency=2.0)
    made = aws_app(AIG_REQUEST_DEADLINE_SECONDS="1.5", AIG_BEDROCK_READ_TIMEOUT_SECONDS="1")
    response = made.client.post("/generate_images", json=body())
    problem = assert_honest(response, s3, bucket)
    assert response.status_code == 504 and problem["code"] == "deadline_exceeded"
    assert problem["images"] == [] and problem["record"].endswith(f"/{problem['request_id']}.json")
    # The last late image writes the record after the 504: poll for it, for a bounded time.
    record, give_up = None, time.monotonic() + 10
    while record is None and time.monotonic() < give_up:
        try:
            record = json.loads(read(s3, bucket, problem["record"]))
        except s3.exceptions.NoSuchKey:
            time.sleep(0.05)
    assert record["status"] == "deadline_exceeded" and record["parameters"]["prompt"] == body()["prompt"]
    kept = [image["key"] for image in record["images"]]
    assert len(kept) == 4 and sorted(kept) == keys_in(s3, bucket)
    assert standin.stats()["invoke_calls"] == 4


@pytest.mark.parametrize("code, status", [("InternalServerException", 502), ("ServiceUnavailableException", 503)])
def test_bedrock_5xx_on_some_calls_gives_partial_answers_that_never_lie(aws_app, standin, s3, bucket, code, status):
    standin.configure(error_rate=0.4, error_code=code, seed=5)
    made = aws_app()
    responses = [made.client.post("/generate_images", json=body()) for _ in range(6)]
    assert {r.status_code for r in responses} <= {200, status}
    for response in responses:
        data = assert_honest(response, s3, bucket)
        if response.status_code == 200:
            assert len(data["images"]) + len(data["errors"]) == 4
            assert {e["status"] for e in data["errors"]} <= {status}
    assert any(r.status_code == 200 and r.get_json()["errors"] for r in responses)


def test_s3_failing_some_uploads_is_retried_and_every_key_exists(aws_app, faulty_s3, s3, bucket):
    faulty_s3.configure(put_failure_rate=0.3, status=503)
    made = aws_app()
    responses = [made.client.post("/generate_images", json=body()) for _ in range(5)]
    assert faulty_s3.puts_failed > 0
    reported = []
    for response in responses:
        assert response.status_code == 200  # 30 % per try, 3 tries: an image seldom fails, never all four
        data = assert_honest(response, s3, bucket)
        assert len(data["images"]) + len(data["errors"]) == 4
        assert {e["code"] for e in data["errors"]} <= {"store_failed"}
        reported += data["images"]
    assert len(reported) >= 16 and sorted(reported) == keys_in(s3, bucket)


def test_s3_refusing_every_upload_reports_no_key(aws_app, faulty_s3, s3, bucket):
    faulty_s3.configure(put_failure_rate=1.0, status=500)
    response = aws_app().client.post("/generate_images", json=body())
    problem = assert_honest(response, s3, bucket)
    assert response.status_code == 503 and problem["code"] == "store_failed"
    assert keys_in(s3, bucket) == []


def test_rekognition_down_fails_closed(aws_app, standin, s3, bucket):
    standin.configure(rekognition_down=True)
    response = aws_app().client.post("/generate_images", json=body())
    problem = assert_honest(response, s3, bucket)
    assert response.status_code == 503 and problem["code"] == "screening_failed"
    assert keys_in(s3, bucket) == []
    assert standin.stats()["rekognition_calls"] >= 4
