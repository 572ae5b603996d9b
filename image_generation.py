"""The request path with no Flask and no boto3: plan keys and seeds, fan out, check, screen, store, answer."""

from __future__ import annotations

import collections
import contextvars
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, wait
from dataclasses import dataclass, field
from typing import Protocol

from generation.errors import (
    DeadlineExceeded,
    KeyExists,
    ModelFailed,
    ModelUnavailable,
    ServiceError,
    StoreFailed,
)
from generation.model_chain import ModelChain
from generation.model_registry import TEXT_TO_IMAGE, ModelProfile
from generation.png import blur_png, png_size
from generation.processing_gate import ProcessingGate
from generation.request_records import RequestRecords

log = logging.getLogger("ai_image_generator.pipeline")
# Random seeds fit every model's range (Amazon's ends here; Stability's starts at 1, where 0 means "random").
MIN_SEED, MAX_SEED = 1, 2_147_483_646
# A key can collide with one another request (or host) took at the same microsecond; a few new
# names always suffice in practice, and a bound keeps a broken store from looping.
MAX_KEY_ATTEMPTS = 5
# The stages each image goes through, as timings name them.
STAGES = ("model", "screening", "store")


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request: what to draw and where to put it."""

    prompt: str
    output_folder: str
    file_name_prefix: str
    count: int = 4
    negative_prompt: str | None = None
    width: int = 1024
    height: int = 1024
    quality: str = "premium"
    cfg_scale: float | None = None  # None: each model's own default
    seed: int | None = None  # image i gets seed + i
    model_id: str | None = None  # the model the caller named; None: the default and its fallbacks
    aspect_ratio: str | None = None  # asked directly (ratio models); else taken from width x height
    seed_range: tuple[int, int] = (0, MAX_SEED)  # the checked model's seeds; seed + i wraps within it
    task: str = TEXT_TO_IMAGE
    params: tuple[tuple[str, object], ...] = ()  # the task's own fields, checked (e.g. ("similarity", 0.7))
    inputs: tuple[tuple[str, bytes], ...] = ()  # checked input images as PNG, e.g. ("image", ...), ("mask", ...)
    source: str | None = None  # where the input image came from: its key, or "upload:<digest>"
    candidates: tuple[str, ...] = ()  # an edit's models to try, in order (none: the model chain's)
    owner: str = ""  # who asked (a digest of the API key, never the key): only they see the record


@dataclass(frozen=True)
class ImageSpec:
    """One model call: one image."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    quality: str | None
    cfg_scale: float | None
    seed: int
    aspect_ratio: str | None = None  # set for models that take a ratio; the size then comes from the PNG
    task: str = TEXT_TO_IMAGE
    params: tuple[tuple[str, object], ...] = ()
    inputs: tuple[tuple[str, bytes], ...] = ()
    exact_size: bool = True  # the model must answer width x height; else the PNG says what it made

    def param(self, name: str, default=None):
        """One of the task's own fields."""
        return dict(self.params).get(name, default)

    def input(self, name: str) -> bytes | None:
        """One of the input images (PNG bytes)."""
        return dict(self.inputs).get(name)


@dataclass(frozen=True)
class ModerationLabel:
    """One label from the screener."""

    name: str
    parent: str
    confidence: float


@dataclass(frozen=True)
class Screening:
    """The screener's verdict on one image."""

    verdict: str  # "clean", "flagged" or "not_screened"
    labels: tuple[ModerationLabel, ...] = ()
    action: str = "none"  # "none", "blurred" (original quarantined) or "blurred_withheld"


class ImageModel(Protocol):
    """Draws one PNG for a spec, in two steps: wait for the model, then read its answer."""

    model_id: str
    placeholder: bool
    profile: ModelProfile | None  # None: takes every spec as asked (test fakes)

    def start(self, spec: ImageSpec, deadline: float) -> Callable[[], bytes]:
        """Wait for the model's answer without reading it; the returned call reads it as PNG bytes.

        Either step raises a ServiceError. The split lets the pipeline read, decode, screen and
        store a few answers at a time while the rest wait, unread, in their sockets.
        """


class ImageStore(Protocol):
    """Keeps images and the service's small JSON documents; never overwrites."""

    # What the store puts before every key (it counts toward S3's 1024-byte key limit).
    key_prefix: str

    def put_new(self, key: str, data: bytes, metadata: dict[str, str], content_type: str = "image/png",
                kind: str = "") -> None:
        """Store `data` at `key` unless the key exists (then raise KeyExists).

        `kind` names the service's own documents ("request-record", "idempotency") so a retention
        rule can find them (an S3 object tag); images have none and are kept.
        """

    def get(self, key: str) -> bytes | None:
        """The bytes at `key`, or None when absent."""

    def delete(self, key: str) -> None:
        """Remove `key` if present (used only to release idempotency claims)."""

    def check(self) -> None:
        """Raise if the store cannot be written to."""

    def address(self, key: str, image_url: Callable[[str], str]) -> dict[str, str]:
        """How a stored image is addressed and shown: `s3_uri` and a presigned `url`, or an offline `url`.

        `image_url(key)` is this service's own URL for an image it serves itself (offline).
        """

    def published(self, key: str) -> bytes | None:
        """The bytes of a published image that the service itself serves at /images/<key>, else None."""

    def listing(self, prefix: str, limit: int = 1000) -> list[tuple[str, float]]:
        """(key, modified epoch) of up to `limit` objects under `prefix` (for the history of a folder)."""


class Screener(Protocol):
    """Judges whether an image is safe to publish."""

    def screen(self, png: bytes) -> Screening:
        """Return the verdict, or raise ScreeningFailed."""


class ScreeningOff:
    """Screening turned off by the operator: every image is published as it came."""

    def screen(self, png: bytes) -> Screening:
        """Say the image was not screened."""
        return Screening("not_screened")


@dataclass
class ImageResult:
    """What became of one image of a request."""

    index: int
    seed: int
    width: int
    height: int
    key: str | None = None
    moderation: Screening | None = None
    error: ServiceError | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model_id: str | None = None  # the model that made (or last tried) the image
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model id, why) passed over before it


@dataclass(frozen=True)
class GenerationResult:
    """What a request made: its images (stored and failed), the model used, the record and the stage times."""

    request_id: str
    model_id: str
    record: str
    results: tuple[ImageResult, ...]
    placeholder: bool = False
    task: str = TEXT_TO_IMAGE
    source: str | None = None  # an edit's input image: its key, or "upload:sha256:<digest>"

    @property
    def stored(self) -> list[ImageResult]:
        """The images that were screened and stored, in request order."""
        return [r for r in self.results if r.key]

    @property
    def failed(self) -> list[ImageResult]:
        """The images that failed, each with its error."""
        return [r for r in self.results if r.error]

    @property
    def flagged(self) -> int:
        """How many stored images the screener flagged (published blurred)."""
        return sum(1 for r in self.stored if r.moderation is not None and r.moderation.verdict == "flagged")

    @property
    def timings_ms(self) -> dict[str, float]:
        """Each stage's wall time: images run side by side, so the slowest image's stage time."""
        return {stage: round(max(r.timings.get(stage, 0.0) for r in self.results) * 1000, 1)
                for stage in STAGES}


class KeyClock:
    """Hands out epoch timestamps that never repeat within this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> str:
        """The next distinct 'seconds.micros' string, as the original service named files."""
        with self._lock:
            micros = max(time.time_ns() // 1000, self._last + 1)
            self._last = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


@dataclass(frozen=True)
class PipelineConfig:
    """The pipeline's knobs, taken from settings."""

    deadline_seconds: float = 90.0
    flagged_action: str = "quarantine"
    quarantine_prefix: str = "quarantine/"
    processing_slots: int = 8


class Pipeline:
    """Generates, screens and stores the images of one request, on one shared bounded executor."""

    def __init__(self, model: ImageModel | ModelChain, store: ImageStore, screener: Screener, executor: Executor,
                 config: PipelineConfig = PipelineConfig()):
        self.models = model if isinstance(model, ModelChain) else ModelChain([model])
        self.store = store
        self.screener = screener
        self.executor = executor
        self.config = config
        self.clock = KeyClock()
        self.records = RequestRecords(store)
        self.gate = ProcessingGate(config.processing_slots)

    def plan_seeds(self, request: GenerationRequest) -> list[int]:
        """The caller's seed + i for image i (as image tools number them), else a distinct random seed each."""
        if request.seed is not None:
            low, high = request.seed_range
            return [low + (request.seed - low + i) % (high - low + 1) for i in range(request.count)]
        seeds: set[int] = set()
        while len(seeds) < request.count:
            seeds.add(MIN_SEED + secrets.randbelow(MAX_SEED - MIN_SEED + 1))
        return list(seeds)

    def new_key(self, request: GenerationRequest) -> str:
        """`<folder>/<prefix>-<epoch with fraction>.png`, distinct within this process."""
        return f"{request.output_folder}/{request.file_name_prefix}-{self.clock.next()}.png"

    def run(self, request: GenerationRequest, request_id: str,
            on_stored: Callable[[ImageResult], None] | None = None) -> GenerationResult:
        """Make every image of `request`; raise the main cause (carrying the result) when none is stored.

        `on_stored(result)` is called (from a pool thread) as each image is stored, e.g. to record a
        job's progress; it must not raise (what it raises is logged and ignored).
        """
        deadline = time.monotonic() + self.config.deadline_seconds
        results = [ImageResult(i, seed, request.width, request.height)
                   for i, seed in enumerate(self.plan_seeds(request))]
        asked_model = request.model_id or (request.candidates or (self.models.default_id,))[0]
        # The started record goes in before any paid call: if the store cannot take it, stop here.
        record_key = self.records.begin(request, request_id, asked_model)
        tracker = _Completion(len(results), lambda outcome: self.records.finish(
            record_key, request_id, asked_model, request, results, outcome), on_stored)
        # Each task runs in a copy of this thread's context, so log lines from the pool's threads
        # still carry the request id.
        futures = [self.executor.submit(contextvars.copy_context().run, self._make_image, request, request_id,
                                        result, deadline, tracker)
                   for result in results]
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        if pending and tracker.hand_over_if_unfinished():
            # The images still running are paid for: they are stored when they finish, and the last
            # one writes the record, so the caller finds them there.
            stored = [r.key for r, f in zip(results, futures, strict=True) if f in done and r.key]
            raise DeadlineExceeded(
                f"the deadline of {self.config.deadline_seconds:g} s passed with {len(pending)} of "
                f"{len(futures)} images unfinished; the rest are kept and listed in the request's record",
                images=stored, record=record_key + ".json")
        outcome = "complete" if all(r.key for r in results) else "partial" if any(r.key for r in results) \
            else "failed"
        self.records.finish(record_key, request_id, asked_model, request, results, outcome)
        made_by = next((r.model_id for r in results if r.key), asked_model)
        result = GenerationResult(request_id, made_by, record_key + ".json", tuple(results),
                                  self.models.models[made_by].placeholder, request.task, request.source)
        if not result.stored:
            cause = _main_cause([r.error for r in result.failed])
            cause.result = result
            raise cause
        return result

    def _make_image(self, request: GenerationRequest, request_id: str, result: ImageResult,
                    deadline: float, tracker: _Completion) -> None:
        """Generate, check, screen and store one image, recording any failure on `result`."""
        try:
            self._make_image_unguarded(request, request_id, result, deadline)
        finally:
            tracker.one_done(result)

    def _make_image_unguarded(self, request: GenerationRequest, request_id: str, result: ImageResult,
                              deadline: float) -> None:
        """The work of _make_image; every failure ends up on `result.error`."""
        try:
            if time.monotonic() >= deadline:
                # Queued past the deadline: the caller has had its 504; do not pay for this image.
                raise DeadlineExceeded("the request's deadline passed before this image started")
            spec, read_answer = self._start_with_fallback(request, result, deadline)
            # Past this point the image is paid for: it is finished even if the deadline passes.
            with self.gate.slot(deadline):
                self._finish_image(request, request_id, result, spec, read_answer)
        except ServiceError as error:
            result.error = error
        except Exception as error:  # noqa: BLE001 - one image's bug must not sink its siblings
            log.exception("request %s: image %d failed unexpectedly", request_id, result.index)
            result.error = ModelFailed(f"unexpected failure: {type(error).__name__}")

    def _start_with_fallback(self, request: GenerationRequest, result: ImageResult, deadline: float):
        """Start the image on the first model of its chain that can take it; (spec, reader).

        A model Bedrock refuses as retired, unknown or not granted is remembered and passed over for a
        while; any other failure (content filter, throttling, a time-out) is the image's own and ends it.
        """
        chain = [self.models.models[m] for m in request.candidates] or self.models.chain(request.model_id)
        for model in chain:
            result.model_id = model.model_id
            reason = self.models.unusable(model.model_id) or unfit_reason(model.profile, request)
            if reason is None:
                spec = spec_for(model.profile, request, result.seed)
                result.seed = spec.seed  # the seed actually sent, so the manifest can be reproduced
                try:
                    return spec, self._timed(result, "model", model.start, spec, deadline)
                except ModelUnavailable as error:
                    self.models.skip(model.model_id, error.detail)
                    reason = error.detail
            result.skipped.append((model.model_id, reason))
        if len(chain) == 1:
            raise ModelUnavailable(reason)
        tried = "; ".join(f"{model_id}: {why}" for model_id, why in result.skipped)
        raise ModelUnavailable(f"no model of the chain could make the image ({tried})")

    def _finish_image(self, request: GenerationRequest, request_id: str, result: ImageResult, spec: ImageSpec,
                      read_answer: Callable[[], bytes]) -> None:
        """Read, check, screen and store one answer (inside a processing slot)."""
        png = self._timed(result, "model", read_answer)  # reading the answer is the model's time too
        size = png_size(png)
        if spec.exact_size and size != (spec.width, spec.height):
            raise ModelFailed(f"the model returned an image of {size} instead of {spec.width}x{spec.height}")
        # A ratio model picks the pixel size itself (AWS does not document it): the PNG says what it made.
        result.width, result.height = size
        result.moderation = self._timed(result, "screening", self.screener.screen, png)
        metadata = {"request-id": request_id, "seed": str(result.seed), "model-id": result.model_id}
        if request.task != TEXT_TO_IMAGE:
            metadata["task"] = request.task
        if result.moderation.verdict == "flagged":
            png = self._quarantine(request, png, metadata, result)
        result.key = self._timed(result, "store", self._store_new, request, png, metadata)

    def _quarantine(self, request, png: bytes, metadata: dict, result: ImageResult) -> bytes:
        """Keep the flagged original privately (or not at all) and return the blurred copy to publish."""
        if self.config.flagged_action == "quarantine":
            original_key = self.config.quarantine_prefix + self.new_key(request)
            self._put_with_new_names(original_key, png, metadata,
                                     lambda: self.config.quarantine_prefix + self.new_key(request))
            result.moderation = Screening("flagged", result.moderation.labels, "blurred")
        else:
            result.moderation = Screening("flagged", result.moderation.labels, "blurred_withheld")
        return blur_png(png)

    def _store_new(self, request, png: bytes, metadata: dict) -> str:
        """Store under a fresh key, picking another name when one is taken."""
        return self._put_with_new_names(self.new_key(request), png, metadata, lambda: self.new_key(request))

    def _put_with_new_names(self, key: str, data: bytes, metadata: dict, rename) -> str:
        for _ in range(MAX_KEY_ATTEMPTS):
            try:
                self.store.put_new(key, data, metadata)
                return key
            except KeyExists:
                key = rename()
        raise StoreFailed(f"no free key after {MAX_KEY_ATTEMPTS} attempts")

    @staticmethod
    def _timed(result: ImageResult, stage: str, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            result.timings[stage] = result.timings.get(stage, 0.0) + time.perf_counter() - start


def unfit_reason(profile: ModelProfile | None, request: GenerationRequest) -> str | None:
    """Why a fallback model cannot take a request checked against another model's limits, else None."""
    if profile is not None and len(request.prompt) > profile.max_text:
        return f"the prompt is longer than its {profile.max_text} characters"
    return None


# Tasks whose output size the request names (the others follow their input image).
SIZED_TASKS = frozenset({TEXT_TO_IMAGE, "variation", "color_guided", "condition"})


def spec_for(profile: ModelProfile | None, request: GenerationRequest, seed: int) -> ImageSpec:
    """One model call for `request`, in the terms the model takes: its size or ratio, its knobs only."""
    width, height, ratio = request.width, request.height, None
    sized = request.task in SIZED_TASKS and (profile is None or bool(profile.sizes))
    if profile is not None and profile.aspect_ratios and request.task == TEXT_TO_IMAGE:
        ratio = request.aspect_ratio or profile.ratio_for(width, height)
    elif sized and profile is not None and (request.aspect_ratio or (width, height) not in profile.sizes):
        # A fallback from a ratio model, or a size this model lacks: its nearest size in shape.
        shape = request.aspect_ratio.split(":") if request.aspect_ratio else (width, height)
        width, height = profile.fits_size(int(shape[0]), int(shape[1]))
    takes = profile is None or profile.cfg_scale is not None
    cfg = (request.cfg_scale if request.cfg_scale is not None else
           profile.default_cfg_scale if profile is not None else None) if takes else None
    quality = request.quality if profile is None or profile.quality else None
    negative = request.negative_prompt if profile is None or profile.negative_prompt else None
    if profile is not None and not profile.min_seed <= seed <= profile.max_seed:
        # A fallback model with another seed range (Stability's 0 means "random"): the nearest seed it takes.
        seed = profile.min_seed + (seed - profile.min_seed) % (profile.max_seed - profile.min_seed + 1)
    return ImageSpec(request.prompt, negative, width, height, quality, cfg, seed, ratio, request.task,
                     request.params, request.inputs, exact_size=sized and ratio is None)


class _Completion:
    """Counts a request's images down; hands the final record to the last one once the caller has gone."""

    def __init__(self, count: int, finish, on_stored=None):
        self._lock = threading.Lock()
        self._remaining = count
        self._late = False
        self._finish = finish
        self._on_stored = on_stored

    def one_done(self, result: ImageResult) -> None:
        """Called by each image when it ends, stored or failed."""
        if result.key and self._on_stored is not None:
            try:
                self._on_stored(result)
            except Exception:  # noqa: BLE001 - progress reporting must not cost the image
                log.exception("image %d: reporting it stored failed", result.index)
        with self._lock:
            self._remaining -= 1
            write = self._late and self._remaining == 0
        if write:
            self._finish("deadline_exceeded")

    def hand_over_if_unfinished(self) -> bool:
        """True (and the last image writes the record) unless every image has ended meanwhile."""
        with self._lock:
            self._late = self._remaining > 0
            return self._late


def _main_cause(errors: list[ServiceError]) -> ServiceError:
    """The error to answer with when every image failed: the most common kind, the first of it."""
    counts = collections.Counter(type(e) for e in errors)
    kind = counts.most_common(1)[0][0]
    return next(e for e in errors if type(e) is kind)


__all__ = ["GenerationRequest", "GenerationResult", "ImageResult", "ImageSpec", "ImageModel", "ImageStore",
           "Screener", "Screening", "ModerationLabel", "ScreeningOff", "Pipeline", "PipelineConfig"]
