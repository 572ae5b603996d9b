"""Rate limits on /generate_images: per key or address, a JSON 429 with Retry-After, shared through Redis."""

from __future__ import annotations

import pytest

from admin.api_keys import add_key
from tests.servers import free_port

pytestmark = pytest.mark.unit

BODY = {"prompt": "a red bicycle", "output_folder": "000/111", "file_name_prefix": "bike"}


def generate(client, **kwargs):
    return client.post("/generate_images", json=BODY, **kwargs)


def test_the_limit_answers_a_json_429_with_retry_after(make_app):
    client = make_app(rate_limit="2/minute").test_client()
    assert [generate(client).status_code for _ in range(2)] == [200, 200]
    response = generate(client, headers={"X-Request-ID": "rid-429"})
    assert response.status_code == 429
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "rate_limited" and response.json["request_id"] == "rid-429"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-Request-ID"] == "rid-429"


def test_no_limit_is_set_by_default(make_app):
    client = make_app().test_client()
    assert {generate(client).status_code for _ in range(5)} == {200}


def test_only_generation_is_limited(make_app):
    client = make_app(rate_limit="1/minute").test_client()
    assert generate(client).status_code == 200
    assert {client.get("/healthz").status_code for _ in range(5)} == {200}
    assert generate(client).status_code == 429


def test_each_key_has_its_own_budget(make_app, tmp_path):
    keys = str(tmp_path / "keys.json")
    first, second = add_key(keys, "first"), add_key(keys, "second")
    client = make_app(rate_limit="1/minute", api_keys_file=keys).test_client()
    assert generate(client, headers={"X-API-Key": first}).status_code == 200
    assert generate(client, headers={"X-API-Key": first}).status_code == 429
    assert generate(client, headers={"X-API-Key": second}).status_code == 200


def test_without_keys_each_client_address_has_its_own_budget(make_app):
    client = make_app(rate_limit="1/minute").test_client()
    assert generate(client, environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 200
    assert generate(client, environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 429
    assert generate(client, environ_base={"REMOTE_ADDR": "192.0.2.2"}).status_code == 200


def test_forwarded_for_counts_only_when_the_proxy_is_trusted(make_app):
    untrusted = make_app(rate_limit="1/minute").test_client()
    assert generate(untrusted, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    # Not trusted: a made-up X-Forwarded-For does not buy a fresh budget.
    assert generate(untrusted, headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 429
    trusted = make_app(rate_limit="1/minute", trust_proxy=True).test_client()
    assert generate(trusted, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert generate(trusted, headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200
    assert generate(trusted, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 429


def test_forwarded_for_counts_only_from_the_proxy_addresses(make_app):
    # Several hosts: nginx on 10.0.0.9 fronts this instance, which listens on the network.
    client = make_app(rate_limit="1/minute", trust_proxy=True, proxy_addresses=("10.0.0.9",)).test_client()
    via_nginx = {"REMOTE_ADDR": "10.0.0.9"}
    assert generate(client, headers={"X-Forwarded-For": "198.51.100.1"}, environ_base=via_nginx).status_code == 200
    assert generate(client, headers={"X-Forwarded-For": "198.51.100.2"}, environ_base=via_nginx).status_code == 200
    # A caller reaching the instance directly cannot pick the address its budget is counted under.
    direct = {"REMOTE_ADDR": "203.0.113.7"}
    assert generate(client, headers={"X-Forwarded-For": "198.51.100.3"}, environ_base=direct).status_code == 200
    assert generate(client, headers={"X-Forwarded-For": "198.51.100.4"}, environ_base=direct).status_code == 429


def test_preflights_are_not_counted(make_app):
    client = make_app(rate_limit="1/minute", cors_origins=("https://ui.example",)).test_client()
    headers = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    assert {client.options("/generate_images", headers=headers).status_code for _ in range(3)} == {200}
    assert generate(client).status_code == 200


def test_two_app_instances_without_redis_count_apart(make_app):
    first = make_app(rate_limit="1/minute").test_client()
    second = make_app(rate_limit="1/minute").test_client()
    assert generate(first).status_code == 200
    assert generate(second).status_code == 200


def test_an_unreachable_redis_falls_back_to_this_process(make_app):
    client = make_app(rate_limit="1/minute", redis_url=f"redis://127.0.0.1:{free_port()}/0").test_client()
    assert generate(client).status_code == 200
    assert generate(client).status_code == 429


def test_the_paid_routes_spend_one_budget_together(make_app):
    client = make_app(rate_limit="3/minute").test_client()
    assert generate(client).status_code == 200
    assert client.post("/jobs", json=BODY).status_code == 202
    assert client.post("/edit_images", json={"task": "nope"}).status_code == 400  # a checked 400 is counted too
    assert client.post("/jobs", json=BODY).status_code == 429
    assert generate(client).status_code == 429
    assert client.get("/models").status_code == 200  # free routes are not limited
