"""One JSON error shape for every failure, and the one table that maps error codes to HTTP statuses."""

from __future__ import annotations

import json

from flask import Response, g

from generation.errors import ServiceError

PROBLEM_JSON = "application/problem+json"

# code -> (HTTP status, title). Every ServiceError code is here; a test keeps it so.
STATUSES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "Invalid request"),
    "content_filtered": (400, "Blocked by the model's content filter"),
    "input_flagged": (400, "The input image was flagged by screening"),
    "source_not_found": (404, "No such source image"),
    "job_not_found": (404, "No such job"),
    "job_not_cancellable": (409, "The job can no longer be cancelled"),
    "idempotency_in_progress": (409, "A request with this Idempotency-Key is still running"),
    "idempotency_key_reused": (422, "Idempotency-Key reused with a different request"),
    "model_throttled": (429, "The image model is throttling requests"),
    "internal_error": (500, "Internal error"),
    "model_failed": (502, "The image model failed"),
    "model_unavailable": (503, "The image model is not available"),
    "jobs_unavailable": (503, "The job queue is not available"),
    "model_busy": (503, "The image model is temporarily unavailable"),
    "screening_failed": (503, "Image screening failed"),
    "store_failed": (503, "Storing the image failed"),
    "model_timeout": (504, "The image model timed out"),
    "deadline_exceeded": (504, "The request's deadline passed"),
}


def status_of(code: str) -> int:
    """The HTTP status of an error code (500 for a code the table lacks)."""
    return STATUSES.get(code, STATUSES["internal_error"])[0]


def json_response(payload, status: int = 200, content_type: str = "application/json") -> Response:
    """A JSON answer."""
    # A final newline, so a shell prompt does not stick to curl's output.
    return Response(json.dumps(payload) + "\n", status=status, content_type=content_type)


def problem_body(status: int, title: str, detail: str, code: str, **extra) -> dict:
    """One JSON error shape for every failure (RFC 9457 problem details plus a code and the request id)."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code,
            "request_id": g.get("request_id", "")}
    body.update(extra)
    return body


def problem(status: int, title: str, detail: str, code: str, **extra) -> Response:
    """A problem answer; see problem_body. Its code is kept for the request's summary (logs, metrics)."""
    g.problem_code = code
    return json_response(problem_body(status, title, detail, code, **extra), status, PROBLEM_JSON)


def service_error_body(error: ServiceError) -> dict:
    """The problem body of a domain error, its status and title from the table."""
    status, title = STATUSES.get(error.code, STATUSES["internal_error"])
    return problem_body(status, title, error.detail, error.code, **error_extra(error))


def error_json(error: ServiceError) -> dict:
    """A domain error outside a request (a job's error): code, status, detail and its extras."""
    return {"code": error.code, "status": status_of(error.code), "detail": error.detail, **error_extra(error)}


def error_extra(error: ServiceError) -> dict:
    """An error's own fields, and when every image failed, each image's failure, for the caller."""
    extra = dict(error.extra)
    if error.result is not None:
        extra["image_errors"] = [image_error_json(r) for r in error.result.failed]
    return extra


def image_error_json(result) -> dict:
    """One failed image of a request, as the manifest and problem answers list it."""
    return {"index": result.index, "seed": result.seed, "status": status_of(result.error.code),
            "code": result.error.code, "detail": result.error.detail}
