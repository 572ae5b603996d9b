"""Start the real gunicorn (with the repo's config) and the real nginx (with the repo's site) for tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO / "gunicorn" / "gunicorn.conf.py"
NGINX_SITE = REPO / "deploy" / "nginx" / "ai-image-generator.conf"
SYSTEMD_UNIT = REPO / "deploy" / "systemd" / "ai-image-generator.service"
WORKER_UNIT = REPO / "deploy" / "systemd" / "ai-image-generator-worker@.service"
# The site's one active upstream line, which rewrite_site replaces by one line per test port.
UPSTREAM_LINE = re.compile(r"^([ \t]*)server 127\.0\.0\.1:8080;$", re.M)
# Debian puts nginx and systemd tools in /usr/sbin, which is not on a normal user's PATH.
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_tool(name: str) -> str | None:
    """The path of a command-line tool, looking in the sbin folders too."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_tool(name: str) -> str:
    """The tool's path; skip the test when it is absent, or fail when AIG_REQUIRE_DEPLOY_TOOLS is set (CI)."""
    path = find_tool(name)
    if path is None:
        missing(f"{name} is not installed")
    return path


def missing(reason: str):
    """Skip for a missing tool or feature, unless CI demands every deploy tool (then fail)."""
    if os.environ.get("AIG_REQUIRE_DEPLOY_TOOLS"):
        pytest.fail(f"{reason} (AIG_REQUIRE_DEPLOY_TOOLS is set)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"port {port} not open after {timeout} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def gunicorn_command() -> list[str]:
    """gunicorn with the repo's config serving the app, as the systemd unit runs it."""
    # The console script of the interpreter running the tests (the project's venv).
    script = Path(sys.executable).parent / "gunicorn"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    return [*launcher, "-c", str(GUNICORN_CONF), "wsgi:ai_image_generator"]


def start_gunicorn(env: dict[str, str], port: int, log_path: Path, timeout: float = 20.0) -> subprocess.Popen:
    """Start gunicorn on 127.0.0.1:port with the repo's config; return once /healthz answers 200.

    `env` adds to (and overrides) the test's environment minus any AIG_* variable, so the outer
    shell cannot change what a test runs with. Output (access and error logs) goes to log_path.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AIG_")}
    full_env.update(env)
    full_env["AIG_BIND"] = f"127.0.0.1:{port}"
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log = open(log_path, "ab")  # handed to the child; stop() closes it
    proc = subprocess.Popen(gunicorn_command(), cwd=REPO, env=full_env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_file = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"gunicorn not healthy after {timeout} s:\n{_tail(log_path)}")


def _upstream_ports(upstream_port: int | None, upstream_ports: Sequence[int] | None) -> list[int]:
    """The one port, or the several ports, a caller gave (exactly one of the two)."""
    if (upstream_port is None) == (upstream_ports is None):
        raise TypeError("give upstream_port or upstream_ports, not both or neither")
    ports = [upstream_port] if upstream_port is not None else list(upstream_ports)
    if not ports:
        raise ValueError("upstream_ports is empty: nginx needs at least one server")
    return ports


def rewrite_site(text: str, *, nginx_port: int, log_dir: Path, upstream_port: int | None = None,
                 upstream_ports: Sequence[int] | None = None,
                 tls_port: int | None = None, cert_dir: Path | None = None) -> str:
    """The repo's site with only its ports (to loopback ones) and log paths (to log_dir) changed.

    The upstream's one active `server 127.0.0.1:8080;` line becomes one `server 127.0.0.1:<port>;`
    line per port: upstream_port for one instance, upstream_ports for several. With tls_port, the
    "#tls " lines are uncommented (as the operator would) and point at cert_dir/fullchain.pem and
    cert_dir/privkey.pem.
    """
    ports = _upstream_ports(upstream_port, upstream_ports)
    out = text.replace("listen 80 default_server;", f"listen 127.0.0.1:{nginx_port} default_server;")
    out = re.sub(r"^\s*listen \[::\]:80 .*$\n", "", out, flags=re.M)
    out, found = UPSTREAM_LINE.subn(
        lambda m: "\n".join(f"{m.group(1)}server 127.0.0.1:{port};" for port in ports), out)
    if found != 1:
        raise ValueError(f"the site has {found} active 'server 127.0.0.1:8080;' lines, not one")
    out = out.replace("/var/log/nginx/", f"{log_dir}/")
    if tls_port is not None:
        out = re.sub(r"^(\s*)#tls ", r"\1", out, flags=re.M)
        out = out.replace("listen 443 ssl default_server;", f"listen 127.0.0.1:{tls_port} ssl default_server;")
        out = re.sub(r"^\s*listen \[::\]:443 .*$\n", "", out, flags=re.M)
        out = re.sub(r"/etc/letsencrypt/live/[^/]+/", f"{cert_dir}/", out)
    return out


def write_nginx_conf(site_text: str, workdir: Path, connections: int = 256, error_level: str = "info") -> Path:
    """A minimal nginx.conf in workdir that includes the (rewritten) site inside http {}, as Debian's does.

    `connections`: nginx's worker_connections (a proxied client holds two); bench.scale asks for more.
    """
    for sub in ("logs", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    site = workdir / "ai-image-generator.conf"
    site.write_text(site_text)
    conf = workdir / "nginx.conf"
    # As root, nginx's workers would drop to "nobody", who cannot enter pytest's 0700 tmp folders.
    user = "user root root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile {2 * connections};
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log {error_level};
events {{ worker_connections {connections}; }}
http {{
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    access_log off;
    include {site};
}}
""")
    return conf


def nginx_command(nginx: str, conf: Path, workdir: Path, *extra: str) -> list[str]:
    """nginx run on conf with workdir as its prefix and, where supported, its start-up error log there too."""
    command = [nginx, "-p", f"{workdir}/", "-c", str(conf)]
    if _nginx_version(nginx) >= (1, 19, 5):  # -e (early error log) is new in 1.19.5
        command += ["-e", f"{workdir}/logs/error.log"]
    return [*command, *extra]


def _nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def make_self_signed_cert(cert_dir: Path) -> None:
    """fullchain.pem and privkey.pem for localhost, valid one day (the TLS block only needs to load)."""
    openssl = require_tool("openssl")
    cert_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(cert_dir / "privkey.pem"),
                    "-out", str(cert_dir / "fullchain.pem")], check=True, capture_output=True)


def start_nginx(site_path: Path, nginx_port: int, upstream_port: int | None = None, tmp_path: Path | None = None,
                timeout: float = 10.0, *, upstream_ports: Sequence[int] | None = None) -> subprocess.Popen:
    """Run the real nginx in the foreground with the site rewritten for loopback ports and tmp_path.

    upstream_port is the one web instance; upstream_ports lists several (nginx's upstream gets one
    line each, in that order). The access log lands in tmp_path/logs/ai-image-generator.access.log.
    """
    if tmp_path is None:
        raise TypeError("start_nginx needs tmp_path")
    nginx = require_tool("nginx")
    workdir = tmp_path
    site = rewrite_site(Path(site_path).read_text(), nginx_port=nginx_port, upstream_port=upstream_port,
                        upstream_ports=upstream_ports, log_dir=workdir / "logs")
    conf = write_nginx_conf(site, workdir)
    log_path = workdir / "logs" / "nginx.out"
    log = open(log_path, "ab")  # stop() closes it
    proc = subprocess.Popen(nginx_command(nginx, conf, workdir), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log_file = log  # type: ignore[attr-defined]
    try:
        _wait_for_port(nginx_port, proc, workdir / "logs" / "error.log", timeout)
    except RuntimeError:
        log.close()
        raise
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a server started here: signal it, wait, then SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        # Its own session (start_new_session): the group id is its pid; this reaps orphaned workers.
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=5)
    log_file = getattr(proc, "log_file", None)
    if log_file is not None:
        log_file.close()
