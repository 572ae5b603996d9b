"""Metrics: counts after known traffic, in process and summed over two real gunicorn workers; Server-Timing."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from generation.errors import ModelThrottled
from tests.fakes import FakeModel, FakeScreener

pytestmark = pytest.mark.unit

BODY = {"prompt": "a red bicycle", "output_folder": "000/111", "file_name_prefix": "bike"}
SMALL = {**BODY, "width": 512, "height": 512}
TIMING = re.compile(r"^model;dur=[\d.]+, screening;dur=[\d.]+, store;dur=[\d.]+, total;dur=[\d.]+$")


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client, **kwargs) -> dict:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    return samples(response.get_data(as_text=True))


def test_metrics_count_known_traffic(make_app):
    client = make_app().test_client()
    for _ in range(2):
        assert client.post("/generate_images", json=BODY).status_code == 200
    assert client.post("/generate_images", json={"prompt": ""}).status_code == 400
    client.get("/healthz")
    found = scrape(client)
    route = "/generate_images"
    assert value(found, "aig_http_requests_total", route=route, method="POST", status="200") == 2
    assert value(found, "aig_http_requests_total", route=route, method="POST", status="400") == 1
    assert value(found, "aig_http_requests_total", route="/healthz", method="GET", status="200") == 1
    assert value(found, "aig_images_generated_total") == 8
    assert value(found, "aig_generation_failures_total", reason="invalid_request") == 1
    assert value(found, "aig_http_request_duration_seconds_count", route=route) == 3
    assert value(found, "aig_http_request_duration_seconds_bucket", route=route, le="120.0") == 3
    for stage in ("model", "screening", "store"):
        assert value(found, "aig_stage_duration_seconds_count", stage=stage) == 2, stage


def test_flagged_failed_and_throttled_images_are_counted(make_app):
    model, screener = FakeModel(), FakeScreener(flag_all=True)
    client = make_app(model=model, screener=screener).test_client()
    assert client.post("/generate_images", json=SMALL).status_code == 200
    screener.flag_all = False
    model.errors = [ModelThrottled("slow down"), None, None, None]
    assert client.post("/generate_images", json=SMALL).json["errors"][0]["code"] == "model_throttled"
    model.errors = [ModelThrottled("slow down")] * 4
    assert client.post("/generate_images", json=SMALL).status_code == 429
    found = scrape(client)
    assert value(found, "aig_images_flagged_total") == 4
    assert value(found, "aig_images_generated_total") == 7
    # One throttled image in the 200, four in the 429 (which lists each image's own failure).
    assert value(found, "aig_images_failed_total", reason="model_throttled") == 5
    assert value(found, "aig_generation_failures_total", reason="model_throttled") == 1
    assert value(found, "aig_bedrock_throttles_total") == 5


def test_an_idempotent_replay_counts_as_a_request_but_makes_no_images(make_app):
    client = make_app().test_client()
    for _ in range(2):
        assert client.post("/generate_images", json=BODY, headers={"Idempotency-Key": "k-1"}).status_code == 200
    found = scrape(client)
    assert value(found, "aig_http_requests_total", route="/generate_images", method="POST", status="200") == 2
    assert value(found, "aig_images_generated_total") == 4
    assert value(found, "aig_stage_duration_seconds_count", stage="model") == 1


def test_metrics_are_refused_to_other_hosts_and_through_the_proxy(make_app):
    client = make_app(trust_proxy=True).test_client()
    remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 403 and remote.content_type == "application/problem+json"
    # nginx connects from loopback but always sets X-Forwarded-For: that is not "this host".
    assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 403
    assert client.get("/metrics").status_code == 200


def test_the_metrics_key_opens_metrics_to_other_hosts(make_app):
    client = make_app(metrics_key="s3cret-scraper").test_client()
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", environ_base=remote,
                      headers={"Authorization": "Bearer s3cret-scraper"}).status_code == 200
    wrong = client.get("/metrics", environ_base=remote, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", environ_base=remote).status_code == 401


def test_metrics_need_no_api_key(make_app, tmp_path):
    client = make_app(api_keys_file=str(tmp_path / "keys.json")).test_client()
    assert client.get("/metrics").status_code == 200


def test_server_timing_gives_each_stage_and_the_total(make_app):
    client = make_app().test_client()
    response = client.post("/generate_images", json=BODY)
    assert TIMING.match(response.headers["Server-Timing"]), response.headers["Server-Timing"]
    assert re.fullmatch(r"total;dur=[\d.]+", client.get("/healthz").headers["Server-Timing"])


def test_the_manifest_carries_the_wall_time_of_each_stage(make_app):
    response = make_app().test_client().post("/generate_images", json=BODY)
    timings = response.json["timings_ms"]
    assert set(timings) == {"model", "screening", "store"}
    total = float(response.headers["Server-Timing"].rsplit("dur=", 1)[1])
    assert 0 < timings["model"] <= total
