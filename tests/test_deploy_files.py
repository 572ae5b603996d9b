"""The deploy files are valid for their tools and agree with each other on the time-out ladder."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import runpy
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from gunicorn.config import Config

from generation.model_registry import BEDROCK_PROFILES, base_model_id
from settings import Settings
from tests.servers import (
    GUNICORN_CONF,
    NGINX_SITE,
    REPO,
    SYSTEMD_UNIT,
    WORKER_UNIT,
    free_port,
    gunicorn_command,
    make_self_signed_cert,
    missing,
    nginx_command,
    require_tool,
    rewrite_site,
    start_gunicorn,
    start_nginx,
    stop,
    write_nginx_conf,
)

pytestmark = pytest.mark.unit

IAM_POLICY = REPO / "deploy" / "iam" / "ai-image-generator-policy.json"
IAM_README = REPO / "deploy" / "iam" / "README.md"
ENV_EXAMPLE = REPO / "deploy" / "env" / "aig.env.example"
INSTALL = REPO / "deploy" / "install.sh"
SERVE = REPO / "scripts" / "serve"
# The client's own time-out in the ladder (curl --max-time 150): outside every file, so fixed here.
CLIENT_TIMEOUT_SECONDS = 150
MAX_EXPOSURE = 2.5
JOB_ID = "0123456789abcdef" * 2  # the shape of a job id: 32 hex digits


def load_gunicorn_conf(**env: str) -> dict:
    """The gunicorn config file's settings, evaluated with only the given AIG_* variables set."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AIG_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        namespace = runpy.run_path(str(GUNICORN_CONF))
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k.islower() and k != "os"}


def seconds(value: str) -> float:
    """An nginx/systemd duration ("120s", "2min", "130") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min)?", value.strip())
    assert match, f"cannot read duration {value!r}"
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "min": 60}[unit]


def nginx_directive(name: str) -> list[str]:
    """Every active (uncommented) value of an nginx directive in the site."""
    return re.findall(rf"^\s*{name}\s+([^;]+);", NGINX_SITE.read_text(), flags=re.M)


def unit_setting(name: str, unit: Path = SYSTEMD_UNIT) -> list[str]:
    """Every value of a systemd unit setting (the web unit's unless another unit is named)."""
    return re.findall(rf"^{name}=(.*)$", unit.read_text(), flags=re.M)


def unit_environment(unit: Path) -> dict[str, str]:
    """The unit's Environment= lines as a dict."""
    return dict(line.split("=", 1) for line in unit_setting("Environment", unit))


def nginx_locations() -> dict[str, list[str]]:
    """Each location of the site (by its match, e.g. "= /jobs") and its active directives, comments dropped."""
    found = {}
    for match, body in re.findall(r"^\s*location\s+([^{]+?)\s*\{([^}]*)\}", NGINX_SITE.read_text(), re.M):
        found[match] = [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    return found


def env_example() -> dict[str, str]:
    """The active KEY=value lines of the env-file example."""
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# --- gunicorn -----------------------------------------------------------------------


def test_gunicorn_conf_uses_only_real_gunicorn_settings():
    conf = load_gunicorn_conf()
    known = Config().settings
    unknown = sorted(set(conf) - set(known))
    assert not unknown, f"not gunicorn settings (typo?): {unknown}"
    cfg = Config()
    for name, value in conf.items():
        cfg.set(name, value)  # runs gunicorn's own validators


def test_gunicorn_conf_has_the_production_values():
    conf = load_gunicorn_conf()
    assert conf["bind"] == "127.0.0.1:8080"
    assert conf["worker_class"] == "gthread"
    assert conf["workers"] == 2
    assert conf["threads"] == 64
    assert conf["control_socket_disable"] is True
    assert conf["forwarded_allow_ips"] == "127.0.0.1"
    assert conf["proc_name"] == "ai-image-generator"
    # The app writes the access line (JSON, with the request id); gunicorn's own lines are JSON too.
    assert conf["accesslog"] is None and conf["errorlog"] == "-"
    assert conf["logconfig_dict"]["formatters"]["json"]["()"] == "web.logging_setup.JsonFormatter"
    assert conf["preload_app"] is False
    assert conf["graceful_timeout"] >= Settings().request_deadline_seconds


def test_gunicorn_conf_worker_tmp_dir_is_a_tmpfs_path_or_default():
    conf = load_gunicorn_conf()
    assert conf["worker_tmp_dir"] in ("/dev/shm", None)


def test_gunicorn_conf_takes_bind_workers_threads_from_env():
    conf = load_gunicorn_conf(AIG_BIND="127.0.0.1:9999", AIG_WORKERS="1", AIG_THREADS="4")
    assert (conf["bind"], conf["workers"], conf["threads"]) == ("127.0.0.1:9999", 1, 4)


def test_gunicorn_conf_refuses_a_deadline_beyond_graceful_timeout():
    with pytest.raises(SystemExit, match="graceful_timeout"):
        load_gunicorn_conf(AIG_REQUEST_DEADLINE_SECONDS="120")


def test_gunicorn_refuses_to_start_with_a_bad_setting_before_binding():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIG_")}
    env.update(AIG_MODEL="bogus", AIG_BIND=f"127.0.0.1:{port}")
    result = subprocess.run([*gunicorn_command()], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "AIG_MODEL must be one of" in output
    assert "Listening at" not in output and "Booting worker" not in output


def run_gunicorn(**aig) -> tuple[int, str]:
    """Run gunicorn with only these AIG_* settings (plus the test's AWS stand-in-free environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIG_", "AWS_"))}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")
    env.update({"AIG_BIND": f"127.0.0.1:{free_port()}", **aig})
    result = subprocess.run([*gunicorn_command()], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(("aig", "words"), [
    ({"AIG_MODEL": "bedrock"}, "no AWS region is configured: set AWS_REGION"),
    ({"AIG_BIND": "127.0.0.1:80800"}, "AIG_BIND must be host:port with a port from 1 to 65535"),
    ({"AIG_WORKERS": "0"}, "AIG_WORKERS must be a whole number from 1 to 64, not 0"),
    ({"AIG_THREADS": "many"}, "AIG_THREADS must be a whole number from 1 to 1024, not 'many'"),
    ({"AIG_BIND": "0.0.0.0:8080", "AIG_TRUST_PROXY": "1"}, "AIG_TRUST_PROXY=1 trusts X-Forwarded-For"),
])
def test_gunicorn_refuses_a_bad_start_up_in_one_line_naming_the_variable(aig, words):
    code, output = run_gunicorn(**aig)
    assert code != 0 and words in output, output
    assert "Traceback" not in output and "Booting worker" not in output


def test_a_network_bind_with_a_trusted_proxy_is_taken_when_the_nginx_hosts_are_named():
    # Several hosts: nginx elsewhere fronts this instance. The bind passes its check (the run then stops
    # at the next check, the zero workers, so nothing listens on the network during the test).
    code, output = run_gunicorn(AIG_BIND="0.0.0.0:1", AIG_TRUST_PROXY="1", AIG_PROXY_ADDRESSES="10.0.0.9",
                                AIG_WORKERS="0")
    assert "AIG_WORKERS must be a whole number" in output
    assert "AIG_TRUST_PROXY=1 trusts X-Forwarded-For" not in output and "faces the network" not in output


def test_a_misspelled_setting_is_warned_about_and_a_public_bind_loudly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIG_")}
    env.update(AIG_MODL="bedrock", AIG_DATA_DIR=str(tmp_path), AIG_WORKERS="1")
    port = free_port()
    proc = start_gunicorn(env, port, tmp_path / "gunicorn.log")
    stop(proc)
    log = (tmp_path / "gunicorn.log").read_text()
    assert "AIG_MODL is set but no setting has that name" in log
    code, output = run_gunicorn(AIG_BIND="0.0.0.0:1", AIG_WORKERS="0")  # warns, then refuses the workers
    assert "faces the network without nginx in front" in output


# --- nginx --------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["as-shipped", "tls-uncommented"])
def test_nginx_site_passes_nginx_t(tmp_path, tls):
    nginx = require_tool("nginx")
    cert_dir = tmp_path / "certs"
    if tls:
        make_self_signed_cert(cert_dir)
    site = rewrite_site(NGINX_SITE.read_text(), nginx_port=free_port(), upstream_port=free_port(),
                        log_dir=tmp_path / "logs", tls_port=free_port() if tls else None, cert_dir=cert_dir)
    if tls:
        assert not re.search(r"^\s*#tls ", site, re.M) and "ssl_certificate " in site
    conf = write_nginx_conf(site, tmp_path)
    result = subprocess.run(nginx_command(nginx, conf, tmp_path, "-t", "-q"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nginx_site_fits_inside_debians_own_nginx_conf(tmp_path):
    # The site as shipped, in a copy of the host's /etc/nginx with the default site disabled, as
    # install.sh leaves it: catches clashes with what Debian's http {} already sets.
    nginx = require_tool("nginx")
    etc = Path("/etc/nginx")
    if not (etc / "nginx.conf").is_file() or not (etc / "sites-enabled").is_dir():
        missing("no Debian-style /etc/nginx on this host")
    copy = tmp_path / "etc-nginx"
    shutil.copytree(etc, copy, symlinks=True)
    (copy / "sites-enabled" / "default").unlink(missing_ok=True)
    (tmp_path / "logs").mkdir()

    def local(text: str) -> str:
        text = text.replace("/etc/nginx/", f"{copy}/")
        if os.geteuid() != 0:  # only root may open the real log and pid paths
            text = text.replace("/var/log/nginx/", f"{tmp_path}/logs/").replace("/run/nginx.pid", f"{tmp_path}/pid")
        return text

    conf = copy / "nginx.conf"
    conf.write_text(local(conf.read_text()))
    (copy / "sites-enabled" / NGINX_SITE.name).write_text(local(NGINX_SITE.read_text()))
    result = subprocess.run(nginx_command(nginx, conf, tmp_path, "-t", "-q"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nginx_site_retries_only_where_nothing_is_resent_and_limits_generation():
    text = NGINX_SITE.read_text()
    # error/timeout only: never an answer the app made (http_*), never a POST nginx began to send
    # (non_idempotent would allow that), and at most one other instance.
    assert nginx_directive("proxy_next_upstream") == ["error timeout"]
    assert nginx_directive("proxy_next_upstream_tries") == ["2"]
    # A retry may follow a failed connect (proxy_connect_timeout) but never a read time-out.
    (next_timeout,) = nginx_directive("proxy_next_upstream_timeout")
    (connect_timeout,) = nginx_directive("proxy_connect_timeout")
    (read_timeout,) = nginx_directive("proxy_read_timeout")
    assert seconds(connect_timeout) < seconds(next_timeout) < seconds(read_timeout)
    assert "ngx_http_proxy_module.html#proxy_next_upstream" in text
    # No upstream keep-alive: a POST down a connection gunicorn just closed would be a 502, never re-sent.
    assert not nginx_directive("keepalive")
    assert nginx_directive("limit_req_status") == ["429"]
    assert re.search(r"location = /generate_images \{[^}]*limit_req zone=aig_generate burst=\d+", text)
    assert re.search(r"^limit_req_zone \$aig_generate_limit_key zone=aig_generate:\S+ rate=\d+r/[sm];", text, re.M)
    for status in ("413", "429", "502", "504"):
        assert re.search(rf"^\s*error_page [\d ]*\b{status}\b[\d ]* @", text, re.M), status
    # 400/494, 414, 413, 429, 502, 504: every answer nginx makes itself is a JSON problem.
    assert text.count("default_type application/problem+json;") == 6
    assert "proxy_set_header X-Request-ID      $aig_request_id;" in text
    assert "rid=$aig_request_id" in text


def test_nginx_sets_forwarded_headers_for_every_location():
    # proxy_set_header in a location would silently drop the server-level ones there; the app
    # relies on X-Forwarded-For being present on every proxied request (it marks "came via nginx").
    text = NGINX_SITE.read_text()
    server_level = re.findall(r"^    proxy_set_header (\S+)\s+(\S+);", text, re.M)
    assert ("X-Forwarded-For", "$remote_addr") in server_level
    assert ("X-Forwarded-Proto", "$scheme") in server_level
    assert not re.search(r"^\s{8,}proxy_set_header", text, re.M)


def test_nginx_request_id_rule_matches_the_apps():
    from ai_image_generator import REQUEST_ID

    nginx_rule = re.search(r'"~\^(.+)\$"\s+\$http_x_request_id;', NGINX_SITE.read_text()).group(1)
    assert nginx_rule == REQUEST_ID.pattern


def test_nginx_body_limit_matches_the_apps():
    server_wide, edits, jobs, openai_uploads = nginx_directive("client_max_body_size")
    assert server_wide == "64k" and edits == jobs == openai_uploads == "20m"
    assert 64 * 1024 == Settings().max_body_bytes == int(env_example()["AIG_MAX_BODY_BYTES"])
    assert 20 * 1024 * 1024 == Settings().max_edit_body_bytes == int(env_example()["AIG_MAX_EDIT_BODY_BYTES"])


def test_nginx_jobs_location_is_the_edit_routes_and_job_ids_take_the_default():
    locations = nginx_locations()
    # POST /jobs carries an /edit_images body at worst and is paid like it: the same limits.
    assert "client_max_body_size 20m;" in locations["= /jobs"]
    assert locations["= /jobs"] == locations["= /edit_images"]
    assert any(line.startswith("limit_req zone=aig_generate ") for line in locations["= /jobs"])
    # GET/DELETE /jobs/<id> and /jobs/webhook-secret: no location of their own, so `location /`.
    assert [match for match in locations if "jobs" in match] == ["= /jobs"]
    assert locations["/"] == ["proxy_pass http://aig_gunicorn;"]


def test_nginx_upstream_has_one_active_instance_and_commented_examples():
    text = NGINX_SITE.read_text()
    upstream = re.search(r"^upstream aig_gunicorn \{(.*?)^\}", text, re.M | re.S).group(1)
    assert re.findall(r"^\s*server\s+(.+);", upstream, re.M) == ["127.0.0.1:8080"]
    examples = re.findall(r"^\s*#\s*server\s+(\S+)\s+(.+);", upstream, re.M)
    assert len(examples) >= 2
    for _, parameters in examples:
        assert re.fullmatch(r"max_fails=\d+ fail_timeout=\d+s", parameters), parameters


def test_rewrite_site_lists_every_upstream_port(tmp_path):
    nginx = require_tool("nginx")
    ports = [free_port(), free_port(), free_port()]
    site = rewrite_site(NGINX_SITE.read_text(), nginx_port=free_port(), upstream_ports=ports, log_dir=tmp_path / "logs")
    assert re.findall(r"^\s*server 127\.0\.0\.1:(\d+);$", site, re.M) == [str(port) for port in ports]
    single = rewrite_site(NGINX_SITE.read_text(), nginx_port=free_port(), upstream_port=ports[0],
                          log_dir=tmp_path / "logs")
    assert re.findall(r"^\s*server 127\.0\.0\.1:(\d+);$", single, re.M) == [str(ports[0])]
    with pytest.raises(TypeError):
        rewrite_site(NGINX_SITE.read_text(), nginx_port=1, upstream_port=2, upstream_ports=[3], log_dir=tmp_path)
    conf = write_nginx_conf(site, tmp_path)
    result = subprocess.run(nginx_command(nginx, conf, tmp_path, "-t", "-q"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


class _Instance(ThreadingHTTPServer):
    """A stand-in web instance on a loopback port: answers 200 JSON, or hangs up unanswered; notes each request."""

    daemon_threads = True

    def __init__(self, hang_up: bool):
        super().__init__(("127.0.0.1", 0), _InstanceHandler)
        self.hang_up = hang_up
        self.seen: list[tuple[str, str, int]] = []  # (method, path, body bytes)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def count(self, method: str) -> int:
        return sum(1 for seen in self.seen if seen[0] == method)


class _InstanceHandler(BaseHTTPRequestHandler):
    def _any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, len(body)))
        if self.server.hang_up:
            # Read the whole request, then close with no answer: nginx cannot tell whether it ran.
            self.close_connection = True
            return
        payload = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def nginx_in_front(tmp_path):
    """start(upstream_ports) -> the port of the repo's nginx site proxying to those ports; stopped after the test."""
    started = []

    def start(upstream_ports: list[int]) -> int:
        port = free_port()
        started.append(start_nginx(NGINX_SITE, port, tmp_path=tmp_path / f"nginx{len(started)}",
                                   upstream_ports=upstream_ports))
        return port

    yield start
    for proc in started:
        stop(proc)


def test_nginx_sends_a_post_to_the_next_instance_when_the_first_refuses(nginx_in_front, tmp_path):
    require_tool("nginx")
    live = _Instance(hang_up=False)
    try:
        port = nginx_in_front([free_port(), live.port])  # the first port has nobody listening
        body = {"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "p"}
        # Round robin tries the dead instance within the first two requests, whichever it starts with.
        statuses = [requests.post(f"http://127.0.0.1:{port}/jobs", json=body, timeout=10).status_code
                    for _ in range(4)]
    finally:
        live.shutdown()
    assert statuses == [200] * 4
    assert live.count("POST") == 4  # each exactly once
    error_log = (tmp_path / "nginx0" / "logs" / "ai-image-generator.error.log").read_text()
    assert "Connection refused" in error_log


@pytest.mark.parametrize(("method", "path", "tries"), [
    ("POST", "/jobs", 1),
    ("POST", "/generate_images", 1),
    ("GET", f"/jobs/{JOB_ID}", 2),
    ("DELETE", f"/jobs/{JOB_ID}", 2),
])
def test_nginx_resends_no_post_that_reached_an_instance(nginx_in_front, method, path, tries):
    require_tool("nginx")
    instances = [_Instance(hang_up=True) for _ in range(3)]
    try:
        port = nginx_in_front([instance.port for instance in instances])
        response = requests.request(method, f"http://127.0.0.1:{port}{path}", timeout=10,
                                    json={"prompt": "x"} if method == "POST" else None)
    finally:
        for instance in instances:
            instance.shutdown()
    # A POST that reached an instance which then hung up is never re-sent (it may be paying);
    # a GET or DELETE goes to one other instance (proxy_next_upstream_tries 2), never to a third.
    assert sum(instance.count(method) for instance in instances) == tries
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"


def test_nginx_takes_edit_sized_jobs_and_small_job_id_requests(nginx_in_front):
    require_tool("nginx")
    live = _Instance(hang_up=False)
    try:
        port = nginx_in_front([live.port])
        big = {"task": "variation", "image": "A" * (1024 * 1024)}
        accepted = requests.post(f"http://127.0.0.1:{port}/jobs", json=big, timeout=10)
        job_path = f"/jobs/{JOB_ID}"
        polled = requests.get(f"http://127.0.0.1:{port}{job_path}", timeout=10)
        cancelled = requests.delete(f"http://127.0.0.1:{port}{job_path}", timeout=10)
        refused = requests.post(f"http://127.0.0.1:{port}{job_path}", data=b"x" * (100 * 1024), timeout=10)
    finally:
        live.shutdown()
    assert accepted.status_code == polled.status_code == cancelled.status_code == 200
    assert ("POST", "/jobs", len(accepted.request.body)) in live.seen
    assert ("GET", job_path, 0) in live.seen and ("DELETE", job_path, 0) in live.seen
    # /jobs/<id> is under the server-wide 64k: nginx refuses it itself, in JSON, before any instance.
    assert refused.status_code == 413 and refused.json()["code"] == "body_too_large"
    assert not [seen for seen in live.seen if seen[0] == "POST" and seen[1] == job_path]


def test_nginx_retry_after_matches_the_rate():
    rate = re.search(r"rate=(\d+)r/m;", NGINX_SITE.read_text()).group(1)
    retry_after = re.search(r"add_header Retry-After (\d+) always;", NGINX_SITE.read_text()).group(1)
    assert int(retry_after) == 60 // int(rate)


# --- systemd ------------------------------------------------------------------------


# Each unit file and the name it is checked under: a template needs an instance name (the "1" of
# `systemctl enable --now ai-image-generator-worker@1`), as systemd itself loads it.
UNITS = {"web": (SYSTEMD_UNIT, SYSTEMD_UNIT.name),
         "worker": (WORKER_UNIT, WORKER_UNIT.name.replace("@.", "@1."))}


def unit_for_this_machine(tmp_path: Path, which: str = "web") -> Path:
    """The unit, as an instance if it is a template, with its /opt paths pointed at this checkout."""
    source, name = UNITS[which]
    executable = re.search(r"^ExecStart=/opt/ai-image-generator/(\S+)", source.read_text(), re.M).group(1)
    if not (REPO / executable).exists():
        missing(f"no {executable} in this checkout")
    path = tmp_path / name
    path.write_text(source.read_text().replace("/opt/ai-image-generator", str(REPO)))
    return path


@pytest.mark.parametrize("which", UNITS)
def test_systemd_unit_passes_verify(tmp_path, which):
    tool = require_tool("systemd-analyze")
    unit = unit_for_this_machine(tmp_path, which)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


@pytest.mark.parametrize("which", UNITS)
def test_systemd_unit_sandbox_scores_at_most_2_5(tmp_path, which):
    tool = require_tool("systemd-analyze")
    unit = tmp_path / UNITS[which][1]
    shutil.copy(UNITS[which][0], unit)
    result = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        missing("systemd-analyze security --offline needs systemd >= 250")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_systemd_unit_runs_gunicorn_as_deployed():
    assert unit_setting("Type") == ["notify"]
    assert unit_setting("ExecStart") == [
        "/opt/ai-image-generator/.venv/bin/gunicorn -c gunicorn/gunicorn.conf.py wsgi:ai_image_generator"]
    assert unit_setting("WorkingDirectory") == ["/opt/ai-image-generator"]
    assert unit_setting("ExecReload") == ["/bin/kill -s HUP $MAINPID"]
    assert unit_setting("KillMode") == ["mixed"]
    assert unit_setting("User") == unit_setting("Group") == ["aig"]
    assert unit_setting("EnvironmentFile") == ["/etc/ai-image-generator/aig.env"]
    assert unit_setting("ProtectSystem") == ["strict"]
    assert "ai-image-generator" in unit_setting("StateDirectory")[0].split()
    assert "AIG_DATA_DIR=/var/lib/ai-image-generator/images" in unit_setting("Environment")


def test_systemd_unit_bounds_memory_and_tasks():
    assert unit_setting("MemoryMax") == ["2G"] and unit_setting("MemoryHigh") == ["1536M"]
    # Two workers of 64 request threads and AIG_MODEL_CONCURRENCY (256) model threads each must fit.
    workers, threads = 2, 64 + Settings.from_env({}).model_concurrency
    assert int(unit_setting("TasksMax")[0]) > workers * threads


def test_worker_unit_runs_the_job_worker_as_deployed():
    assert unit_setting("ExecStart", WORKER_UNIT) == ["/opt/ai-image-generator/.venv/bin/python -m jobs.worker"]
    assert unit_setting("Type", WORKER_UNIT) == ["exec"]
    # SIGTERM to the worker alone: it stops receiving and finishes its running jobs.
    assert unit_setting("KillMode", WORKER_UNIT) == ["mixed"]
    assert unit_setting("KillSignal", WORKER_UNIT) == ["SIGTERM"]
    assert unit_setting("Restart", WORKER_UNIT) == ["on-failure"]
    # A worker has no reload; a HUP would kill it mid-job.
    assert unit_setting("ExecReload", WORKER_UNIT) == []
    assert unit_setting("WantedBy", WORKER_UNIT) == ["multi-user.target"]
    assert WORKER_UNIT.name.endswith("@.service")  # a template: worker@1, worker@2, ...
    for same in ("User", "Group", "WorkingDirectory", "EnvironmentFile", "StateDirectory", "StateDirectoryMode",
                 "UMask", "After", "Wants"):
        assert unit_setting(same, WORKER_UNIT) == unit_setting(same), same


def test_web_and_worker_units_share_the_offline_job_file_and_images():
    web, worker = unit_environment(SYSTEMD_UNIT), unit_environment(WORKER_UNIT)
    for name in ("AIG_JOB_DB", "AIG_DATA_DIR"):
        assert web[name] == worker[name], name
    # In the state directory both units make writable (the code under /opt is read-only).
    state_dirs = unit_setting("StateDirectory")[0].split()
    assert web["AIG_JOB_DB"] == f"/var/lib/{state_dirs[0]}/jobs.sqlite3"
    assert web["AIG_JOB_DB"] == env_example()["AIG_JOB_DB"]
    assert not Path(Settings().job_db).is_absolute()  # why the units must set it
    # The metrics folder is the web unit's RuntimeDirectory, emptied and removed with gunicorn.
    assert "PROMETHEUS_MULTIPROC_DIR" not in worker and not unit_setting("RuntimeDirectory", WORKER_UNIT)


def test_worker_unit_is_sandboxed_like_the_web_unit():
    def sandbox(unit: Path) -> dict[str, list[str]]:
        text = unit.read_text()
        section = text[text.index("# --- sandbox"):text.index("[Install]")]
        names = re.findall(r"^(\w+)=", section, re.M)
        return {name: unit_setting(name, unit) for name in names if name not in ("MemoryHigh", "MemoryMax", "TasksMax")}

    web = sandbox(SYSTEMD_UNIT)
    assert len(web) > 20 and sandbox(WORKER_UNIT) == web


def test_worker_unit_stop_outlasts_a_running_job_and_bounds_memory_and_tasks():
    defaults = Settings()
    (stop_timeout,) = unit_setting("TimeoutStopSec", WORKER_UNIT)
    # A job started before the stop runs to its deadline, then tries its webhook once.
    assert seconds(stop_timeout) > defaults.request_deadline_seconds + defaults.webhook_timeout_seconds
    assert seconds(stop_timeout) == seconds(unit_setting("TimeoutStopSec")[0]) == 130
    # One worker process holds what one of the web's two gunicorn workers does.
    assert unit_setting("MemoryMax", WORKER_UNIT) == ["1G"] and unit_setting("MemoryHigh", WORKER_UNIT) == ["768M"]
    threads = defaults.worker_jobs + defaults.model_concurrency + 2  # jobs, model pool, heartbeat, main
    assert int(unit_setting("TasksMax", WORKER_UNIT)[0]) > threads


# --- the time-out ladder --------------------------------------------------------------


def test_timeout_ladder_is_consistent_across_files():
    gunicorn_conf = load_gunicorn_conf()
    (read_timeout,) = nginx_directive("proxy_read_timeout")
    (stop_timeout,) = unit_setting("TimeoutStopSec")
    env = env_example()
    defaults = Settings()
    nginx_read = seconds(read_timeout)
    deadline = defaults.request_deadline_seconds
    bedrock_read = defaults.bedrock_read_timeout_seconds
    graceful = gunicorn_conf["graceful_timeout"]

    assert float(env["AIG_REQUEST_DEADLINE_SECONDS"]) == deadline == 90
    assert float(env["AIG_BEDROCK_READ_TIMEOUT_SECONDS"]) == bedrock_read == 70
    assert CLIENT_TIMEOUT_SECONDS > nginx_read > deadline > bedrock_read
    assert (nginx_read, graceful, seconds(stop_timeout)) == (120, 100, 130)
    assert seconds(stop_timeout) > graceful >= deadline
    # gthread's heartbeat is not a request limit, but it must not be mistaken for one either.
    assert gunicorn_conf["timeout"] < bedrock_read


# --- IAM ----------------------------------------------------------------------------


def listed(value: str | list[str]) -> list[str]:
    """An IAM Action or Resource, one string or a list, as a list."""
    return [value] if isinstance(value, str) else value


def test_iam_policy_allows_only_the_services_used():
    policy = json.loads(IAM_POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    actions = set()
    for statement in policy["Statement"]:
        actions.update(listed(statement["Action"]))
    assert actions == {"bedrock:InvokeModel", "bedrock:GetFoundationModel", "s3:PutObject", "s3:PutObjectTagging",
                       "s3:GetObject", "s3:ListBucket", "s3:DeleteObject", "rekognition:DetectModerationLabels",
                       "sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                       "sqs:ChangeMessageVisibility",
                       "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DescribeTable"}


def test_iam_policy_grants_the_jobs_on_the_one_queue_and_table():
    statements = {s["Sid"]: s for s in json.loads(IAM_POLICY.read_text())["Statement"]}
    queue, table = "arn:aws:sqs:${REGION}:${ACCOUNT}:${QUEUE}", "arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${TABLE}"
    expected = {
        # The web queues jobs and checks the queue is there; the worker also queues webhook retries.
        "QueueJobs": ({"sqs:SendMessage", "sqs:GetQueueAttributes"}, queue),
        # The worker alone receives, deletes and keeps messages hidden; a web-only role leaves this out.
        "RunJobs": ({"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"}, queue),
        "KeepJobStates": ({"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DescribeTable"},
                          table),
    }
    for sid, (actions, resource) in expected.items():
        statement = statements[sid]
        assert statement["Effect"] == "Allow" and "Condition" not in statement, sid
        assert set(listed(statement["Action"])) == actions, sid
        assert listed(statement["Resource"]) == [resource], sid


def test_iam_policy_lets_jobs_keep_their_requests_and_secret_in_the_store():
    # POST /jobs writes <prefix>.jobs/<id>.request.json; the worker reads it. The webhook secret too.
    policy = json.loads(IAM_POLICY.read_text())
    for key in ("${PREFIX}.jobs/0123.request.json", "${PREFIX}.signing/webhook-secret"):
        arn = f"arn:aws:s3:::${{BUCKET}}/{key}"
        for action in ("s3:PutObject", "s3:PutObjectTagging", "s3:GetObject"):
            effects = {s["Effect"] for s in policy["Statement"] if action in listed(s["Action"])
                       and "Condition" not in s and any(fnmatch.fnmatchcase(arn, r) for r in listed(s["Resource"]))}
            assert effects == {"Allow"}, (key, action, effects)


def test_iam_policy_scopes_each_resource():
    policy = json.loads(IAM_POLICY.read_text())
    allowed = {}
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        for action in actions:
            allowed.setdefault(action, set()).update(resources)
    # Every model of the registry, each in the region it is called in (Stability: us-west-2 only), and
    # lifecycle questions about exactly those.
    # Amazon's models are called wherever AWS_REGION or the registry says (Nova and Titan differ), so any region.
    models = {f"arn:aws:bedrock:{'us-west-2' if p.family == 'stability' else '*'}::foundation-model/"
              f"{p.model_id}" for p in BEDROCK_PROFILES if p.family != "stability_service"}
    # An Image Service is a cross-region profile: the profile, and its model in any destination region.
    services = {f"arn:aws:bedrock:*::foundation-model/{base_model_id(p.model_id)}"
                for p in BEDROCK_PROFILES if p.family == "stability_service"}
    profiles = {f"arn:aws:bedrock:*:${{ACCOUNT}}:inference-profile/{p.model_id}"
                for p in BEDROCK_PROFILES if p.family == "stability_service"}
    assert allowed["bedrock:InvokeModel"] == models | services | profiles
    assert allowed["bedrock:GetFoundationModel"] == models | services
    assert allowed["rekognition:DetectModerationLabels"] == {"*"}
    for action in ("s3:PutObject", "s3:GetObject", "s3:ListBucket"):
        for resource in allowed[action]:
            assert resource.startswith("arn:aws:s3:::${BUCKET}"), resource
    assert allowed["s3:GetObject"] == {"arn:aws:s3:::${BUCKET}/${PREFIX}*"}
    # The only deletes are of idempotency claims and started records, never of images.
    assert allowed["s3:DeleteObject"] == {"arn:aws:s3:::${BUCKET}/${PREFIX}.idempotency/*",
                                          "arn:aws:s3:::${BUCKET}/${PREFIX}*/.requests/*.started.json"}


def test_iam_placeholders_are_documented():
    placeholders = set(re.findall(r"\$\{[A-Z_]+\}", IAM_POLICY.read_text()))
    assert placeholders == {"${ACCOUNT}", "${BUCKET}", "${PREFIX}", "${QUARANTINE_PREFIX}",
                            "${REGION}", "${QUEUE}", "${TABLE}"}
    readme = IAM_README.read_text()
    for placeholder in placeholders:
        assert f"`{placeholder}`" in readme, placeholder
    # The README's sed line replaces every one of them, so its output is a policy IAM accepts.
    assert set(re.findall(r"-e 's/(\$\{[A-Z_]+\})/", readme)) == placeholders
    for sid in ("QueueJobs", "RunJobs", "KeepJobStates"):
        assert f"`{sid}`" in readme, sid


# --- env file -----------------------------------------------------------------------


def test_env_example_names_every_setting_and_loads():
    env = env_example()
    names = {"AIG_" + name.upper() for name in Settings.__dataclass_fields__}
    text = ENV_EXAMPLE.read_text()
    absent = sorted(name for name in names if not re.search(rf"^#? ?{name}=", text, re.M))
    assert not absent, f"settings missing from {ENV_EXAMPLE.name}: {absent}"
    for name in ("AIG_BIND", "AIG_WORKERS", "AIG_THREADS"):
        assert name in env
    settings = Settings.from_env(env)
    assert settings.offline
    # Every value shown is the app's default, except the data folder (in the state dir) and
    # trusting the one proxy (nginx is always in front once installed).
    differing = {name for name in Settings.__dataclass_fields__
                 if getattr(settings, name) != getattr(Settings(), name)}
    # The job file too: its default is relative to the read-only /opt tree.
    assert differing == {"data_dir", "trust_proxy", "job_db"}
    assert settings.trust_proxy is True
    assert settings.data_dir == "/var/lib/ai-image-generator/images"
    assert settings.job_db == "/var/lib/ai-image-generator/jobs.sqlite3"
    for production in ("AIG_MODEL=bedrock", "AIG_STORE=s3", "AIG_MODERATION=rekognition", "AWS_REGION=",
                       "AIG_API_KEYS_FILE=", "AIG_JOBS=aws", "AIG_SQS_QUEUE_URL=", "AIG_DYNAMODB_TABLE="):
        assert f"# PRODUCTION: {production}" in text


# --- installer ----------------------------------------------------------------------


def test_install_script_parses():
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_install_script_passes_shellcheck():
    tool = require_tool("shellcheck")
    result = subprocess.run([tool, str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_install_dry_run_lists_every_step_and_changes_nothing(tmp_path):
    result = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True, text=True,
                            env={**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    expected = [
        "apt-get install -y -q python3-venv nginx",
        "user aig",
        "rsync -a --delete",
        "--exclude=.venv/", "--exclude=.git/", "--exclude=tests/",
        "/opt/ai-image-generator/.venv/bin/pip install",
        "-r /opt/ai-image-generator/requirements.txt",
        "/etc/ai-image-generator/aig.env",
        "/etc/systemd/system/ai-image-generator.service",
        "deploy/systemd/ai-image-generator-worker@.service /etc/systemd/system/ai-image-generator-worker@.service",
        "/etc/nginx/sites-available/ai-image-generator.conf",
        "ln -sfn /etc/nginx/sites-available/ai-image-generator.conf /etc/nginx/sites-enabled/",
        "rm -f /etc/nginx/sites-enabled/default",
        "+ nginx -t",
        "systemctl daemon-reload",
        "systemctl enable ai-image-generator.service",
        "systemctl reload-or-restart ai-image-generator.service",
        "systemctl reload-or-restart nginx.service",
        "systemctl enable ai-image-generator-worker@1.service\n",
        "systemctl restart ai-image-generator-worker@1.service\n",
        "/healthz",
        "dry run: nothing was changed",
    ]
    for fragment in expected:
        assert fragment in out, fragment
    assert "venv" in out and ("python3 -m venv" in out or "venv exists" in out)


def install_dry_run(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--dry-run", *options], capture_output=True, text=True,
                          env={**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def worker_lines(out: str, verb: str) -> list[str]:
    """The worker instances a dry run would `systemctl <verb>`."""
    return [line.split(f"systemctl {verb} ", 1)[1].split() for line in out.splitlines()
            if line.startswith(f"+ systemctl {verb} ai-image-generator-worker@")]


@pytest.mark.parametrize(("options", "instances"), [
    ((), ["ai-image-generator-worker@1.service"]),
    (("--workers", "3"), [f"ai-image-generator-worker@{n}.service" for n in (1, 2, 3)]),
    (("--workers=2",), [f"ai-image-generator-worker@{n}.service" for n in (1, 2)]),
    (("--workers", "0"), []),
])
def test_install_dry_run_installs_the_worker_template_and_enables_n_workers(options, instances):
    result = install_dry_run(*options)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The template is installed even with no worker here, so `systemctl enable --now ...@N` works later.
    assert re.search(r"^\+ install -m 0644 -o root -g root \S+/deploy/systemd/ai-image-generator-worker@\.service "
                     r"/etc/systemd/system/ai-image-generator-worker@\.service$", out, re.M)
    # Installed before daemon-reload, enabled and (re)started after it.
    assert out.index("ai-image-generator-worker@.service") < out.index("systemctl daemon-reload")
    assert worker_lines(out, "enable") == ([instances] if instances else [])
    # Restarted one after another, so the others keep taking jobs while one drains.
    assert worker_lines(out, "restart") == [[instance] for instance in instances]
    assert f"{len(instances)} job worker(s)" in out


@pytest.mark.parametrize("options", [("--frobnicate",), ("--workers",), ("--workers", "many"), ("--workers", "65"),
                                     ("--workers=-1",)])
def test_install_refuses_unknown_options_and_bad_worker_counts(options):
    result = install_dry_run(*options)
    assert result.returncode == 2, result.stdout
    assert "dry run" not in result.stdout


# --- scripts/serve --------------------------------------------------------------------


def test_serve_script_parses_and_passes_shellcheck():
    result = subprocess.run(["bash", "-n", str(SERVE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tool = require_tool("shellcheck")
    result = subprocess.run([tool, "-x", str(SERVE)], capture_output=True, text=True, cwd=SERVE.parent)
    assert result.returncode == 0, result.stdout


def test_serve_script_runs_one_job_worker_beside_gunicorn():
    text = SERVE.read_text()
    assert '"$VENV/bin/python" -m jobs.worker &' in text
    # gunicorn is run, not exec'd, when the worker runs: the script stays to stop the worker after it.
    assert re.search(r'^"\$VENV/bin/gunicorn" .*"\$@" &$', text, re.M)
    assert re.search(r"^trap .*stop_both.* INT$", text, re.M) and re.search(r"^trap .*stop_both.* TERM$", text, re.M)
    assert 'AIG_SERVE_WORKER:-1}" = "0"' in text

