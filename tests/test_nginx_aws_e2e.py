"""End to end in AWS mode: the original curl line through the real nginx, real gunicorn, the stand-ins and moto."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from generation.png import png_size
from tests.live_stack import start_live_stack
from tests.servers import NGINX_SITE, free_port, require_tool, start_nginx, stop
from tests.test_nginx_e2e import KEY, post_original

pytestmark = pytest.mark.live


@pytest.fixture
def aws_behind_nginx(tmp_path):
    """nginx (the repo's site) in front of gunicorn in AWS mode; the stand-in takes 5 s a call."""
    require_tool("nginx")
    stack = start_live_stack(tmp_path, standin_flags=("--latency", "5", "--png-kind", "flat"), AIG_TRUST_PROXY="1")
    port = free_port()
    try:
        nginx = start_nginx(NGINX_SITE, port, int(stack.base.rsplit(":", 1)[1]), tmp_path / "nginx")
    except Exception:
        stack.stop()
        raise
    yield stack, port
    stop(nginx)
    stack.stop()


def stored(stack, key: str) -> bytes:
    return stack.s3().get_object(Bucket=stack.bucket, Key=key)["Body"].read()


def test_original_curl_line_through_nginx_lands_four_screened_pngs_in_s3(aws_behind_nginx):
    stack, port = aws_behind_nginx
    status, _, body = post_original(port, {"X-Request-ID": "e2e-aws-1"})
    assert status == 200, body
    manifest = json.loads(body)
    assert len(manifest["images"]) == 4 and manifest["request_id"] == "e2e-aws-1"
    for detail in manifest["image_details"]:
        assert KEY.fullmatch(detail["key"])
        assert png_size(stored(stack, detail["key"])) == (1024, 1024)
        assert detail["moderation"]["verdict"] == "clean"
    stats = stack.standin_stats()
    assert stats["invoke_calls"] == 4 and stats["max_in_flight"] == 4 and stats["rekognition_calls"] == 4


def test_sigterm_drains_an_in_flight_paid_generation(aws_behind_nginx):
    stack, port = aws_behind_nginx
    result = {}
    caller = threading.Thread(target=lambda: result.update(answer=post_original(port)))
    caller.start()
    give_up = time.monotonic() + 10
    while stack.standin_stats()["in_flight"] < 4:  # the four calls are now waiting on the 5 s model
        assert time.monotonic() < give_up, "the four model calls never started"
        time.sleep(0.05)
    stack.gunicorn.send_signal(signal.SIGTERM)
    caller.join(timeout=60)
    status, _, body = result["answer"]
    assert status == 200, body
    for key in json.loads(body)["images"]:
        assert png_size(stored(stack, key)) == (1024, 1024)
    assert stack.gunicorn.wait(timeout=30) == 0
    assert stack.standin_stats()["invoke_calls"] == 4
