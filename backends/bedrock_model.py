"""The Bedrock image models: one InvokeModel per image, with the body and answer of the model's family."""

from __future__ import annotations

import binascii
import json
import logging
import random
import re
import socket
import time
from urllib.parse import urlsplit

import pybase64
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from backends.bedrock_bodies import request_body
from generation.errors import (
    ContentFiltered,
    InvalidRequest,
    ModelBusy,
    ModelFailed,
    ModelThrottled,
    ModelTimeout,
    ModelUnavailable,
)
from generation.model_registry import TITAN_V2, ModelProfile, profile_for
from image_generation import ImageSpec

log = logging.getLogger(__name__)

THROTTLED = {"ThrottlingException", "ServiceQuotaExceededException", "ModelNotReadyException"}
UNAVAILABLE = {"AccessDeniedException", "ResourceNotFoundException"}
FILTER_MARKERS = ("blocked by our content filters", "AUP or AWS Responsible AI")
# Stability answers a filtered call inside a 200: finish_reasons names why (wave2-reference.md B 1.6).
STABILITY_FILTER_PREFIX = "Filter reason"
# How Bedrock words a retired or unknown model when it does not answer 403/404.
LIFECYCLE_MARKERS = ("end of life", "end of its life", "legacy", "model identifier is invalid")
# Back-off between throttled attempts: doubling from BASE, capped, half of it jittered.
ARN = re.compile(r"arn:aws[\w-]*:[^\s,;)]*")
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 8.0
CHECK_TIMEOUT_SECONDS = 2.0
# Where Bedrock's schema errors point (`#/textToImageParams/text`) -> the request field to name.
POINTER_FIELDS = {"text": "prompt", "negativeText": "negative_prompt", "width": "width", "height": "height",
                  "seed": "seed", "cfgScale": "cfg_scale", "quality": "quality", "prompt": "prompt",
                  "negative_prompt": "negative_prompt", "aspect_ratio": "aspect_ratio"}


class BedrockModel:
    """Generates one PNG per call through bedrock-runtime InvokeModel; translates every AWS error."""

    placeholder = False

    def __init__(self, client, model_id: str, *, read_timeout: float, max_attempts: int = 4, sleep=time.sleep,
                 profile: ModelProfile | None = None):
        self.client = client
        self.model_id = model_id
        self.profile = profile or profile_for(model_id) or TITAN_V2
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings, model_id: str | None = None, clients: dict | None = None) -> BedrockModel:
        """A model (the default unless named) on this process's Bedrock Runtime client for its region.

        `clients` (region -> client) lets the models of one region share one client and its pool.
        """
        from backends.aws_clients import bedrock_runtime_client, session
        from generation.model_registry import call_region

        model_id = model_id or settings.bedrock_model_id
        region = call_region(model_id, session().region_name, settings.bedrock_region)
        clients = {} if clients is None else clients
        if region not in clients:
            clients[region] = bedrock_runtime_client(settings, region)
        return cls(clients[region], model_id,
                   read_timeout=settings.bedrock_read_timeout_seconds, max_attempts=settings.bedrock_max_attempts)

    def generate(self, spec: ImageSpec, deadline: float) -> bytes:
        """Both steps at once: the PNG bytes of one image."""
        return self.start(spec, deadline)()

    def start(self, spec: ImageSpec, deadline: float):
        """Invoke the model, retrying throttling only while an attempt can still finish; return its reader."""
        body = json.dumps(request_body(spec, self.profile)).encode()
        # The first attempt always goes: the pipeline starts no image once the deadline has passed.
        attempt = 1
        while True:
            try:
                response = self._invoke(body)
                return lambda: self._read(response)
            except ClientError as error:
                if error_code(error) not in THROTTLED:
                    raise translate(error, self.model_id) from error
                delay = backoff(attempt)
                # A retry must be able to wait out its back-off and a whole read time-out before the
                # deadline; otherwise it could still be generating (and billing) after the caller's 504.
                if attempt >= self.max_attempts or time.monotonic() + delay + self.read_timeout > deadline:
                    raise ModelThrottled(
                        f"Bedrock kept throttling {self.model_id} ({error_code(error)}) after {attempt} "
                        f"attempt(s); try again shortly", retry_after=max(1.0, backoff(attempt + 1))) from error
                log.info("Bedrock throttled %s (%s); attempt %d in %.2f s", self.model_id, error_code(error),
                         attempt + 1, delay)
                self._sleep(delay)
                attempt += 1
            except BotoCoreError as error:
                # Never re-sent, whether it timed out or dropped: Bedrock may still be generating, and
                # each send is billed.
                raise self._transport_error(error, "waiting for its answer") from error

    def _invoke(self, body: bytes) -> dict:
        return self.client.invoke_model(modelId=self.model_id, body=body, contentType="application/json",
                                        accept="application/json")

    def _read(self, response: dict) -> bytes:
        """The answer's image; the whole body is read, so the connection goes back to the pool."""
        try:
            raw = response["body"].read()
            return decode_image(raw) if self.profile.family == "amazon" else decode_stability(raw)
        except BotoCoreError as error:
            raise self._transport_error(error, "reading its answer") from error

    def _transport_error(self, error: BotoCoreError, doing: str):
        """The service error for a time-out (504) or a broken connection (503) with Bedrock; never retried."""
        if isinstance(error, ReadTimeoutError):
            return ModelTimeout(f"Bedrock sent nothing for {self.read_timeout:g} s while {doing} for "
                                f"{self.model_id}; the call was not repeated")
        return ModelBusy(f"lost Bedrock Runtime while {doing}: {type(error).__name__}", retry_after=5)

    def check(self) -> None:
        """Raise ModelBusy unless Bedrock Runtime's endpoint accepts a TCP connection (no IAM needed)."""
        url = urlsplit(self.client.meta.endpoint_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=CHECK_TIMEOUT_SECONDS).close()
        except OSError as error:
            raise ModelBusy(f"cannot connect to Bedrock Runtime at {url.hostname}:{port}: {error}") from error


def _json_object(raw: bytes) -> dict:
    """A model's answer as a JSON object; ModelFailed when it is not one."""
    try:
        answer = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelFailed("Bedrock answered with a body that is not JSON") from error
    if not isinstance(answer, dict):
        raise ModelFailed("Bedrock answered with JSON that is not an object")
    return answer


def decode_image(raw: bytes) -> bytes:
    """The one image of a 200 answer, base64-decoded once; ContentFiltered when the answer carries an error."""
    answer = _json_object(raw)
    if answer.get("error"):
        raise ContentFiltered(f"the model's content filter blocked the generated image: {answer['error']}")
    return _one_image(answer.get("images"))


def decode_stability(raw: bytes) -> bytes:
    """The one image of a Stability answer; a non-null finish reason is a filter (400) or a model failure."""
    answer = _json_object(raw)
    reasons = answer.get("finish_reasons") or [None]
    reason = reasons[0]
    if isinstance(reason, str) and reason.startswith(STABILITY_FILTER_PREFIX):
        where = reason.split(":", 1)[-1].strip()
        raise ContentFiltered(f"the model's content filter blocked the {where or 'request'} ({reason})")
    if reason is not None:
        raise ModelFailed(f"the model did not make the image ({reason})")
    # The filtered shape may lack seeds and images altogether; a good one has exactly one image.
    return _one_image(answer.get("images"))


def _one_image(images) -> bytes:
    """Exactly one base64 image, decoded once."""
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        count = len(images) if isinstance(images, list) else 0
        raise ModelFailed(f"Bedrock answered with {count} images instead of exactly one")
    try:
        # pybase64: the same strict decoding as base64.b64decode, in a quarter of the time (bench/).
        return pybase64.b64decode(images[0], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ModelFailed("Bedrock answered with an image that is not valid base64") from error


def error_code(error: ClientError) -> str:
    """botocore's error code, e.g. ThrottlingException."""
    return error.response.get("Error", {}).get("Code", "")


def backoff(attempt: int) -> float:
    """Seconds to wait after attempt `attempt` failed: exponential, capped, with jitter against lockstep retries."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def translate(error: ClientError, model_id: str):
    """The service error for a Bedrock error that is not retried."""
    code = error_code(error)
    message = error.response.get("Error", {}).get("Message", "")
    lowered = message.lower()
    if code == "ValidationException" and any(m.lower() in lowered for m in FILTER_MARKERS):
        return ContentFiltered(f"the model's content filter (Amazon Bedrock, AUP / Responsible AI policy) "
                               f"blocked the prompt: {message}")
    if code in UNAVAILABLE or any(m in lowered for m in LIFECYCLE_MARKERS):
        return ModelUnavailable(unavailable_detail(model_id, code, message))
    if code == "ValidationException":
        return rejected_request(model_id, message)
    if code == "ModelTimeoutException":
        return ModelTimeout(f"Bedrock timed out generating with {model_id}: {message}")
    if code == "ServiceUnavailableException":
        return ModelBusy(f"Bedrock is temporarily unavailable: {message}", retry_after=10)
    # InternalServerException, ModelErrorException and anything unmodelled.
    return ModelFailed(f"Bedrock failed to generate with {model_id} ({code}: {message})")


def unavailable_detail(model_id: str, code: str, message: str) -> str:
    """What the operator must change when Bedrock refuses the model itself (no account or role names)."""
    # AccessDenied messages name the caller's role ARN; answers and /models must not show it.
    detail = f"Bedrock refused model {model_id} ({code}: {ARN.sub('<arn>', message)})."
    profile = profile_for(model_id)
    if profile is not None and profile.end_of_life_date:
        return (f"{detail} {profile.name} reached end of life on {profile.end_of_life_date}: set "
                f"AIG_BEDROCK_MODEL_ID to an active model (see GET /models) or keep it in a fallback chain "
                f"(AIG_BEDROCK_FALLBACK_MODEL_IDS)")
    return (f"{detail} Enable access to {model_id} in this region's Bedrock console, grant bedrock:InvokeModel "
            f"on it, or name a model this account may use (GET /models)")


def rejected_request(model_id: str, message: str) -> InvalidRequest:
    """A 400 naming the field Bedrock's schema check points at; our own validation should have caught it."""
    log.warning("Bedrock rejected a request that passed validation for %s: %s", model_id, message)
    pointer = message.split("#/", 1)[1].split(":", 1)[0] if "#/" in message else ""
    field = POINTER_FIELDS.get(pointer.rsplit("/", 1)[-1], "body")
    return InvalidRequest([{"field": field, "message": f"{model_id} rejected it: {message}"}])
