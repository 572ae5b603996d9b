"""boto3 clients for Bedrock Runtime, S3 and Rekognition: one session per process, explicit Config each."""

from __future__ import annotations

import os
import threading

import boto3
from botocore.config import Config

from settings import Settings, SettingsError

# Connecting is quick or broken; a long connect time-out only delays the answer to the caller.
CONNECT_TIMEOUT_SECONDS = 5
# S3 and Rekognition answer in well under a second; this bounds a hung socket, not a slow service.
READ_TIMEOUT_SECONDS = 20
# S3 and Rekognition calls are not billed per image generated, so botocore's standard retries
# (throttling, 5xx, dropped connections) are safe there; a few attempts keep a request inside its deadline.
S3_MAX_ATTEMPTS = 3
# GetFoundationModel is a small read that only informs; a slow answer must not hold start-up.
CONTROL_READ_TIMEOUT_SECONDS = 10
REKOGNITION_MAX_ATTEMPTS = 3

_lock = threading.Lock()
_session: boto3.Session | None = None
_session_pid: int | None = None


def session() -> boto3.Session:
    """This process's one boto3 Session, made anew after a fork (sessions must not cross processes)."""
    global _session, _session_pid
    with _lock:
        if _session is None or _session_pid != os.getpid():
            # botocore reads only AWS_DEFAULT_REGION; AWS_REGION is what the other SDKs and the
            # service's docs use, so it wins when set.
            _session = boto3.Session(region_name=os.environ.get("AWS_REGION") or None)
            _session_pid = os.getpid()
            if not _session.region_name:
                _session = None
                raise SettingsError("no AWS region is configured: set AWS_REGION (or AWS_DEFAULT_REGION)")
        return _session


def reset_session() -> None:
    """Forget the session, so the next client sees a changed environment (tests)."""
    global _session
    with _lock:
        _session = None


def _client(service: str, config: Config, region: str | None = None):
    # Sessions are not thread-safe: clients are made under the lock, never from request threads at once.
    current = session()
    with _lock:
        return current.client(service, config=config, region_name=region or current.region_name)


def bedrock_runtime_client(settings: Settings, region: str | None = None):
    """Bedrock Runtime client in `region` (default: the session's): long read time-out, ONE attempt.

    A re-sent generation is billed again, so botocore never re-sends one.
    """
    return _client("bedrock-runtime", Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=settings.bedrock_read_timeout_seconds,
        # botocore would re-send a timed-out InvokeModel; BedrockModel retries throttling itself,
        # inside the request's deadline.
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=settings.model_concurrency,
    ), region)


def bedrock_control_client(region: str | None = None):
    """Bedrock control-plane client (GetFoundationModel) in `region`: short time-outs, botocore's retries."""
    return _client("bedrock", Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=CONTROL_READ_TIMEOUT_SECONDS,
        retries={"mode": "standard", "total_max_attempts": 2},
    ), region)


def s3_client(settings: Settings):
    """S3 client: SigV4 everywhere (conditional writes and presigned URLs need it), bounded retries."""
    return _client("s3", Config(
        signature_version="s3v4",
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
        # Every image thread may upload at once; a smaller pool discards connections and re-handshakes.
        max_pool_connections=settings.model_concurrency,
    ))


def rekognition_client(settings: Settings):
    """Rekognition client: standard retries (throttling comes back as a 500), pool sized to the fan-out."""
    return _client("rekognition", Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"mode": "standard", "total_max_attempts": REKOGNITION_MAX_ATTEMPTS},
        max_pool_connections=settings.model_concurrency,
    ))


def sqs_client(pool: int = 10):
    """SQS client: short time-outs beyond the long poll, botocore's standard retries (sends are cheap to repeat).

    `pool`: connections kept, one per thread that may call at once (request threads, job slots, beats).
    """
    return _client("sqs", Config(
        max_pool_connections=pool,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        # A long poll holds the call for up to 20 s; the read time-out must outlast it.
        read_timeout=READ_TIMEOUT_SECONDS + 20,
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
    ))


def dynamodb_client(pool: int = 10):
    """DynamoDB client: short time-outs, standard retries (a repeated conditional write fails its condition)."""
    return _client("dynamodb", Config(
        max_pool_connections=pool,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
    ))
