"""Helpers for job tests over real processes: the AWS resources on moto, worker processes, a webhook receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

from jobs.aws_setup import create_job_resources
from jobs.states import TERMINAL

REPO = Path(__file__).resolve().parent.parent


def make_resources(*, max_receives: int = 5, visibility_seconds: int = 3) -> dict:
    """A fresh queue, dead-letter queue and table on the endpoints of the current environment (moto)."""
    name = f"jobs-{uuid.uuid4().hex[:10]}"
    return create_job_resources(boto3.client("sqs"), boto3.client("dynamodb"), name, name,
                                max_receives=max_receives, visibility_seconds=visibility_seconds, queue_seconds=3600)


def job_env(resources: dict, **aig: str) -> dict[str, str]:
    """AIG_* settings for AWS-mode jobs on these resources (the AWS endpoints come from the environment)."""
    return {"AIG_JOBS": "aws", "AIG_SQS_QUEUE_URL": resources["queue_url"], "AIG_DYNAMODB_TABLE": resources["table"],
            "AIG_JOB_VISIBILITY_SECONDS": "3", **aig}


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m jobs.worker` with the current environment plus `env`, logging to `log_path`."""
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=REPO, env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_jobs(table, job_ids, timeout: float, done=lambda job: job["state"] in TERMINAL) -> dict[str, dict]:
    """Poll the job table until every job is done (terminal by default); the jobs by id."""
    give_up = time.monotonic() + timeout
    jobs: dict[str, dict] = {}
    while True:
        jobs = {job_id: table.get(job_id) for job_id in job_ids}
        if all(job is not None and done(job) for job in jobs.values()):
            return jobs
        if time.monotonic() > give_up:
            states = sorted((job or {}).get("state", "missing") for job in jobs.values())
            raise AssertionError(f"jobs not done after {timeout} s: {states}")
        time.sleep(0.2)


class Receiver:
    """A webhook receiver on loopback that records each request; answers the statuses it is given, in turn."""

    def __init__(self, statuses=(204,)):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = owner.statuses.pop(0) if len(owner.statuses) > 1 else owner.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/aig"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        """The JSON bodies received."""
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
