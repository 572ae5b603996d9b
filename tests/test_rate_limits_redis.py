"""Rate limits shared through a real redis-server by two app instances."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import redis

from tests.servers import free_port
from tests.test_rate_limits import generate

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server from Debian's package on a free loopback port, for this test alone."""
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("AIG_REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed and AIG_REQUIRE_REDIS is set (apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_two_app_instances_sharing_redis_share_one_limit(make_app, redis_url):
    first = make_app(rate_limit="3/minute", redis_url=redis_url).test_client()
    second = make_app(rate_limit="3/minute", redis_url=redis_url).test_client()
    statuses = [generate(client).status_code for client in (first, second, first)]
    assert statuses == [200, 200, 200]
    assert generate(second).status_code == 429
    assert generate(first).status_code == 429
