"""The README's first command, for real: ./scripts/serve runs gunicorn and one job worker, offline, and stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from tests.servers import REPO, free_port

pytestmark = pytest.mark.live

BODY = {"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image", "count": 2}


def session_members(session: int) -> list[int]:
    """The live processes of a session, from /proc (pgrep is not on every machine)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After the name: state, ppid, pgrp, session; a zombie has already exited.
            if int(fields[3]) == session and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_serve_runs_a_job_to_the_end_offline_and_a_sigterm_stops_both(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIG_", "AWS_"))}
    env.update(AIG_BIND=f"127.0.0.1:{port}", AIG_DATA_DIR=str(tmp_path / "images"),
               AIG_JOB_DB=str(tmp_path / "jobs.sqlite3"), AIG_WORKERS="1", AIG_THREADS="4")
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([str(REPO / "scripts" / "serve")], cwd=REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 60
        while True:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < give_up, "serve did not answer within 60 s"
            time.sleep(0.2)
        answer = requests.post(base + "/jobs", json=BODY, timeout=10)
        assert answer.status_code == 202
        location = base + answer.headers["Location"]
        while (view := requests.get(location, timeout=10).json())["state"] in ("queued", "running"):
            assert time.monotonic() < give_up + 30, view
            time.sleep(0.2)
        assert view["state"] == "succeeded" and view["manifest"]["placeholder"] is True
        for detail in view["manifest"]["image_details"]:
            assert (tmp_path / "images" / detail["key"]).is_file()
            assert requests.get(detail["url"], timeout=10).headers["Content-Type"] == "image/png"
        assert len(session_members(serve.pid)) >= 4  # the script, the job worker, gunicorn's master and worker
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 143  # the script stops both, then exits as a SIGTERMed process does
        assert session_members(serve.pid) == [], "gunicorn or the worker outlived serve"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        log.close()
