"""The service's own errors; adapters translate vendor errors into these, the HTTP layer maps them to answers."""

from __future__ import annotations


class ServiceError(Exception):
    """An error with the HTTP status, a stable code and a message fit for the caller."""

    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str, *, retry_after: float | None = None, **extra):
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra


class InvalidRequest(ServiceError):
    """The request body breaks a rule; `errors` names every offending field."""

    status = 400
    code = "invalid_request"
    title = "Invalid request"

    def __init__(self, errors: list[dict]):
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(detail, errors=errors)


class ContentFiltered(ServiceError):
    """The model's content filter refused the prompt or its output."""

    status = 400
    code = "content_filtered"
    title = "Blocked by the model's content filter"


class ModelThrottled(ServiceError):
    """The model kept throttling until retries or the deadline ran out."""

    status = 429
    code = "model_throttled"
    title = "The image model is throttling requests"


class ModelUnavailable(ServiceError):
    """The model cannot be used at all (access, end of life, not found): an operator must act."""

    status = 503
    code = "model_unavailable"
    title = "The image model is not available"


class ModelBusy(ServiceError):
    """The model service is temporarily unavailable."""

    status = 503
    code = "model_busy"
    title = "The image model is temporarily unavailable"


class ModelTimeout(ServiceError):
    """The model did not answer in time."""

    status = 504
    code = "model_timeout"
    title = "The image model timed out"


class ModelFailed(ServiceError):
    """The model answered with an error or with something that is not the image asked for."""

    status = 502
    code = "model_failed"
    title = "The image model failed"


class ScreeningFailed(ServiceError):
    """Screening could not be done; the image is not published unscreened."""

    status = 503
    code = "screening_failed"
    title = "Image screening failed"


class StoreFailed(ServiceError):
    """The store did not accept the image."""

    status = 503
    code = "store_failed"
    title = "Storing the image failed"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before every image was done."""

    status = 504
    code = "deadline_exceeded"
    title = "The request's deadline passed"


class KeyExists(Exception):
    """The store already holds this key; the caller picks another."""
