"""The deploy files are valid for their tools and agree with each other on the time-out ladder."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
from gunicorn.config import Config

from generation.model_registry import BEDROCK_PROFILES, base_model_id
from settings import Settings
from tests.servers import (
    GUNICORN_CONF,
    NGINX_SITE,
    REPO,
    SYSTEMD_UNIT,
    free_port,
    gunicorn_command,
    make_self_signed_cert,
    missing,
    nginx_command,
    require_tool,
    rewrite_site,
    start_gunicorn,
    stop,
    write_nginx_conf,
)

pytestmark = pytest.mark.unit

IAM_POLICY = REPO / "deploy" / "iam" / "ai-image-generator-policy.json"
IAM_README = REPO / "deploy" / "iam" / "README.md"
ENV_EXAMPLE = REPO / "deploy" / "env" / "aig.env.example"
INSTALL = REPO / "deploy" / "install.sh"
# The client's own time-out in the ladder (curl --max-time 150): outside every file, so fixed here.
CLIENT_TIMEOUT_SECONDS = 150
MAX_EXPOSURE = 2.5


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


def unit_setting(name: str) -> list[str]:
    """Every value of a systemd unit setting."""
    return re.findall(rf"^{name}=(.*)$", SYSTEMD_UNIT.read_text(), flags=re.M)


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


def test_nginx_site_never_retries_and_limits_generation():
    text = NGINX_SITE.read_text()
    assert nginx_directive("proxy_next_upstream") == ["off"]
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
    server_wide, edits, openai_uploads = nginx_directive("client_max_body_size")
    assert server_wide == "64k" and edits == openai_uploads == "20m"
    assert 64 * 1024 == Settings().max_body_bytes == int(env_example()["AIG_MAX_BODY_BYTES"])
    assert 20 * 1024 * 1024 == Settings().max_edit_body_bytes == int(env_example()["AIG_MAX_EDIT_BODY_BYTES"])


def test_nginx_retry_after_matches_the_rate():
    rate = re.search(r"rate=(\d+)r/m;", NGINX_SITE.read_text()).group(1)
    retry_after = re.search(r"add_header Retry-After (\d+) always;", NGINX_SITE.read_text()).group(1)
    assert int(retry_after) == 60 // int(rate)


# --- systemd ------------------------------------------------------------------------


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with its /opt paths pointed at this checkout, so verify finds an executable."""
    if not (REPO / ".venv" / "bin" / "gunicorn").exists():
        missing("no .venv/bin/gunicorn in this checkout")
    text = SYSTEMD_UNIT.read_text().replace("/opt/ai-image-generator", str(REPO))
    path = tmp_path / SYSTEMD_UNIT.name
    path.write_text(text)
    return path


def test_systemd_unit_passes_verify(tmp_path):
    tool = require_tool("systemd-analyze")
    unit = unit_for_this_machine(tmp_path)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_systemd_unit_sandbox_scores_at_most_2_5():
    tool = require_tool("systemd-analyze")
    result = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(SYSTEMD_UNIT)],
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


def test_iam_policy_allows_only_the_three_services():
    policy = json.loads(IAM_POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    actions = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    assert actions == {"bedrock:InvokeModel", "bedrock:GetFoundationModel", "s3:PutObject", "s3:PutObjectTagging",
                       "s3:GetObject", "s3:ListBucket", "s3:DeleteObject", "rekognition:DetectModerationLabels"}


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
    assert placeholders == {"${ACCOUNT}", "${BUCKET}", "${PREFIX}", "${QUARANTINE_PREFIX}"}
    readme = IAM_README.read_text()
    for placeholder in placeholders:
        assert f"`{placeholder}`" in readme, placeholder


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
    assert differing == {"data_dir", "trust_proxy"}
    assert settings.trust_proxy is True
    assert settings.data_dir == "/var/lib/ai-image-generator/images"
    for production in ("AIG_MODEL=bedrock", "AIG_STORE=s3", "AIG_MODERATION=rekognition", "AWS_REGION=",
                       "AIG_API_KEYS_FILE="):
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
        "/etc/nginx/sites-available/ai-image-generator.conf",
        "ln -sfn /etc/nginx/sites-available/ai-image-generator.conf /etc/nginx/sites-enabled/",
        "rm -f /etc/nginx/sites-enabled/default",
        "+ nginx -t",
        "systemctl daemon-reload",
        "systemctl enable ai-image-generator.service",
        "systemctl reload-or-restart ai-image-generator.service",
        "systemctl reload-or-restart nginx.service",
        "/healthz",
        "dry run: nothing was changed",
    ]
    for fragment in expected:
        assert fragment in out, fragment
    assert "venv" in out and ("python3 -m venv" in out or "venv exists" in out)


def test_install_refuses_unknown_options():
    result = subprocess.run(["bash", str(INSTALL), "--frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2

