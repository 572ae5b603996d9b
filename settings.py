"""Every setting of the service, read once from the environment, typed and checked at start-up."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from limits import parse_many

from generation.model_registry import BEDROCK_PROFILES, PLACEHOLDER_MODEL_ID, profile_for

PREFIX = "AIG_"


class SettingsError(ValueError):
    """A setting is missing or has a value the service cannot run with."""


def _choice(name: str, allowed: tuple[str, ...]):
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise SettingsError(f"{PREFIX}{name} must be one of {', '.join(allowed)}, not {raw!r}")
        return value

    return parse


def _number(name: str, kind, low, high):
    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{PREFIX}{name} must be a {kind.__name__}, not {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{PREFIX}{name} must be between {low} and {high}, not {value}")
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _prefix(raw: str) -> str:
    """A store key prefix: no leading slash, one trailing slash when non-empty."""
    value = raw.strip().strip("/")
    return value + "/" if value else ""


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _flag(name: str):
    def parse(raw: str) -> bool:
        value = raw.strip().lower()
        if value not in ("0", "1", "true", "false", "yes", "no", "on", "off", ""):
            raise SettingsError(f"{PREFIX}{name} must be 1 or 0, not {raw!r}")
        return value in ("1", "true", "yes", "on")

    return parse


def _rate_limit(raw: str) -> str:
    """A Flask-Limiter limit string such as `30/minute` or `10/minute;200/day`; empty turns limits off."""
    value = raw.strip()
    try:
        if value:
            parse_many(value)
    except ValueError:
        raise SettingsError(f"{PREFIX}RATE_LIMIT must look like 30/minute or 10/minute;200/day, not {raw!r}") from None
    return value


def _setting(default, parse, doc: str):
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with `Settings.from_env()`."""

    model: str = _setting("placeholder", _choice("MODEL", ("placeholder", "bedrock")),
                          "Image model: `placeholder` (offline pictures) or `bedrock`.")
    bedrock_model_id: str = _setting("amazon.titan-image-generator-v2:0", _text,
                                     "Bedrock model used when a request names none (see the models table).")
    bedrock_fallback_model_ids: tuple[str, ...] = _setting(
        ("amazon.nova-canvas-v1:0", "stability.stable-image-core-v1:1"), _csv,
        "Models tried in order when Bedrock refuses the default as retired, unknown or not granted "
        "(only for requests that name no model); empty: no fallback.")
    bedrock_model_ids: tuple[str, ...] = _setting(
        tuple(p.model_id for p in BEDROCK_PROFILES), _csv,
        "Models a request may name in `model` (the default and fallbacks are always offered).")
    bedrock_region: str = _setting("", _text,
                                   "Region for every Bedrock call; empty: each model in a region that has it "
                                   "(AWS_REGION when the model is there, else the model's own).")
    bedrock_lifecycle_check_seconds: int = _setting(
        21600, _number("BEDROCK_LIFECYCLE_CHECK_SECONDS", int, 0, 7 * 86400),
        "How often GetFoundationModel is asked about each offered model (also at start-up); 0: never.")
    bedrock_skip_seconds: int = _setting(
        600, _number("BEDROCK_SKIP_SECONDS", int, 0, 86400),
        "How long a model Bedrock refused (retired, unknown, not granted) is skipped without a call.")
    store: str = _setting("filesystem", _choice("STORE", ("filesystem", "s3")),
                          "Where images go: `filesystem` (under AIG_DATA_DIR) or `s3`.")
    data_dir: str = _setting("var/images", _text,
                             "Folder of the filesystem store (created if missing).")
    s3_bucket: str = _setting("", _text, "S3 bucket (required when AIG_STORE=s3).")
    s3_key_prefix: str = _setting("", _prefix, "Prefix under which every key is written in the bucket.")
    s3_sse: str = _setting("", _choice("S3_SSE", ("", "aes256", "aws:kms")),
                           "Server-side encryption: empty (bucket default), `AES256` or `aws:kms`.")
    s3_sse_kms_key_id: str = _setting("", _text, "KMS key id when AIG_S3_SSE=aws:kms.")
    s3_url_seconds: int = _setting(900, _number("S3_URL_SECONDS", int, 0, 604800),
                                   "Lifetime of each image's presigned GET `url` in S3 mode; 0: no URLs.")
    moderation: str = _setting("off", _choice("MODERATION", ("off", "rekognition")),
                               "Screening: `off` or `rekognition`.")
    moderation_min_confidence: float = _setting(50.0, _number("MODERATION_MIN_CONFIDENCE", float, 0.0, 100.0),
                                                "Rekognition MinConfidence (0-100) for a label to count.")
    flagged_action: str = _setting("quarantine", _choice("FLAGGED_ACTION", ("quarantine", "withhold")),
                                   "Flagged originals: `quarantine` (kept privately) or `withhold` (dropped).")
    quarantine_prefix: str = _setting("quarantine/", _prefix,
                                      "Private prefix for flagged originals (under the store root).")
    request_deadline_seconds: float = _setting(90.0, _number("REQUEST_DEADLINE_SECONDS", float, 1.0, 600.0),
                                               "A request's deadline; past it the answer is a 504.")
    bedrock_read_timeout_seconds: float = _setting(70.0, _number("BEDROCK_READ_TIMEOUT_SECONDS", float, 1.0, 600.0),
                                                   "boto3 read time-out for one InvokeModel (never re-sent).")
    bedrock_max_attempts: int = _setting(4, _number("BEDROCK_MAX_ATTEMPTS", int, 1, 10),
                                         "InvokeModel attempts per image while Bedrock throttles, within the deadline.")
    default_quality: str = _setting("premium", _choice("DEFAULT_QUALITY", ("standard", "premium")),
                                    "Quality when a request names none.")
    max_body_bytes: int = _setting(65536, _number("MAX_BODY_BYTES", int, 1024, 10 * 1024 * 1024),
                                   "Largest request body accepted; larger gets a JSON 413.")
    openai_folder: str = _setting("openai", _text,
                                  "Top folder of images made through the OpenAI-compatible /v1 routes: "
                                  "`<folder>/<API key name>/<date>/image-<epoch>.png`.")
    max_edit_body_bytes: int = _setting(20 * 1024 * 1024, _number("MAX_EDIT_BODY_BYTES", int, 1024, 24_000_000),
                                        "Largest body POST /edit_images accepts (it may carry base64 images; "
                                        "Bedrock takes at most 25 MB a call); larger gets a JSON 413.")
    model_concurrency: int = _setting(256, _number("MODEL_CONCURRENCY", int, 1, 4096),
                                      "Model calls in flight per worker process (one bounded pool).")
    processing_slots: int = _setting(8, _number("PROCESSING_SLOTS", int, 1, 1024),
                                     "Images read, screened and stored at once per worker, oldest request first.")
    placeholder_latency_seconds: float = _setting(0.0, _number("PLACEHOLDER_LATENCY_SECONDS", float, 0.0, 600.0),
                                                  "Simulated model time of the placeholder model.")
    public_base_url: str = _setting("", _text,
                                    "Base URL put before `/images/<key>` in offline answers, e.g. "
                                    "`https://images.example.com` (the installer sets it); empty: the request's "
                                    "host when AIG_ALLOWED_HOSTS has it, else a relative URL.")
    allowed_hosts: tuple[str, ...] = _setting(("localhost", "127.0.0.1", "[::1]"), _csv,
                                              "Host names whose requests may shape offline image URLs when "
                                              "AIG_PUBLIC_BASE_URL is empty (a Host header is the caller's to "
                                              "write).")
    record_retention_days: int = _setting(
        30, _number("RECORD_RETENTION_DAYS", int, 1, 3650),
        "Days a request's record is kept: `flask --app wsgi records prune` offline; in S3 the bucket's "
        "lifecycle rule (deploy/s3/lifecycle.json, the same 30 days) expires them.")
    jobs: str = _setting("sqlite", _choice("JOBS", ("sqlite", "aws")),
                         "Where `/jobs` keep their queue and states: `sqlite` (one file, AIG_JOB_DB; any process "
                         "of this host) or `aws` (SQS + DynamoDB; any number of hosts).")
    job_db: str = _setting("var/jobs.sqlite3", _text, "The SQLite file of offline jobs (created if missing).")
    sqs_queue_url: str = _setting("", _text, "URL of the jobs' SQS standard queue (required when AIG_JOBS=aws).")
    dynamodb_table: str = _setting("", _text, "DynamoDB table of job states (required when AIG_JOBS=aws).")
    job_max_receives: int = _setting(5, _number("JOB_MAX_RECEIVES", int, 1, 1000),
                                     "Deliveries of one job message before it goes to the dead-letter queue and "
                                     "its job fails; the same number as the queue's redrive `maxReceiveCount`.")
    job_visibility_seconds: int = _setting(60, _number("JOB_VISIBILITY_SECONDS", int, 2, 3600),
                                           "How long a worker holds a message and a job between heartbeats "
                                           "(renewed every third of it); a dead worker's job is taken over after it.")
    job_queue_seconds: int = _setting(3600, _number("JOB_QUEUE_SECONDS", int, 1, 14 * 86400),
                                      "A job not started this long after it was queued ends `expired` unrun.")
    job_retention_days: int = _setting(7, _number("JOB_RETENTION_DAYS", int, 1, 365),
                                       "Days a job's state is kept (DynamoDB's TTL attribute `expires_at`).")
    worker_jobs: int = _setting(8, _number("WORKER_JOBS", int, 1, 512),
                                "Jobs one `python -m jobs.worker` process runs at once.")
    webhook_secret: str = _setting("", _text,
                                   "Secret that signs webhooks (`whsec_...`); with API keys each key gets its own, "
                                   "derived from it. Empty: one is made and kept in the store.")
    webhook_allow_networks: tuple[str, ...] = _setting((), _csv,
                                                       "Networks (CIDR) webhooks may reach although they are "
                                                       "loopback, private or link-local; empty: none.")
    webhook_retry_seconds: tuple[str, ...] = _setting(("10", "60", "300", "1800", "7200"), _csv,
                                                      "Waits before each retry of a failed webhook; their number is "
                                                      "the number of retries.")
    webhook_timeout_seconds: float = _setting(10.0, _number("WEBHOOK_TIMEOUT_SECONDS", float, 0.5, 60.0),
                                              "Time-out of one webhook attempt.")
    log_level: str = _setting("info", _choice("LOG_LEVEL", ("debug", "info", "warning", "error")),
                              "Log level.")
    api_keys_file: str = _setting("", _text,
                                  "JSON file of hashed API keys (`flask --app wsgi keys ...`); empty: no keys asked.")
    rate_limit: str = _setting("", _rate_limit,
                               "Limit of the paid routes (POST /generate_images, /edit_images, /jobs and "
                               "/v1/images/*, together) per API key "
                               "(per client address when keys are off), "
                               "e.g. `30/minute`; empty: none.")
    redis_url: str = _setting("", _text,
                              "Redis URL for rate-limit counters shared by all workers and hosts; empty: per process.")
    trust_proxy: bool = _setting(False, _flag("TRUST_PROXY"),
                                 "`1` behind exactly one proxy (nginx): take the client address from X-Forwarded-For.")
    proxy_addresses: tuple[str, ...] = _setting((), _csv,
                                                "Addresses of the nginx hosts in front of this instance when nginx "
                                                "runs on another host (several hosts): their X-Forwarded-For is "
                                                "trusted (with AIG_TRUST_PROXY=1) and AIG_BIND may then face the "
                                                "network; empty: nginx on this host, over loopback.")
    cors_origins: tuple[str, ...] = _setting((), _csv,
                                             "Browser origins allowed by CORS, comma separated; empty: none.")
    metrics_key: str = _setting("", _text,
                                "Bearer key for /metrics from other hosts; empty: /metrics answers loopback only.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Read every `AIG_*` variable, apply overrides, and check the whole."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = f.metadata["parse"](raw)
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations the service cannot run with."""
        if self.model == "bedrock":
            known = ", ".join(p.model_id for p in BEDROCK_PROFILES)
            for name, ids in (("BEDROCK_MODEL_ID", (self.bedrock_model_id,)),
                              ("BEDROCK_FALLBACK_MODEL_IDS", self.bedrock_fallback_model_ids),
                              ("BEDROCK_MODEL_IDS", self.bedrock_model_ids)):
                for model_id in ids:
                    profile = profile_for(model_id)
                    if profile is None or profile.model_id == PLACEHOLDER_MODEL_ID:
                        raise SettingsError(f"{PREFIX}{name}: {model_id!r} is not a supported model; use one of "
                                            f"{known} (or a us./eu. cross-region id of one)")
        if self.store == "s3" and not self.s3_bucket:
            raise SettingsError(f"{PREFIX}S3_BUCKET is required when {PREFIX}STORE=s3")
        if self.s3_sse == "aws:kms" and not self.s3_sse_kms_key_id:
            raise SettingsError(f"{PREFIX}S3_SSE_KMS_KEY_ID is required when {PREFIX}S3_SSE=aws:kms")
        if self.jobs == "aws" and not (self.sqs_queue_url and self.dynamodb_table):
            raise SettingsError(f"{PREFIX}SQS_QUEUE_URL and {PREFIX}DYNAMODB_TABLE are required when {PREFIX}JOBS=aws")
        for wait in self.webhook_retry_seconds:
            if not wait.isdigit() or not 1 <= int(wait) <= 86400:
                raise SettingsError(f"{PREFIX}WEBHOOK_RETRY_SECONDS must be whole seconds from 1 to 86400, "
                                    f"not {wait!r}")
        if self.webhook_secret:
            from jobs.webhooks import secret_key

            try:
                if not self.webhook_secret.startswith("whsec_"):
                    # Receivers (and Standard Webhooks' libraries) base64-decode the part after whsec_.
                    raise ValueError("must be whsec_ and the base64 of 24 to 64 random bytes "
                                     "(`python -c 'from jobs.webhooks import new_secret; print(new_secret())'`)")
                secret_key(self.webhook_secret)
            except ValueError as error:
                raise SettingsError(f"{PREFIX}WEBHOOK_SECRET: {error}") from None
        if self.job_queue_seconds >= self.job_retention_days * 86400:
            raise SettingsError(f"{PREFIX}JOB_QUEUE_SECONDS ({self.job_queue_seconds}) must be shorter than "
                                f"{PREFIX}JOB_RETENTION_DAYS ({self.job_retention_days} days): a job is kept "
                                "longer than it may wait")
        for address in self.proxy_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise SettingsError(f"{PREFIX}PROXY_ADDRESSES: {address!r} is not an IP address") from None
        try:
            self.webhook_networks  # noqa: B018 - parsed here so a bad one stops start-up
        except ValueError as error:
            raise SettingsError(f"{PREFIX}WEBHOOK_ALLOW_NETWORKS: {error}") from None
        if self.bedrock_read_timeout_seconds >= self.request_deadline_seconds:
            raise SettingsError(
                f"{PREFIX}BEDROCK_READ_TIMEOUT_SECONDS ({self.bedrock_read_timeout_seconds}) must be below "
                f"{PREFIX}REQUEST_DEADLINE_SECONDS ({self.request_deadline_seconds}): see the time-out ladder")

    @property
    def model_id(self) -> str:
        """The model id this service generates with."""
        return self.bedrock_model_id if self.model == "bedrock" else PLACEHOLDER_MODEL_ID

    @property
    def offered_model_ids(self) -> tuple[str, ...]:
        """The models a request may name: the default first, then the fallbacks, then the allow-list."""
        if self.model != "bedrock":
            return (PLACEHOLDER_MODEL_ID,)
        ids = (self.bedrock_model_id, *self.bedrock_fallback_model_ids, *self.bedrock_model_ids)
        return tuple(dict.fromkeys(ids))

    @property
    def uses_aws(self) -> bool:
        """True when some backend talks to AWS (and so needs a region and credentials)."""
        return self.model == "bedrock" or self.store == "s3" or self.moderation == "rekognition"

    @property
    def webhook_networks(self) -> tuple:
        """AIG_WEBHOOK_ALLOW_NETWORKS as ip_network objects."""
        return tuple(ipaddress.ip_network(text, strict=False) for text in self.webhook_allow_networks)

    @property
    def webhook_retries(self) -> tuple[int, ...]:
        """The waits before each webhook retry, in seconds."""
        return tuple(int(wait) for wait in self.webhook_retry_seconds)

    @property
    def offline(self) -> bool:
        """True when the pictures are placeholders."""
        return self.model == "placeholder"


# AIG_* names read elsewhere than this class (gunicorn's config, the test suite, the benchmark).
OTHER_NAMES = frozenset({"AIG_BIND", "AIG_WORKERS", "AIG_THREADS", "AIG_WORKER_TMP_DIR", "AIG_REQUIRE_TOOLS",
                         "AIG_REQUIRE_DEPLOY_TOOLS", "AIG_REQUIRE_REDIS", "AIG_SOAK_SECONDS",
                         "AIG_SERVE_WORKER"})


def unknown_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """The AIG_* variables that no part of the service reads: most likely misspelled."""
    environ = os.environ if environ is None else environ
    known = {PREFIX + f.name.upper() for f in fields(Settings)} | OTHER_NAMES
    return sorted(name for name in environ if name.startswith(PREFIX) and name not in known)


def settings_table() -> str:
    """The README's configuration table, made from the fields themselves."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        rows.append(f"| `{PREFIX}{f.name.upper()}` | {_shown(f.default)} | {f.metadata['doc']} |")
    return "\n".join(rows)


def _shown(default) -> str:
    """A default as the operator would write it in the environment."""
    if isinstance(default, bool):
        return "`1`" if default else "`0`"
    if isinstance(default, tuple):
        default = ",".join(default)
    return f"`{default}`" if default != "" else "(empty)"
