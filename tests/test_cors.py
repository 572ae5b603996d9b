"""CORS: the allowed origins get preflights and readable answers; every other origin gets nothing."""

from __future__ import annotations

import pytest

from admin.api_keys import add_key

pytestmark = pytest.mark.unit

UI = "https://ui.example"
BODY = {"prompt": "a red bicycle", "output_folder": "000/111", "file_name_prefix": "bike"}
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, authorization"}


@pytest.fixture
def keys_file(tmp_path):
    return str(tmp_path / "keys.json")


@pytest.fixture
def cors_app(make_app, keys_file):
    return make_app(cors_origins=(UI, "http://localhost:5173"), api_keys_file=keys_file)


def header_set(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


def test_preflight_from_an_allowed_origin_allows_post_with_json_and_a_key(cors_app):
    response = cors_app.test_client().options("/generate_images", headers={"Origin": UI, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == UI
    assert "post" in header_set(response.headers.get("Access-Control-Allow-Methods"))
    assert {"content-type", "authorization"} <= header_set(response.headers.get("Access-Control-Allow-Headers"))
    assert "Origin" in response.headers.get("Vary", "")


def test_preflight_from_another_origin_gets_no_cors_headers(cors_app):
    response = cors_app.test_client().options("/generate_images",
                                              headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Headers" not in response.headers


def test_no_origins_configured_means_no_cors_headers(make_app):
    client = make_app().test_client()
    response = client.options("/generate_images", headers={"Origin": UI, **PREFLIGHT})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in client.post("/generate_images", json=BODY,
                                                            headers={"Origin": UI}).headers


def test_answers_to_the_ui_expose_request_id_retry_after_and_server_timing(cors_app, keys_file):
    key = add_key(keys_file, "ui")
    response = cors_app.test_client().post("/generate_images", json=BODY,
                                           headers={"Origin": UI, "Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == UI
    exposed = header_set(response.headers.get("Access-Control-Expose-Headers"))
    assert {"x-request-id", "retry-after", "server-timing"} <= exposed


def test_a_401_is_readable_by_the_ui(cors_app):
    response = cors_app.test_client().post("/generate_images", json=BODY, headers={"Origin": UI})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == UI


def test_metrics_are_not_offered_to_browsers(cors_app):
    response = cors_app.test_client().get("/metrics", headers={"Origin": UI})
    assert "Access-Control-Allow-Origin" not in response.headers
