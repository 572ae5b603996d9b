"""What one request did and how long it took: made once from the typed result, read by logs, metrics, Server-Timing."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flask import Flask, Response, g, request

# The routes whose failures the metrics count as failed generations.
GENERATION_ENDPOINTS = frozenset({"generate_images", "edit_images", "openai.generations", "openai.edits",
                                  "openai.variations", "jobs.submit"})


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
        **_outcome(),
    )
    g.request_summary = summary
    return summary


def _outcome() -> dict:
    """What the request made, from the typed result the route (or its error handler) left in `g`."""
    if g.get("replayed"):
        # A replay of an earlier answer made nothing: counting its images again would inflate the totals.
        return {"replayed": True}
    outcome = {"problem_code": g.get("problem_code") if request.endpoint in GENERATION_ENDPOINTS else None}
    result = g.get("generation")
    if result is not None:
        outcome.update(images=len(result.stored), flagged=result.flagged,
                       failed_codes=tuple(r.error.code for r in result.failed))
        if result.stored:
            outcome["stage_ms"] = dict(result.timings_ms)
    return outcome


def _server_timing(response: Response) -> Response:
    summary = summarize(response)
    parts = [f"{stage};dur={ms:.1f}" for stage, ms in summary.stage_ms.items()]
    parts.append(f"total;dur={summary.duration_ms:.1f}")
    response.headers["Server-Timing"] = ", ".join(parts)
    return response
