"""Idempotency-Key: retried POSTs replay the first answer, across app instances sharing a store."""

from __future__ import annotations

import json
import threading
import time

import pytest

from generation.errors import ModelThrottled
from tests.test_http import CURL_BODY, images_under
from web.idempotency import fingerprint

pytestmark = pytest.mark.unit

BODY = {**json.loads(CURL_BODY), "count": 2, "width": 512, "height": 512}


def post(client, body=BODY, key="order-42"):
    return client.post("/generate_images", json=body, headers={"Idempotency-Key": key})


def test_idempotency_replays_the_first_answer_without_paying_again(client, data_dir):
    first = post(client)
    again = post(client)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert images_under(data_dir) == sorted(first.get_json()["images"])


def test_idempotency_holds_across_app_instances_sharing_the_store(make_app, data_dir):
    first = post(make_app().test_client())
    again = post(make_app().test_client())
    assert again.get_json()["images"] == first.get_json()["images"]
    assert len(images_under(data_dir)) == 2


def test_idempotency_same_body_in_another_order_is_the_same_request(client):
    first = post(client)
    reordered = dict(reversed(list(BODY.items())))
    assert post(client, reordered).get_json() == first.get_json()


def test_idempotency_key_reused_with_another_body_is_422(client, data_dir):
    post(client)
    response = post(client, {**BODY, "prompt": "blue porsche"})
    assert response.status_code == 422 and response.get_json()["code"] == "idempotency_key_reused"
    assert len(images_under(data_dir)) == 2


def test_idempotency_key_still_running_is_409(make_app, data_dir):
    app = make_app(placeholder_latency_seconds=1.0)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", post(app.test_client())))
    first.start()
    give_up = time.monotonic() + 5
    while not list(data_dir.glob(".idempotency/*.claim.json")):  # the first request holds the key
        assert time.monotonic() < give_up, "the first request never claimed the key"
        time.sleep(0.01)
    second = post(app.test_client())
    first.join()
    assert second.status_code == 409 and second.get_json()["code"] == "idempotency_in_progress"
    assert "Retry-After" in second.headers
    assert results["first"].status_code == 200


def test_idempotency_other_keys_are_other_requests(client, data_dir):
    assert post(client, key="a").get_json()["images"] != post(client, key="b").get_json()["images"]
    assert len(images_under(data_dir)) == 4


def test_idempotency_rejects_a_malformed_key_and_writes_nothing(client, data_dir):
    for bad in ("", " padded", "x" * 256, "caf\u00e9"):
        header = {"Idempotency-Key": bad.encode().decode("latin-1")}
        response = client.post("/generate_images", json=BODY, headers=header)
        assert response.status_code == 400, bad
        assert response.get_json()["errors"][0]["field"] == "Idempotency-Key"
    assert list(data_dir.rglob("*")) == []


def test_idempotency_a_failed_attempt_releases_the_key(make_stack, data_dir):
    app, services = make_stack()
    pipeline = services.pipeline
    real_run = pipeline.run
    pipeline.run = lambda *args: (_ for _ in ()).throw(ModelThrottled("slow down", retry_after=2))
    assert post(app.test_client()).status_code == 429
    pipeline.run = real_run
    retried = post(app.test_client())
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers


def test_idempotency_takes_over_a_claim_left_by_a_dead_process(make_stack):
    app, services = make_stack()
    keys = services.idempotency
    keys.begin("order-42", "", fingerprint(BODY), "dead-request")  # claimed, never answered
    assert post(app.test_client()).status_code == 409
    keys.stale_after_seconds = 0
    taken_over = post(app.test_client())
    assert taken_over.status_code == 200 and "Idempotent-Replayed" not in taken_over.headers
    assert post(app.test_client()).get_json() == taken_over.get_json()
