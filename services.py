"""Builds the pipeline's collaborators from settings, once per worker process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from image_generation import ImageModel, ImageStore, Pipeline, PipelineConfig, Screener, ScreeningOff
from settings import Settings
from web.idempotency import IdempotencyKeys


@dataclass
class Services:
    """Everything a request needs besides the request itself."""

    model: ImageModel
    store: ImageStore
    screener: Screener
    pipeline: Pipeline
    idempotency: IdempotencyKeys


def build_model(settings: Settings) -> ImageModel:
    """The image model the settings name."""
    if settings.model == "bedrock":
        from backends.bedrock_model import BedrockModel
        return BedrockModel.from_settings(settings)
    from backends.placeholder_model import PlaceholderModel
    return PlaceholderModel(settings.placeholder_latency_seconds)


def build_store(settings: Settings) -> ImageStore:
    """The store the settings name."""
    if settings.store == "s3":
        from backends.s3_store import S3Store
        return S3Store.from_settings(settings)
    from backends.filesystem_store import FilesystemStore
    return FilesystemStore(settings.data_dir)


def build_screener(settings: Settings) -> Screener:
    """The screener the settings name."""
    if settings.moderation == "rekognition":
        from backends.rekognition_screener import RekognitionScreener
        return RekognitionScreener.from_settings(settings)
    return ScreeningOff()


def build_services(settings: Settings) -> Services:
    """Build the three adapters and the pipeline on ONE bounded executor for this process."""
    model, store, screener = build_model(settings), build_store(settings), build_screener(settings)
    # Threads start lazily on first use, so building this before gunicorn forks would still be safe;
    # it is built per worker anyway because create_app() runs in each worker.
    executor = ThreadPoolExecutor(max_workers=settings.model_concurrency, thread_name_prefix="image")
    config = PipelineConfig(deadline_seconds=settings.request_deadline_seconds,
                            flagged_action=settings.flagged_action,
                            quarantine_prefix=settings.quarantine_prefix,
                            processing_slots=settings.processing_slots)
    # A claim unanswered for twice the deadline (plus a margin) was left by a process that died.
    idempotency = IdempotencyKeys(store, stale_after_seconds=2 * settings.request_deadline_seconds + 30)
    return Services(model, store, screener, Pipeline(model, store, screener, executor, config), idempotency)
