"""/metrics under real gunicorn: several workers counted together, with or without an operator's folder."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.servers import free_port, start_gunicorn, stop
from tests.test_metrics import SMALL, samples, value

pytestmark = pytest.mark.live

@pytest.fixture(params=["operator folder", "out of the box"])
def two_workers(request, tmp_path, monkeypatch):
    """Real gunicorn with two gthread workers: with a PROMETHEUS_MULTIPROC_DIR, and with none set at all."""
    (tmp_path / "images").mkdir()
    env = {"AIG_WORKERS": "2", "AIG_THREADS": "8", "AIG_DATA_DIR": str(tmp_path / "images"),
           "AIG_PLACEHOLDER_LATENCY_SECONDS": "0.3", "AIG_WORKER_TMP_DIR": str(tmp_path)}
    if request.param == "operator folder":
        (tmp_path / "prometheus").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
    else:
        # The gunicorn config makes a private folder itself; TMPDIR shows where, so the test can check it goes.
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        env["TMPDIR"] = str(tmp_path)
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    proc = start_gunicorn(env, port, log_path)
    yield f"http://127.0.0.1:{port}", log_path
    stop(proc)
    if request.param == "out of the box":
        assert not list(tmp_path.glob("aig-prometheus-*")), "the private metrics folder was left behind"


def _generation_pids(log_path) -> list[int]:
    pids = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "ai_image_generator.access" and entry.get("route") == "/generate_images":
                pids.append(entry["pid"])
    return pids


def wait_for_access_lines(log_path, count: int, timeout: float = 10.0) -> None:
    """Poll the log until `count` generation access lines are in (workers write them after answering)."""
    give_up = time.monotonic() + timeout
    while len(_generation_pids(log_path)) < count and time.monotonic() < give_up:
        time.sleep(0.02)


def test_metrics_sum_over_two_gunicorn_workers(two_workers):
    base, log_path = two_workers

    def post(_):
        # A new connection each time, so either worker may accept it.
        return requests.post(f"{base}/generate_images", json=SMALL, timeout=30,
                             headers={"Connection": "close"}).status_code

    sent = 0
    # Bounded rounds of concurrent requests until the access lines show both workers served some.
    for _ in range(5):
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(16)))
        assert set(statuses) == {200}
        sent += len(statuses)
        wait_for_access_lines(log_path, sent)
        if len(set(_generation_pids(log_path))) == 2:
            break
    pids = _generation_pids(log_path)
    assert len(set(pids)) == 2, f"one worker served everything: {set(pids)}"
    assert len(pids) == sent
    # Whichever worker answers the scrape, it reports both workers' traffic.
    for _ in range(6):
        response = requests.get(f"{base}/metrics", timeout=10, headers={"Connection": "close"})
        assert response.status_code == 200
        found = samples(response.text)
        assert value(found, "aig_http_requests_total", route="/generate_images", method="POST",
                     status="200") == sent
        assert value(found, "aig_images_generated_total") == 4 * sent
        assert value(found, "aig_stage_duration_seconds_count", stage="model") == sent
        assert value(found, "aig_http_request_duration_seconds_count", route="/generate_images") == sent

