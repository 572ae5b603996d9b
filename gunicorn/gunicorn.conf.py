"""gunicorn settings for ai-image-generator.

Run from the service folder:
    gunicorn -c gunicorn/gunicorn.conf.py wsgi:ai_image_generator

Time-out ladder (one table, the same numbers in deploy/nginx and deploy/systemd):
    client (curl --max-time 150)        150 s
    > nginx proxy_read_timeout          120 s
    > app request deadline               90 s  (AIG_REQUEST_DEADLINE_SECONDS)
    > Bedrock boto3 read_timeout         70 s x 1 attempt (the app retries only throttling)
    gunicorn graceful_timeout           100 s  (>= deadline: a restart drains in-flight work)
    systemd TimeoutStopSec              130 s  (> graceful_timeout: systemd never kills a drain)

AIG_BIND, AIG_WORKERS, AIG_THREADS and AIG_WORKER_TMP_DIR override the defaults (tests use
them); everything else is fixed here on purpose.
"""

import os

_LOOPBACK_NAMES = ("localhost",)


def _refuse(message):
    """Stop start-up with one line naming the setting (gunicorn would show a traceback)."""
    raise SystemExit(f"ai-image-generator will not start: {message}")


def _count(name, default, high):
    raw = os.environ.get(name, default)
    try:
        value = int(raw)
    except ValueError:
        _refuse(f"{name} must be a whole number from 1 to {high}, not {raw!r}")
    if not 1 <= value <= high:
        _refuse(f"{name} must be a whole number from 1 to {high}, not {value}")
    return value


# The nginx hosts in front of this instance when nginx is on another host (settings.py checks each).
_PROXIES = [part.strip() for part in os.environ.get("AIG_PROXY_ADDRESSES", "").split(",") if part.strip()]


def _checked_bind(raw):
    """AIG_BIND as host:port (or unix:/path); a public address gets a loud warning, never a trusted proxy."""
    import ipaddress
    import sys

    if raw.startswith("unix:"):
        return raw
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        _refuse(f"AIG_BIND must be host:port with a port from 1 to 65535 (e.g. 127.0.0.1:8080), not {raw!r}")
    host = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_NAMES
    if not loopback:
        if _PROXIES:
            return raw  # several hosts: nginx on another host is this instance's one door (AIG_PROXY_ADDRESSES)
        if os.environ.get("AIG_TRUST_PROXY", "").strip().lower() in ("1", "true", "yes", "on"):
            # Without nginx in front, any caller could write X-Forwarded-For and pick the address its
            # rate limit is counted under.
            _refuse(f"AIG_TRUST_PROXY=1 trusts X-Forwarded-For, which is safe only behind the one proxy on "
                    f"this host; AIG_BIND={raw} faces the network. Bind to 127.0.0.1 behind nginx (or, with "
                    f"nginx on another host, name it in AIG_PROXY_ADDRESSES).")
        print(f"WARNING: AIG_BIND={raw} faces the network without nginx in front: slow clients can hold "
              f"every gunicorn thread, and nothing limits floods. Bind to 127.0.0.1 behind the nginx site "
              f"in deploy/nginx.", file=sys.stderr)
    return raw


# Loopback only: nginx is the one door in; gunicorn never faces the network itself.
bind = _checked_bind(os.environ.get("AIG_BIND", "127.0.0.1:8080"))

# Requests wait 10-60 s on Bedrock/S3/Rekognition I/O, so threads, not processes, carry
# the concurrency. Measured with bench/ (2 cores, 100 simultaneous requests at a 20 s model
# latency, 20 closed-loop clients at 1 s): gevent saved ~10 % CPU per image and ~40 % memory
# against gthread 2 x 64, but the targets were met by the code (the processing gate, cheaper
# screening bodies), and gevent let one worker accept more requests than its model pool could
# serve (a 43 s request). gthread's intake is bounded by its threads once worker_connections
# says so (below), and it needs no monkey patching under boto3. 1 x 128, 3 x 48 and 4 x 32
# were no faster and used more memory.
worker_class = "gthread"

# 2 = one process per core of the target host (2 vCPU); the CPU work per request (PNG
# checks, a blur when flagged) is small next to the waiting.
workers = _count("AIG_WORKERS", "2", 64)

# 64 request threads per process: they mostly sleep while the app's own bounded pool
# (AIG_MODEL_CONCURRENCY) runs the model calls, so 2 x 64 = 128 requests in flight per host.
threads = _count("AIG_THREADS", "64", 1024)

# Worker heartbeat, not a request limit: a gthread worker's main loop notifies the
# arbiter about once a second whatever its request threads are doing, so this only
# catches a wedged main loop. Request length is bounded by the app's own 90 s deadline
# (see the ladder above); 30 s is the gunicorn default, kept.
timeout = 30

# 100 s >= the 90 s app deadline (+10 s to write the manifest and the response), so
# SIGTERM / SIGHUP lets every in-flight paid generation finish before a worker exits.
graceful_timeout = 100

# A gthread worker accepts connections while it holds fewer than worker_connections (1000 by
# default), not while it has a free thread: in a burst one worker could take most of the requests
# and leave them queued for its threads while the other worker idles (measured: 91 of 100). Capped
# at its threads, a worker leaves the rest in the listen queue for a worker with a free thread.
worker_connections = threads

# 0: no keep-alive. nginx talks HTTP/1.0 to us without upstream keep-alive anyway, and with
# worker_connections = threads an idle kept-alive connection would hold a request's place.
keepalive = 0

# The app builds its AWS clients per worker process, after fork (boto3 clients and
# their connection pools must not cross a fork), so the app is imported in each worker.
preload_app = False

# Heartbeat files on a tmpfs: gunicorn fchmod()s them every loop, which can stall on a
# disk-backed /tmp; /dev/shm is also writable under systemd's ProtectSystem=strict.
_tmp_dir = os.environ.get("AIG_WORKER_TMP_DIR", "/dev/shm")
worker_tmp_dir = _tmp_dir if os.path.isdir(_tmp_dir) else None

# gunicorn >= 25.1 opens a control socket under $XDG_RUNTIME_DIR or $HOME by default;
# under ProtectSystem=strict with no home that fails, and nothing here uses gunicornc.
control_socket_disable = True

# Trust X-Forwarded-Proto & co. only from the proxy in front of us: nginx on loopback, or the nginx
# hosts named in AIG_PROXY_ADDRESSES when the web instances run on other hosts than nginx.
forwarded_allow_ips = ",".join(["127.0.0.1", *_PROXIES])

# The name in ps/top and in the journal.
proc_name = "ai-image-generator"

# Logs: one JSON object a line on stdout, the app's own format (web.logging_setup.JsonFormatter),
# so journald holds a single format. gunicorn's access log is off because the app writes a
# richer access line itself: request id, API key name, status, stage times, images, flagged.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("AIG_LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "web.logging_setup.JsonFormatter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "root": {"level": loglevel.upper(), "handlers": []},
    "loggers": {
        # Not propagated: the app's root handler would otherwise print each line a second time.
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"handlers": [], "propagate": False},
    },
}


def on_starting(server):
    """Check the app's settings in the master, before gunicorn binds and tells systemd READY=1.

    Workers import the app only after the fork, so without this a bad value would surface as a
    worker boot loop; here it stops start-up with the setting's own message instead.
    """
    from admin.api_keys import KeyFileError, read_keys
    from settings import Settings, SettingsError  # the service folder is on sys.path (gunicorn chdir)

    try:
        settings = Settings.from_env()
        if settings.api_keys_file:
            read_keys(settings.api_keys_file)  # a broken keys file stops start-up, not each worker
        if settings.uses_aws:
            from backends.aws_clients import session

            session()  # no region: one line naming AWS_REGION here, not a traceback in every worker
    except (SettingsError, KeyFileError) as error:
        _refuse(error)
    _use_private_metrics_dir(server)
    # Imported only now: prometheus_client picks its multiprocess mode when first imported.
    from web.metrics import wipe_multiproc_dir

    # Metrics files of an earlier run would be summed into this run's numbers.
    wipe_multiproc_dir(server)


def _use_private_metrics_dir(server):
    """Metrics right out of the box: with several workers and no PROMETHEUS_MULTIPROC_DIR, make a private one.

    prometheus_client sums workers only through a shared folder. The systemd unit names one; when nobody
    did, this makes one in the master before any worker starts (workers inherit the variable), and
    on_exit removes it.
    """
    import tempfile

    if server.cfg.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        server.aig_private_metrics_dir = tempfile.mkdtemp(prefix="aig-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = server.aig_private_metrics_dir


def on_exit(server):
    """Remove the private metrics folder on_starting made, if it made one."""
    import shutil

    private = getattr(server, "aig_private_metrics_dir", None)
    if private:
        shutil.rmtree(private, ignore_errors=True)


def post_worker_init(worker):
    """gunicorn's own answers to requests it cannot parse (e.g. 431, too many headers) in JSON, like the app's."""
    from web.server_errors import install

    install(worker)


def child_exit(server, worker):
    """Let the metrics forget the live gauges of a worker that exited."""
    from web.metrics import child_exit as forget_worker

    forget_worker(server, worker)


# --- ladder guard -----------------------------------------------------------------
# The deadline is the app's setting; refuse to start if an operator raised it past
# the drain window, instead of letting a restart cut paid generations short.
try:
    _deadline = float(os.environ.get("AIG_REQUEST_DEADLINE_SECONDS", "90"))
except ValueError:
    _deadline = 0.0  # not a number: the app's settings check reports it by name
if _deadline > graceful_timeout:
    raise SystemExit(
        f"AIG_REQUEST_DEADLINE_SECONDS={_deadline:g} exceeds gunicorn graceful_timeout="
        f"{graceful_timeout}; raise graceful_timeout, nginx proxy_read_timeout and systemd "
        "TimeoutStopSec with it (see the time-out ladder in gunicorn/gunicorn.conf.py)"
    )
