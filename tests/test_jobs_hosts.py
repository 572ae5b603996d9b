"""Several web instances behind one nginx: real gunicorns, nginx and Redis, jobs on moto's SQS/DynamoDB/S3, workers.

One instance is SIGKILLed mid-load; callers retry with their Idempotency-Key, and nothing is lost or paid twice.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import requests

from jobs.aws_setup import create_job_resources
from tests.jobs_stack import start_worker
from tests.live_stack import AWS_DUMMY, start_moto, start_standin
from tests.servers import NGINX_SITE, free_port, require_tool, start_gunicorn, start_nginx, stop
from tests.test_rate_limits_redis import redis_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.live

INSTANCES = 3
BODY = {"prompt": "a kite over dunes", "output_folder": "kites", "file_name_prefix": "kite", "count": 1,
        "width": 512, "height": 512}


@pytest.fixture
def hosts(request, tmp_path, redis_url):  # noqa: F811 - the imported fixture
    """Stand-in, moto, Redis, three AWS-mode gunicorns sharing one queue/table/bucket, nginx in front, two workers.

    A test may pass more AIG_* settings for the instances (indirect parametrization).
    """
    require_tool("nginx")
    processes = []
    try:
        standin, standin_url = start_standin("--latency", "0.5", "--png-kind", "flat")
        processes.append(standin)
        moto, aws_url = start_moto(tmp_path / "moto.log")
        processes.append(moto)
        clients = {name: boto3.client(name, endpoint_url=aws_url, region_name="us-east-1",
                                      aws_access_key_id="testing", aws_secret_access_key="testing")
                   for name in ("s3", "sqs", "dynamodb")}
        bucket = f"hosts-{uuid.uuid4().hex[:10]}"
        clients["s3"].create_bucket(Bucket=bucket)
        made = create_job_resources(clients["sqs"], clients["dynamodb"], bucket, bucket, max_receives=5,
                                    visibility_seconds=10, queue_seconds=3600)
        env = {**AWS_DUMMY, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": standin_url, "AWS_ENDPOINT_URL_BEDROCK": standin_url,
               "AWS_ENDPOINT_URL_REKOGNITION": standin_url, "AWS_ENDPOINT_URL_S3": aws_url,
               "AWS_ENDPOINT_URL_SQS": aws_url, "AWS_ENDPOINT_URL_DYNAMODB": aws_url,
               "AIG_MODEL": "bedrock", "AIG_STORE": "s3", "AIG_MODERATION": "rekognition", "AIG_S3_BUCKET": bucket,
               "AIG_JOBS": "aws", "AIG_SQS_QUEUE_URL": made["queue_url"], "AIG_DYNAMODB_TABLE": made["table"],
               "AIG_JOB_VISIBILITY_SECONDS": "10", "AIG_BEDROCK_LIFECYCLE_CHECK_SECONDS": "0",
               "AIG_TRUST_PROXY": "1", "AIG_WORKERS": "2", "AIG_THREADS": "16", "AIG_REDIS_URL": redis_url,
               **getattr(request, "param", {})}
        ports = [free_port() for _ in range(INSTANCES)]
        webs = []
        for i, port in enumerate(ports):
            webs.append(start_gunicorn(env, port, tmp_path / f"web-{i}.log", timeout=40))
            processes.append(webs[-1])
        # The flood guard (60 a minute per address) would refuse a test that is one address; raised here only.
        site = tmp_path / "site.conf"
        site.write_text(NGINX_SITE.read_text().replace("rate=60r/m", "rate=60000r/m"))
        nginx_port = free_port()
        processes.append(start_nginx(site, nginx_port, tmp_path=tmp_path / "nginx", upstream_ports=ports))
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("AIG_")} | env
        for i in range(2):
            processes.append(start_worker({**worker_env, "AIG_WORKER_JOBS": "16"}, tmp_path / f"worker-{i}.log"))
        yield {"base": f"http://127.0.0.1:{nginx_port}", "webs": webs, "logs": [tmp_path / f"web-{i}.log"
                                                                                 for i in range(INSTANCES)],
               "standin": standin_url, "s3": clients["s3"], "bucket": bucket}
    finally:
        for process in reversed(processes):
            stop(process)


def served_by_each(logs) -> list[int]:
    """How many POSTs each instance's access log shows."""
    counts = []
    for path in logs:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        counts.append(sum(1 for line in lines if line.get("method") == "POST" and line.get("status")))
    return counts


def stats(standin_url: str) -> dict:
    return requests.get(standin_url + "/_standin/stats", timeout=5).json()


@pytest.mark.parametrize("hosts", [{"AIG_RATE_LIMIT": "20/minute"}], indirect=True)
def test_requests_are_spread_over_the_instances_which_share_one_rate_limit(hosts):
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: requests.post(hosts["base"] + "/generate_images", json=BODY, timeout=60),
                                range(12)))
    assert [a.status_code for a in answers] == [200] * 12
    counts = served_by_each(hosts["logs"])
    assert sum(counts) == 12 and sum(1 for c in counts if c) >= 2, counts
    # The limit is counted in Redis, not per instance: 20 a minute in all, whichever instance is asked.
    more = [requests.post(hosts["base"] + "/jobs", json=BODY, timeout=30).status_code for _ in range(12)]
    assert sorted(more) == [202] * 8 + [429] * 4, (more, served_by_each(hosts["logs"]))
    assert sum(1 for c in served_by_each(hosts["logs"]) if c) == INSTANCES


def test_a_web_instance_killed_mid_load_loses_no_job_and_pays_for_none_twice(hosts):
    base, total = hosts["base"], 60
    keys = [f"kite-{i}" for i in range(total)]
    accepted: dict[str, str] = {}
    retried = []
    lock = threading.Lock()

    def submit(key: str) -> None:
        # As a careful caller does: on a dropped connection or a gateway error, send the same request
        # again with the same Idempotency-Key (to whichever instance nginx picks).
        for attempt in range(20):
            try:
                answer = requests.post(base + "/jobs", json=BODY, headers={"Idempotency-Key": key}, timeout=30)
            except requests.RequestException:
                answer = None
            if answer is not None and answer.status_code == 202:
                with lock:
                    accepted[key] = answer.json()["job_id"]
                    if attempt:
                        retried.append(key)
                return
            time.sleep(0.2)
        raise AssertionError(f"{key} was never accepted")

    def kill_one_instance() -> None:
        while len(accepted) < total // 3:
            time.sleep(0.01)
        victim = hosts["webs"][0]
        os.killpg(victim.pid, signal.SIGKILL)  # the master and its workers, mid-load

    killer = threading.Thread(target=kill_one_instance)
    killer.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(submit, keys))
    killer.join()
    assert hosts["webs"][0].poll() is not None  # the instance really died during the load
    assert len(accepted) == total and len(set(accepted.values())) == total  # one job per key
    give_up = time.monotonic() + 120
    while True:
        views = [requests.get(f"{base}/jobs/{job_id}", timeout=10).json() for job_id in accepted.values()]
        if all(view["state"] not in ("queued", "running") for view in views) or time.monotonic() > give_up:
            break
        time.sleep(1)
    assert {view["state"] for view in views} == {"succeeded"}, sorted(view["state"] for view in views)
    keys_made = [key for view in views for key in view["manifest"]["images"]]
    listed = hosts["s3"].list_objects_v2(Bucket=hosts["bucket"], Prefix="kites/kite-")
    assert sorted(keys_made) == sorted(obj["Key"] for obj in listed.get("Contents", []))
    assert stats(hosts["standin"])["invoke_calls"] == total  # one paid image per job: none twice
