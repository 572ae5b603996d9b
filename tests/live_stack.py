"""The whole service in AWS mode as separate processes: stand-in, moto's S3 server, and the real gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import requests

from tests.servers import free_port, start_gunicorn, stop

REPO = Path(__file__).resolve().parent.parent
AWS_DUMMY = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
             "AWS_EC2_METADATA_DISABLED": "true"}


def start_standin(*flags: str) -> tuple[subprocess.Popen, str]:
    """The Bedrock/Rekognition stand-in in its own process; returns it and its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "standins.aws_standin", "--port", "0", *flags], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        stop(proc)
        raise RuntimeError(f"stand-in did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on a free port; returns it and its URL."""
    port = free_port()
    log = open(log_path, "ab")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url + "/moto-api/", timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("moto_server did not start")


def tree_pids(root: int) -> list[int]:
    """`root` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and its descendants."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


@dataclass
class LiveStack:
    """URLs and handles of a running stack."""

    base: str
    standin: str
    s3_url: str
    bucket: str
    gunicorn: subprocess.Popen
    processes: list = field(default_factory=list)

    def s3(self):
        """An S3 client on the stack's moto."""
        return boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def configure_standin(self, **knobs) -> None:
        """Change the stand-in's knobs at run time."""
        requests.post(self.standin + "/_standin/config", json=knobs, timeout=5).raise_for_status()

    def standin_stats(self) -> dict:
        """The stand-in's counters."""
        return requests.get(self.standin + "/_standin/stats", timeout=5).json()

    def stop(self) -> None:
        """Stop every process of the stack."""
        for proc in (self.gunicorn, *self.processes):
            stop(proc)


def start_live_stack(tmp_path: Path, *, standin_flags=(), **aig_env: str) -> LiveStack:
    """Stand-in, moto and gunicorn (repo config) in AWS mode with screening on."""
    standin, standin_url = start_standin(*standin_flags)
    moto, s3_url = start_moto(tmp_path / "moto.log")
    bucket = f"live-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    env = {**AWS_DUMMY, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": standin_url, "AWS_ENDPOINT_URL_REKOGNITION": standin_url,
           "AWS_ENDPOINT_URL_BEDROCK": standin_url,
           "AWS_ENDPOINT_URL_S3": s3_url, "AIG_MODEL": "bedrock", "AIG_STORE": "s3", "AIG_MODERATION": "rekognition",
           "AIG_S3_BUCKET": bucket, "AIG_LOG_LEVEL": "warning", **aig_env}
    port = free_port()
    try:
        gunicorn = start_gunicorn(env, port, tmp_path / "gunicorn.log")
    except Exception:
        stop(standin)
        stop(moto)
        raise
    return LiveStack(f"http://127.0.0.1:{port}", standin_url, s3_url, bucket, gunicorn, [standin, moto])
