"""The service's own errors, each with a stable code; adapters translate vendor errors into these.

Which HTTP status and title a code gets is the HTTP layer's business: one table in web/problems.py.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error with a stable code and a message fit for the caller."""

    code = "internal_error"

    def __init__(self, detail: str, *, retry_after: float | None = None, **extra):
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra
        # The typed result of a request whose every image failed, for the answer, logs and metrics.
        self.result = None


class InvalidRequest(ServiceError):
    """The request body breaks a rule; `errors` names every offending field."""

    code = "invalid_request"

    def __init__(self, errors: list[dict]):
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(detail, errors=errors)


class ContentFiltered(ServiceError):
    """The model's content filter refused the prompt or its output."""

    code = "content_filtered"


class ModelThrottled(ServiceError):
    """The model kept throttling until retries or the deadline ran out."""

    code = "model_throttled"


class ModelUnavailable(ServiceError):
    """The model cannot be used at all (access, end of life, not found): an operator must act."""

    code = "model_unavailable"


class ModelBusy(ServiceError):
    """The model service is temporarily unavailable."""

    code = "model_busy"


class ModelTimeout(ServiceError):
    """The model did not answer in time."""

    code = "model_timeout"


class ModelFailed(ServiceError):
    """The model answered with an error or with something that is not the image asked for."""

    code = "model_failed"


class ScreeningFailed(ServiceError):
    """Screening could not be done; the image is not published unscreened."""

    code = "screening_failed"


class StoreFailed(ServiceError):
    """The store did not accept the image."""

    code = "store_failed"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before every image was done."""

    code = "deadline_exceeded"


class IdempotencyConflict(ServiceError):
    """The first request with this Idempotency-Key is still running."""

    code = "idempotency_in_progress"


class IdempotencyMismatch(ServiceError):
    """The Idempotency-Key was used before with a different body."""

    code = "idempotency_key_reused"


class InputFlagged(ServiceError):
    """An edit's input image was flagged by screening; nothing was sent to a model."""

    code = "input_flagged"


class SourceNotFound(ServiceError):
    """A source_key names no published image of the store (absent, private, or not an image)."""

    code = "source_not_found"


class JobNotFound(ServiceError):
    """No job with this id (or not the caller's)."""

    code = "job_not_found"


class JobNotCancellable(ServiceError):
    """The job has started or ended; only a queued job can be cancelled."""

    code = "job_not_cancellable"


class JobsUnavailable(ServiceError):
    """The job queue or table did not answer as it should."""

    code = "jobs_unavailable"


class KeyExists(Exception):
    """The store already holds this key; the caller picks another."""
