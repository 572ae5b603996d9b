"""What an attacker found (issue 16), each tried again against a live gunicorn (and nginx where it is nginx's)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import requests

from admin.api_keys import add_key, revoke_key
from tests.servers import NGINX_SITE, REPO, free_port, require_tool, start_gunicorn, start_nginx, stop

pytestmark = pytest.mark.live

BODY = {"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image", "count": 1,
        "width": 512, "height": 512}
UI = "https://ui.example"


@pytest.fixture(scope="module")
def open_service(tmp_path_factory):
    """gunicorn with API keys off, one allowed browser origin, a rate limit, behind a trusted proxy header."""
    tmp = tmp_path_factory.mktemp("open")
    data = tmp / "images"
    data.mkdir()
    port = free_port()
    proc = start_gunicorn({"AIG_DATA_DIR": str(data), "AIG_CORS_ORIGINS": UI, "AIG_WORKERS": "1",
                           "AIG_RATE_LIMIT": "2/minute", "AIG_TRUST_PROXY": "1"}, port, tmp / "gunicorn.log")
    yield f"http://127.0.0.1:{port}", data
    stop(proc)


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory):
    """gunicorn with API keys on; yields its URL, data folder and keys file."""
    tmp = tmp_path_factory.mktemp("keyed")
    data, keys_file = tmp / "images", tmp / "keys.json"
    data.mkdir()
    add_key(str(keys_file), "setup")
    port = free_port()
    proc = start_gunicorn({"AIG_DATA_DIR": str(data), "AIG_API_KEYS_FILE": str(keys_file), "AIG_WORKERS": "1"},
                          port, tmp / "gunicorn.log")
    yield f"http://127.0.0.1:{port}", data, keys_file
    stop(proc)


def generate(base, body=None, **kwargs):
    return requests.post(f"{base}/generate_images", data=json.dumps(body or BODY), timeout=30, **kwargs)


def images_under(data):
    return sorted(p for p in data.rglob("*.png") if not any(part.startswith(".") for part in p.parts))


# 1. Cross-site request forgery with API keys off.
@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Content-Type": "text/plain"},
    {"Origin": "null", "Content-Type": "text/plain"},
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
])
def test_a_cross_site_browser_write_is_refused_with_403(open_service, headers):
    base, data = open_service
    before = images_under(data)
    response = generate(base, headers={**headers, "X-Forwarded-For": "192.0.2.1"})
    assert response.status_code == 403 and response.json()["code"] == "cross_site_refused"
    assert images_under(data) == before


def test_curl_an_allowed_origin_and_the_service_itself_may_still_write(open_service):
    base, _ = open_service
    curl_like = generate(base, headers={"Content-Type": "application/x-www-form-urlencoded",
                                        "X-Forwarded-For": "192.0.2.2"})
    assert curl_like.status_code == 200
    allowed = generate(base, headers={"Origin": UI, "Sec-Fetch-Site": "cross-site", "X-Forwarded-For": "192.0.2.3"})
    assert allowed.status_code == 200 and allowed.headers["Access-Control-Allow-Origin"] == UI
    same = generate(base, headers={"Origin": base, "Sec-Fetch-Site": "same-origin", "X-Forwarded-For": "192.0.2.4"})
    assert same.status_code == 200


# 2. Callers can write into the service's reserved places.
@pytest.mark.parametrize(("field", "value"), [
    ("output_folder", ".idempotency/abc.claim.json"),
    ("output_folder", "000/.requests"),
    ("output_folder", "quarantine/000"),
    ("output_folder", "quarantine"),
    ("file_name_prefix", "..."),
    ("file_name_prefix", ".hidden"),
])
def test_the_services_reserved_places_are_refused_naming_the_field(open_service, field, value):
    base, data = open_service
    before = sorted(data.rglob("*"))
    # Each case from its own address: the rate limit counts refused requests too.
    response = generate(base, {**BODY, field: value}, headers={"X-Forwarded-For": f"198.51.100.{len(value)}"})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == field
    assert sorted(data.rglob("*")) == before


# 3. Images fetched with a key were marked public.
def test_images_fetched_with_a_key_are_private_to_caches(keyed_service):
    base, _, keys_file = keyed_service
    key = add_key(str(keys_file), "cache-check")
    headers = {"Authorization": f"Bearer {key}"}
    url = generate(base, headers=headers).json()["image_details"][0]["url"]
    image = requests.get(url, headers=headers, timeout=10)
    assert image.status_code == 200
    assert image.headers["Cache-Control"].startswith("private") and "public" not in image.headers["Cache-Control"]
    assert {"Authorization", "X-API-Key"} <= {v.strip() for v in image.headers["Vary"].split(",")}


# 5. Deeply nested JSON was a 500 with a traceback.
def test_deeply_nested_json_is_a_400(open_service):
    base, _ = open_service
    response = requests.post(f"{base}/generate_images", data=b"[" * 32_000 + b"]" * 32_000, timeout=30,
                             headers={"X-Forwarded-For": "192.0.2.20"})
    assert response.status_code == 400 and "nested too deeply" in response.json()["detail"]


# 6. A folder segment over 255 bytes was a 503 counted as a store failure.
def test_a_folder_segment_over_255_bytes_is_a_400_from_validation(open_service):
    base, _ = open_service
    response = generate(base, {**BODY, "output_folder": "a" * 256}, headers={"X-Forwarded-For": "192.0.2.21"})
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "output_folder",
                                          "message": "each segment may be at most 255 characters"}]


# 7. Each IPv6 address counted apart, so a /64 had an unlimited budget.
def test_ipv6_callers_are_limited_by_their_64(open_service):
    base, _ = open_service
    same_64 = [f"2001:db8:1:2::{n:x}" for n in range(1, 4)]
    statuses = [generate(base, headers={"X-Forwarded-For": address}).status_code for address in same_64]
    assert statuses == [200, 200, 429]
    assert generate(base, headers={"X-Forwarded-For": "2001:db8:1:3::1"}).status_code == 200


# 8. Idempotency was scoped by the key's name: a name issued again replayed the old holder's answers.
def test_an_idempotency_key_is_scoped_by_the_api_key_not_its_name(keyed_service):
    base, _, keys_file = keyed_service
    first_key = add_key(str(keys_file), "reissued")
    headers = {"Idempotency-Key": "order-1"}
    first = generate(base, headers={**headers, "X-API-Key": first_key})
    assert first.status_code == 200
    revoke_key(str(keys_file), "reissued")
    second_key = add_key(str(keys_file), "reissued")
    second = generate(base, headers={**headers, "X-API-Key": second_key})
    assert second.status_code == 200 and "Idempotent-Replayed" not in second.headers
    assert second.json()["images"] != first.json()["images"]


# 9. /readyz needed no key and told internal paths.
def test_readyz_names_the_backend_but_not_its_paths(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    port = free_port()
    proc = start_gunicorn({"AIG_DATA_DIR": str(not_a_folder / "images"), "AIG_WORKERS": "1"}, port,
                          tmp_path / "gunicorn.log")
    try:
        response = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    finally:
        stop(proc)
    assert response.status_code == 503 and "store" in response.json()["detail"]
    assert str(tmp_path) not in response.text
    assert str(not_a_folder) in (tmp_path / "gunicorn.log").read_text()  # the operator still learns why


# 10. /images/ served any file under the data folder, and checked the quarantine on the raw key.
def test_images_serves_only_the_stores_images_judged_on_the_resolved_path(open_service):
    base, data = open_service
    (data / "quarantine" / "000").mkdir(parents=True, exist_ok=True)
    (data / "quarantine" / "000" / "original.png").write_bytes(b"\x89PNG flagged original")
    (data / "000").mkdir(exist_ok=True)
    (data / "000" / "looks-public.png").symlink_to(data / "quarantine" / "000" / "original.png")
    (data / "notes.txt").write_text("operator notes")
    for key in ("000/looks-public.png", "notes.txt", "quarantine/000/original.png"):
        assert requests.get(f"{base}/images/{key}", timeout=10).status_code == 404, key


# 11. The Host header was reflected into image URLs.
def test_a_forged_host_never_shapes_image_urls(open_service):
    base, _ = open_service
    response = generate(base, headers={"Host": "evil.example", "X-Forwarded-For": "192.0.2.30"})
    assert response.status_code == 200
    url = response.json()["image_details"][0]["url"]
    assert "evil.example" not in url and url.startswith("/images/")


# 12. Odd ends.
def test_a_chunked_body_over_the_limit_is_a_413(open_service):
    base, _ = open_service
    port = int(base.rsplit(":", 1)[1])

    def chunks():
        for _ in range(100):
            yield b"x" * 4096

    response = requests.post(f"{base}/generate_images", data=chunks(), timeout=30,
                             headers={"X-Forwarded-For": "192.0.2.40"})
    assert response.status_code == 413 and response.json()["code"] == "request_entity_too_large"
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the worker is still accepting


def test_keys_add_prints_the_key_alone_on_stdout(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIG_")}
    env.update(AIG_API_KEYS_FILE=str(tmp_path / "keys.json"), AIG_DATA_DIR=str(tmp_path / "images"))
    flask = [sys.executable, "-m", "flask", "--app", "wsgi", "keys", "add", "ui-backend"]
    result = subprocess.run(flask, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) >= 40 and not lines[0].startswith("{"), result.stdout


def test_nginx_answers_its_own_400_and_414_as_json(tmp_path):
    require_tool("nginx")
    app_port, nginx_port = free_port(), free_port()
    gunicorn = start_gunicorn({"AIG_DATA_DIR": str(tmp_path / "images"), "AIG_WORKERS": "1"}, app_port,
                              tmp_path / "gunicorn.log")
    nginx = None
    try:
        nginx = start_nginx(NGINX_SITE, nginx_port, app_port, tmp_path / "nginx")
        base = f"http://127.0.0.1:{nginx_port}"
        huge_header = requests.get(f"{base}/healthz", headers={"X-Big": "y" * 70_000}, timeout=10)
        long_uri = requests.get(f"{base}/{'u' * 70_000}", timeout=10)
        for response, status in ((huge_header, 400), (long_uri, 414)):
            assert response.status_code == status
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.json()["status"] == status and response.json()["request_id"]
    finally:
        if nginx is not None:
            stop(nginx)
        stop(gunicorn)


def test_a_rebinding_page_cannot_pass_for_the_service_itself(open_service):
    base, data = open_service
    port = base.rsplit(":", 1)[1]
    before = images_under(data)
    # A page on evil.example whose name now resolves to this host: its Host and Origin agree.
    forged = generate(base, headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}",
                                     "Sec-Fetch-Site": "same-origin", "X-Forwarded-For": "192.0.2.50"})
    assert forged.status_code == 403 and images_under(data) == before


def test_gunicorns_own_431_is_the_services_json_problem(open_service):
    base, _ = open_service
    headers = {f"X-Many-{n}": "v" for n in range(105)}  # over gunicorn's limit_request_fields (100)
    response = requests.get(f"{base}/healthz", headers=headers, timeout=10)
    assert response.status_code == 431
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 431 and response.json()["request_id"]
