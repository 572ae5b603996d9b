"""What one request did and how long it took, read once and shared by the access log, metrics and Server-Timing."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flask import Flask, Response, g, request

# The pipeline's stages, as the manifest's "timings_ms" names them.
STAGES = ("model", "screening", "store")
GENERATE_ENDPOINT = "generate_images"


@dataclass(frozen=True)
class RequestSummary:
    """One finished request: where it went, its status, its time, and what it made."""

    route: str
    method: str
    status: int
    duration_ms: float
    key_name: str | None = None
    images: int = 0
    flagged: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    failed_codes: tuple[str, ...] = ()
    problem_code: str | None = None
    replayed: bool = False


def install_request_timing(app: Flask) -> None:
    """Time every request and answer its stage times in a Server-Timing header."""
    app.before_request(_start_clock)
    app.after_request(_server_timing)


def _start_clock() -> None:
    g.request_started = time.perf_counter()


def summarize(response: Response) -> RequestSummary:
    """The summary of the current request, made once from its answer."""
    cached = g.get("request_summary")
    if cached is not None:
        return cached
    started = g.get("request_started")
    duration_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    summary = RequestSummary(
        route=request.url_rule.rule if request.url_rule is not None else "unmatched",
        method=request.method,
        status=response.status_code,
        duration_ms=round(duration_ms, 1),
        key_name=g.get("api_key_name"),
        **_outcome(response),
    )
    g.request_summary = summary
    return summary


def _outcome(response: Response) -> dict:
    """What the answer says was made: images, flags, stage times and failure codes."""
    if request.endpoint != GENERATE_ENDPOINT or not response.is_json or response.is_streamed:
        return {}
    if response.headers.get("Idempotent-Replayed") == "true":
        # A replay of an earlier answer made nothing: counting its images again would inflate the totals.
        return {"replayed": True}
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return {}
    if response.status_code >= 400:
        # When every image failed, the problem lists each image's own failure too.
        return {"problem_code": body.get("code"),
                "failed_codes": tuple(e.get("code", "unknown") for e in body.get("image_errors", []))}
    details = body.get("image_details", [])
    timings = body.get("timings_ms", {})
    return {
        "images": len(body.get("images", [])),
        "flagged": sum(1 for d in details if (d.get("moderation") or {}).get("verdict") == "flagged"),
        "stage_ms": {stage: float(timings[stage]) for stage in STAGES if stage in timings},
        "failed_codes": tuple(e.get("code", "unknown") for e in body.get("errors", [])),
    }


def _server_timing(response: Response) -> Response:
    summary = summarize(response)
    parts = [f"{stage};dur={ms:.1f}" for stage, ms in summary.stage_ms.items()]
    parts.append(f"total;dur={summary.duration_ms:.1f}")
    response.headers["Server-Timing"] = ", ".join(parts)
    return response
