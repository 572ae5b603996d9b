"""Prometheus metrics at /metrics, summed over every gunicorn worker when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import glob
import hmac
import logging
import os

from flask import Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from settings import Settings
from web.client_address import from_this_host
from web.problems import problem
from web.request_summary import RequestSummary, summarize

log = logging.getLogger("ai_image_generator.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Up to 120 s: nginx's proxy_read_timeout, the longest a request can last from the outside.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
THROTTLED = "model_throttled"
_process_metrics: Metrics | None = None


class Metrics:
    """The service's counters and histograms."""

    def __init__(self, registry: CollectorRegistry | None):
        self.requests = Counter("aig_http_requests", "Requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.request_seconds = Histogram("aig_http_request_duration_seconds", "Time to answer a request.",
                                         ["route"], buckets=SECONDS_BUCKETS, registry=registry)
        self.stage_seconds = Histogram("aig_stage_duration_seconds",
                                       "Wall time of a pipeline stage (model, screening, store) in one request.",
                                       ["stage"], buckets=SECONDS_BUCKETS, registry=registry)
        self.images = Counter("aig_images_generated", "Images generated, screened and stored.", registry=registry)
        self.flagged = Counter("aig_images_flagged", "Images the screener flagged (published blurred).",
                               registry=registry)
        self.images_failed = Counter("aig_images_failed", "Images that failed, by error code.",
                                     ["reason"], registry=registry)
        self.generation_failures = Counter("aig_generation_failures",
                                           "POST /generate_images answered with an error, by error code.",
                                           ["reason"], registry=registry)
        self.throttles = Counter("aig_bedrock_throttles",
                                 "Image calls that ended throttled by the model (code model_throttled).",
                                 registry=registry)

    def observe(self, s: RequestSummary) -> None:
        """Count one finished request."""
        self.requests.labels(s.route, s.method, str(s.status)).inc()
        self.request_seconds.labels(s.route).observe(s.duration_ms / 1000)
        for stage, ms in s.stage_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000)
        if s.images:
            self.images.inc(s.images)
        if s.flagged:
            self.flagged.inc(s.flagged)
        for code in s.failed_codes:
            self.images_failed.labels(code).inc()
        if s.problem_code:
            self.generation_failures.labels(s.problem_code).inc()
        # Each throttled image once: from its own failure when the answer lists them, else from the cause.
        throttled = s.failed_codes.count(THROTTLED) or int(s.problem_code == THROTTLED)
        if throttled:
            self.throttles.inc(throttled)


def multiprocess_mode() -> bool:
    """True when the metrics live in PROMETHEUS_MULTIPROC_DIR, shared by the workers of one host."""
    return bool(os.environ.get(MULTIPROC_ENV))


def install_metrics(app: Flask, settings: Settings) -> Metrics:
    """Count every request and serve /metrics to loopback callers or holders of AIG_METRICS_KEY."""
    global _process_metrics
    if multiprocess_mode():
        # The values live in files named by metric and pid: one set of metric objects per process.
        if _process_metrics is None:
            _process_metrics = Metrics(registry=None)
        metrics, registry = _process_metrics, None
    else:
        # One gunicorn worker (or a test): a registry per app keeps apps apart.
        registry = CollectorRegistry()
        metrics = Metrics(registry)
    app.extensions["aig_metrics"] = {"metrics": metrics, "registry": registry,
                                     "key": settings.metrics_key}
    app.after_request(_count)
    app.add_url_rule("/metrics", "metrics", metrics_view)
    return metrics


def _count(response: Response) -> Response:
    current_app.extensions["aig_metrics"]["metrics"].observe(summarize(response))
    return response


def metrics_view():
    """The Prometheus text exposition, for this host's workers together."""
    state = current_app.extensions["aig_metrics"]
    if not (from_this_host() or _has_metrics_key(state["key"])):
        return _refused(state["key"])
    registry = state["registry"]
    if registry is None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _has_metrics_key(expected: str) -> bool:
    auth = request.authorization
    presented = auth.token if auth is not None and auth.type == "bearer" and auth.token else ""
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


def _refused(expected: str) -> Response:
    if expected:
        response = problem(401, "Unauthorized", "/metrics needs the metrics key as a Bearer token",
                           "metrics_key_required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return problem(403, "Forbidden", "/metrics is served to this host only (set AIG_METRICS_KEY to "
                   "scrape it from elsewhere)", "metrics_forbidden")


def wipe_multiproc_dir(server=None) -> None:
    """For gunicorn's on_starting: empty PROMETHEUS_MULTIPROC_DIR before any worker starts, as prometheus_client asks.

    Left over from an earlier run, its files would be summed into this run's numbers.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)


def child_exit(server, worker) -> None:
    """gunicorn hook: let prometheus_client drop the live gauges of a worker that exited."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(worker.pid)
