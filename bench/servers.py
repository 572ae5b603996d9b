"""Start and stop the benchmark's processes: the AWS stand-in, moto's S3 server, the seed and ours."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SEED_REQUIREMENTS = BENCH / "requirements-seed.txt"
# shared/ sits beside the repo (a CI clone has a copy of it there too); /work/shared is the workplace's.
_SEED_CANDIDATES = (REPO.parent / "shared" / "reference-seed", Path("/work/shared/reference-seed"))
DEFAULT_SEED_DIR = next((p for p in _SEED_CANDIDATES if (p / "wsgi.py").exists()), _SEED_CANDIDATES[0])
DEFAULT_SEED_VENV = BENCH / ".venv-seed"
# Dummy credentials: nothing here may reach real AWS, and every endpoint is a loopback stand-in.
AWS_DUMMY = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_SESSION_TOKEN": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Variables of the outer shell that must not leak into the measured services.
_DROP = ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL")


class StartError(RuntimeError):
    """A server did not come up."""


@dataclass
class Server:
    """A process started here, in its own session, with its output in a log file."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    url: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL the process group this process leads (its own session)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group id is this process's pid
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        log = getattr(self.proc, "log_file", None)
        if log is not None:
            log.close()


def base_env(extra: dict[str, str] | None = None, *, keep_aig: bool = False) -> dict[str, str]:
    """The outer environment less AWS profile settings (and AIG_* unless kept), plus dummy credentials."""
    env = {k: v for k, v in os.environ.items()
           if k not in _DROP and not k.startswith("AWS_ENDPOINT_URL_") and (keep_aig or not k.startswith("AIG_"))
           and k != "GUNICORN_CMD_ARGS"}
    env.update(AWS_DUMMY)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(name: str, command: list[str], cwd: Path, env: dict[str, str], log_path: Path,
           stdout_pipe: bool = False) -> Server:
    log = open(log_path, "ab")
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE if stdout_pipe else log,
                            stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_file = log  # type: ignore[attr-defined]
    return Server(name, proc, log_path)


def _wait_ready_line(server: Server, timeout: float) -> str:
    """The URL from the `READY <url>` line a stand-in prints on stdout."""
    deadline = time.monotonic() + timeout
    buffer = b""
    stdout = server.proc.stdout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise StartError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        ready, _, _ = select.select([stdout], [], [], 0.2)
        if ready:
            chunk = os.read(stdout.fileno(), 4096)
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith("READY "):
                    return line.split(None, 1)[1].strip()
    server.stop()
    raise StartError(f"{server.name} printed no READY line within {timeout} s:\n{server.tail()}")


def start_standin(log_dir: Path, latency: float, png_kind: str, rekognition_latency: float) -> Server:
    """The Bedrock Runtime + Rekognition stand-in of this repo, in a process of its own."""
    command = [sys.executable, "-m", "standins.aws_standin", "--host", "127.0.0.1", "--port", "0",
               "--latency", str(latency), "--png-kind", png_kind,
               "--rekognition-latency", str(rekognition_latency), "--prewarm", "1024x1024"]
    server = _spawn("aws-standin", command, REPO, base_env(), log_dir / "standin.log", stdout_pipe=True)
    server.url = _wait_ready_line(server, 60)
    return server


def start_moto(log_dir: Path) -> Server:
    """moto's S3 server, in a process of its own."""
    command = [sys.executable, "-m", "bench.moto_s3", "--host", "127.0.0.1", "--port", "0"]
    server = _spawn("moto-s3", command, REPO, base_env(), log_dir / "moto.log", stdout_pipe=True)
    server.url = _wait_ready_line(server, 60)
    return server


def standin_call(url: str, path: str, payload: dict | None = None) -> dict:
    """GET (payload None) or POST JSON to the stand-in's control API."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _wait_http(server: Server, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise StartError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.1)
    server.stop()
    raise StartError(f"{server.name} not ready at {url} within {timeout} s ({last}):\n{server.tail()}")


def ensure_seed_venv(venv: Path, log=print) -> Path:
    """The seed's own virtualenv (flask-json & co.), made or refreshed from requirements-seed.txt."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed.sha256"
    digest = hashlib.sha256(SEED_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return venv
    log(f"setting up the reference seed's venv in {venv} (pip install -r {SEED_REQUIREMENTS.name})")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(SEED_REQUIREMENTS)], check=True)
    stamp.write_text(digest + "\n")
    return venv


def start_seed(seed_dir: Path, venv: Path, run_dir: Path, bucket: str, standin_url: str, s3_url: str) -> Server:
    """The reference seed under its own gunicorn config, from its own folder, with its own venv."""
    port = free_port()
    env = base_env({
        "AI_S3_BUCKET_NAME": bucket,
        "REFERENCE_SEED_PORT": str(port),
        "REFERENCE_SEED_PIDFILE": str(run_dir / "reference_seed.pid"),
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": standin_url,
        "AWS_ENDPOINT_URL_S3": s3_url,
    })
    command = [str(venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:ai_image_generator"]
    server = _spawn("seed", command, seed_dir, env, run_dir / "seed.log")
    server.url = f"http://127.0.0.1:{port}"
    _wait_http(server, server.url + "/", 60)
    return server


def start_ours(repo: Path, venv_bin: Path, run_dir: Path, bucket: str, standin_url: str, s3_url: str,
               extra_env: dict[str, str], gunicorn_args: str) -> Server:
    """Our service under the repo's gunicorn config: Bedrock + S3 + Rekognition screening, all stand-ins."""
    port = free_port()
    env = base_env(keep_aig=True)
    env.update({
        "AIG_BIND": f"127.0.0.1:{port}",
        "AIG_MODEL": "bedrock",
        "AIG_STORE": "s3",
        "AIG_S3_BUCKET": bucket,
        "AIG_MODERATION": "rekognition",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": standin_url,
        "AWS_ENDPOINT_URL_BEDROCK": standin_url,  # GetFoundationModel (lifecycle), asked at start-up
        "AWS_ENDPOINT_URL_REKOGNITION": standin_url,
        "AWS_ENDPOINT_URL_S3": s3_url,
    })
    env.update(extra_env)
    if gunicorn_args:
        env["GUNICORN_CMD_ARGS"] = gunicorn_args  # gunicorn applies these over the config file
    command = [str(venv_bin / "gunicorn"), "-c", "gunicorn/gunicorn.conf.py", "wsgi:ai_image_generator"]
    server = _spawn("ours", command, repo, env, run_dir / "ours.log")
    server.url = f"http://127.0.0.1:{port}"
    server.extra["env"] = {k: v for k, v in env.items() if k.startswith("AIG_") or k == "GUNICORN_CMD_ARGS"}
    _wait_http(server, server.url + "/readyz", 60)
    return server
