"""End to end through the real nginx (the repo's site) and the real gunicorn (the repo's config), offline mode."""

from __future__ import annotations

import json
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.servers import NGINX_SITE, free_port, require_tool, start_gunicorn, start_nginx, stop

pytestmark = pytest.mark.live

# The original README's curl line, byte for byte (curl sends it as application/x-www-form-urlencoded).
ORIGINAL_BODY = '{"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image"}'
KEY = re.compile(r"000/111/porsche_image-\d+(\.\d+)?\.png")
# The client's rung of the time-out ladder (curl --max-time 150 > nginx 120 > app 90 > Bedrock 70).
CLIENT_TIMEOUT = 150


def post_original(port: int, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send the original curl line through nginx; curl itself when installed, else requests with the same bytes."""
    url = f"http://127.0.0.1:{port}/generate_images"
    curl = shutil.which("curl")
    if curl is None:
        response = requests.post(url, data=ORIGINAL_BODY.encode(), timeout=CLIENT_TIMEOUT,
                                 headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        return response.status_code, dict(response.headers), response.content
    command = [curl, "-sS", "-i", "--max-time", str(CLIENT_TIMEOUT), "-X", "POST", "--data", ORIGINAL_BODY, url]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    raw = subprocess.run(command, capture_output=True, check=True, timeout=CLIENT_TIMEOUT + 10).stdout
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status, parsed, body


def header(headers: dict[str, str], name: str) -> str | None:
    """A header regardless of the case it was stored under."""
    return {k.lower(): v for k, v in headers.items()}.get(name.lower())


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and proof it is a PNG)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_stored_images(manifest: dict, data_dir: Path) -> None:
    keys = manifest["images"]
    assert len(keys) == 4 and len(set(keys)) == 4, keys
    for key in keys:
        assert KEY.fullmatch(key), key
        assert png_size(data_dir / key) == (1024, 1024)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """One offline gunicorn (the repo's config) for the module's quick tests."""
    require_tool("nginx")
    root = tmp_path_factory.mktemp("gunicorn")
    port = free_port()
    # As installed (deploy/env/aig.env.example): offline, and trusting the one proxy in front.
    env = {"AIG_DATA_DIR": str(root / "images"), "AIG_MODEL": "placeholder", "AIG_STORE": "filesystem",
           "AIG_TRUST_PROXY": "1"}
    log_path = root / "gunicorn.log"
    proc = start_gunicorn(env, port, log_path)
    yield {"port": port, "data_dir": root / "images", "log": log_path}
    stop(proc)


@pytest.fixture
def nginx(app_server, tmp_path):
    """A fresh nginx (so a fresh rate-limit zone) in front of the module's gunicorn."""
    port = free_port()
    proc = start_nginx(NGINX_SITE, port, app_server["port"], tmp_path / "nginx")
    yield {"port": port, "access_log": tmp_path / "nginx" / "logs" / "ai-image-generator.access.log"}
    stop(proc)


def test_original_curl_line_through_nginx_stores_four_pngs(app_server, nginx):
    status, headers, body = post_original(nginx["port"])
    assert status == 200, body
    manifest = json.loads(body)
    assert_stored_images(manifest, app_server["data_dir"])
    assert header(headers, "X-Request-ID") == manifest["request_id"]


def test_request_id_goes_through_nginx_and_into_both_logs(app_server, nginx):
    request_id = f"e2e-{uuid.uuid4().hex}"
    status, headers, body = post_original(nginx["port"], {"X-Request-ID": request_id})
    assert status == 200, body
    assert header(headers, "X-Request-ID") == request_id
    assert json.loads(body)["request_id"] == request_id
    assert wait_for_text(app_server["log"], f'"request_id": "{request_id}"')
    assert wait_for_text(nginx["access_log"], f"rid={request_id}")


def test_unsafe_request_id_is_replaced_consistently(app_server, nginx):
    response = requests.get(f"http://127.0.0.1:{nginx['port']}/healthz", timeout=10,
                            headers={"X-Request-ID": 'bad" id'})
    assert response.status_code == 200
    replaced = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert wait_for_text(app_server["log"], f'"request_id": "{replaced}"')
    assert wait_for_text(nginx["access_log"], f"rid={replaced}")


def test_burst_beyond_the_limit_gets_json_429_from_nginx(nginx):
    url = f"http://127.0.0.1:{nginx['port']}/generate_images"
    answers = []
    for _ in range(30):  # 60 r/m with burst 20 lets at most 21 through at once; the rest must be refused
        # An empty object is refused by the app at once (400), so the burst spends no model time.
        answers.append(requests.post(url, data=b"{}", timeout=10))
    limited = [r for r in answers if r.status_code == 429]
    # Earlier requests of this module may have spent some of the budget, never returned any.
    assert len(limited) >= 9, [r.status_code for r in answers]
    assert all(r.status_code in (400, 429) for r in answers)
    for response in limited:
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 429 and problem["code"] == "rate_limited"
        assert problem["request_id"] == response.headers["X-Request-ID"]
        assert response.headers["Retry-After"].isdigit()


def test_body_over_64k_gets_json_413_from_nginx(nginx):
    response = requests.post(f"http://127.0.0.1:{nginx['port']}/generate_images", data=b"x" * 65537, timeout=10)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_sigterm_drains_an_in_flight_generation(tmp_path):
    require_tool("nginx")
    data_dir = tmp_path / "images"
    app_port, nginx_port = free_port(), free_port()
    env = {"AIG_DATA_DIR": str(data_dir), "AIG_PLACEHOLDER_LATENCY_SECONDS": "5", "AIG_TRUST_PROXY": "1"}
    gunicorn = start_gunicorn(env, app_port, tmp_path / "gunicorn.log")
    nginx = None
    try:
        nginx = start_nginx(NGINX_SITE, nginx_port, app_port, tmp_path / "nginx")
        result = {}
        worker = threading.Thread(target=lambda: result.update(answer=post_original(nginx_port)))
        started = time.monotonic()
        worker.start()
        # The started record is written just before the model call: then the request is inside gunicorn,
        # waiting on the 5 s placeholder model.
        give_up = time.monotonic() + 10
        while not list(data_dir.glob("000/111/.requests/*.started.json")):
            assert time.monotonic() < give_up, "the request never reached the model"
            time.sleep(0.05)
        gunicorn.send_signal(signal.SIGTERM)
        worker.join(timeout=60)
        status, _, body = result["answer"]
        assert status == 200, body
        assert time.monotonic() - started >= 5
        assert_stored_images(json.loads(body), data_dir)
        # The master exits once the drain is done, well inside graceful_timeout (100 s).
        assert gunicorn.wait(timeout=30) == 0
        # With gunicorn gone, nginx answers its own JSON 502 with a request id.
        gone = requests.get(f"http://127.0.0.1:{nginx_port}/healthz", timeout=10)
        assert gone.status_code == 502
        assert gone.headers["Content-Type"] == "application/problem+json"
        assert gone.json()["request_id"] == gone.headers["X-Request-ID"]
    finally:
        if nginx is not None:
            stop(nginx)
        stop(gunicorn)


def wait_for_text(path: Path, text: str, timeout: float = 5.0) -> bool:
    """True once text shows up in the file (log lines are written just after the answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False
