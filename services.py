"""Builds the pipeline's collaborators from settings, once per worker process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from generation.model_chain import ModelChain
from image_generation import ImageModel, ImageStore, Pipeline, PipelineConfig, Screener, ScreeningOff
from settings import Settings
from web.idempotency import IdempotencyKeys
from web.signed_urls import UrlSigner

URL_SECONDS = 900  # a signed offline URL's life when no settings say (tests' hand-made Services)


@dataclass
class Services:
    """Everything a request needs besides the request itself."""

    model: ImageModel
    store: ImageStore
    screener: Screener
    pipeline: Pipeline
    idempotency: IdempotencyKeys
    models: ModelChain | None = None
    lifecycle: object | None = None  # the LifecycleWatcher, when Bedrock's control plane is asked
    signer: UrlSigner | None = None  # signs offline /images/ URLs, so they need no key header
    jobs: object | None = None  # the JobService of /jobs; built on first use (a test's services may have none)

    def __post_init__(self):
        if self.models is None:
            self.models = self.pipeline.models
        if self.signer is None:
            self.signer = UrlSigner(self.store, URL_SECONDS)


def build_models(settings: Settings) -> ModelChain:
    """Every model a request may use, the default first, with the fallback chain the settings name."""
    if settings.model == "bedrock":
        from backends.bedrock_model import BedrockModel
        clients: dict = {}  # one Bedrock Runtime client per region, shared by the models called there
        models = [BedrockModel.from_settings(settings, model_id, clients) for model_id in settings.offered_model_ids]
        return ModelChain(models, settings.bedrock_fallback_model_ids, skip_seconds=settings.bedrock_skip_seconds)
    from backends.placeholder_model import PlaceholderModel
    return ModelChain([PlaceholderModel(settings.placeholder_latency_seconds)])


def build_lifecycle_watcher(settings: Settings, models: ModelChain):
    """The GetFoundationModel watcher for the offered Bedrock models, started; None offline or when off."""
    if settings.model != "bedrock" or not settings.bedrock_lifecycle_check_seconds:
        return None
    from backends.aws_clients import bedrock_control_client, session
    from backends.bedrock_lifecycle import LifecycleWatcher
    from generation.model_registry import call_region

    regions = {m: call_region(m, session().region_name, settings.bedrock_region) for m in models.offered()}
    clients = {region: bedrock_control_client(region) for region in set(regions.values())}
    return LifecycleWatcher(models, clients.__getitem__, regions,
                            settings.bedrock_lifecycle_check_seconds).start()


def build_store(settings: Settings) -> ImageStore:
    """The store the settings name."""
    if settings.store == "s3":
        from backends.s3_store import S3Store
        return S3Store.from_settings(settings)
    from backends.filesystem_store import FilesystemStore
    return FilesystemStore(settings.data_dir, private_prefix=settings.quarantine_prefix)


def build_screener(settings: Settings) -> Screener:
    """The screener the settings name."""
    if settings.moderation == "rekognition":
        from backends.rekognition_screener import RekognitionScreener
        return RekognitionScreener.from_settings(settings)
    return ScreeningOff()


def build_services(settings: Settings, *, models: ModelChain | None = None, store: ImageStore | None = None,
                   screener: Screener | None = None) -> Services:
    """Build the adapters (unless given: tests pass fakes) and the pipeline on ONE bounded executor."""
    models = models or build_models(settings)
    store = store or build_store(settings)
    screener = screener or build_screener(settings)
    # Threads start lazily on first use, so building this before gunicorn forks would still be safe;
    # it is built per worker anyway because create_app() runs in each worker.
    executor = ThreadPoolExecutor(max_workers=settings.model_concurrency, thread_name_prefix="image")
    config = PipelineConfig(deadline_seconds=settings.request_deadline_seconds,
                            flagged_action=settings.flagged_action,
                            quarantine_prefix=settings.quarantine_prefix,
                            processing_slots=settings.processing_slots)
    # A claim unanswered for twice the deadline (plus a margin) was left by a process that died.
    idempotency = IdempotencyKeys(store, stale_after_seconds=2 * settings.request_deadline_seconds + 30)
    pipeline = Pipeline(models, store, screener, executor, config)
    return Services(models.models[models.default_id], store, screener, pipeline, idempotency, models,
                    build_lifecycle_watcher(settings, models) if models.default_id in settings.offered_model_ids
                    else None, UrlSigner(store, settings.s3_url_seconds or URL_SECONDS))


def build_job_service(settings: Settings, store: ImageStore):
    """The job service on the backends the settings name: SQLite offline, SQS + DynamoDB on AWS."""
    from jobs.service import JobService

    if settings.jobs == "aws":
        from backends.aws_clients import dynamodb_client, sqs_client
        from backends.aws_jobs import DynamoJobTable, SqsQueue
        # As many connections as threads may call at once (request threads, job slots and their images).
        pool = settings.model_concurrency
        table, queue = DynamoJobTable(dynamodb_client(pool), settings.dynamodb_table), \
            SqsQueue(sqs_client(pool), settings.sqs_queue_url, settings.job_max_receives)
    else:
        from backends.sqlite_jobs import SqliteDatabase, SqliteJobTable, SqliteQueue
        database = SqliteDatabase(settings.job_db)
        table, queue = SqliteJobTable(database), SqliteQueue(database, settings.job_max_receives)
    # A running job's worker is surely gone once its lease has been over for longer than any request runs.
    lost_after = settings.request_deadline_seconds + settings.job_visibility_seconds
    return JobService(table, queue, store, queue_seconds=settings.job_queue_seconds,
                      retention_days=settings.job_retention_days, lost_after_seconds=lost_after,
                      webhook_secret=settings.webhook_secret)
