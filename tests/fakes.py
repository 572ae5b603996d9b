"""In-process fakes of the pipeline's three interfaces, for unit tests."""

from __future__ import annotations

import threading
import time

from backends.placeholder_model import draw_placeholder
from generation.errors import KeyExists, ScreeningFailed
from image_generation import ImageSpec, ModerationLabel, Screening


class FakeModel:
    """Draws small placeholders; can fail chosen calls, sleep, and counts calls in flight."""

    model_id = "fake-model"
    placeholder = False
    profile = None  # takes every spec as asked

    def __init__(self, *, latency=0.0, errors=None, size=None):
        self.latency = latency
        self.errors = list(errors or [])  # per call, in order: None or an exception to raise
        self.size = size
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def start(self, spec: ImageSpec, deadline: float):
        png = self.generate(spec, deadline)
        return lambda: png

    def generate(self, spec: ImageSpec, deadline: float) -> bytes:
        with self.lock:
            self.calls += 1
            error = self.errors.pop(0) if self.errors else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency)
            if error:
                raise error
            width, height = self.size or (spec.width, spec.height)
            return draw_placeholder(spec.prompt, spec.seed, width, height)
        finally:
            with self.lock:
                self.in_flight -= 1


class MemoryStore:
    """A dict that refuses to overwrite, like a conditional put."""

    key_prefix = ""

    def __init__(self, *, fail=None):
        self.objects: dict[str, tuple[bytes, dict]] = {}
        self.fail = fail
        self.lock = threading.Lock()

    def put_new(self, key: str, data: bytes, metadata: dict, content_type: str = "image/png", kind: str = "") -> None:
        if self.fail:
            raise self.fail
        with self.lock:
            if key in self.objects:
                raise KeyExists(key)
            self.objects[key] = (data, dict(metadata))

    def get(self, key: str) -> bytes | None:
        with self.lock:
            return self.objects[key][0] if key in self.objects else None

    def delete(self, key: str) -> None:
        with self.lock:
            self.objects.pop(key, None)

    def images(self) -> dict:
        """The published images only, without request records."""
        return {k: v for k, v in self.objects.items() if "/." not in "/" + k}

    def check(self) -> None:
        pass

    def address(self, key: str, image_url) -> dict[str, str]:
        return {"url": image_url(key)}

    def published(self, key: str) -> bytes | None:
        return self.get(key)

    def listing(self, prefix: str, limit: int = 1000) -> list[tuple[str, float]]:
        with self.lock:
            return [(k, 0.0) for k in self.objects if k.startswith(prefix.rstrip("/") + "/")][:limit]


class FakeScreener:
    """Flags images whose prompt-derived bytes were registered, or fails on demand."""

    def __init__(self, *, flag_all=False, fail=False):
        self.flag_all = flag_all
        self.fail = fail
        self.seen: list[bytes] = []

    def screen(self, png: bytes) -> Screening:
        self.seen.append(png)
        if self.fail:
            raise ScreeningFailed("screening service unreachable")
        if self.flag_all:
            return Screening("flagged", (ModerationLabel("Graphic Violence", "Violence", 97.5),
                                         ModerationLabel("Violence", "", 97.5)))
        return Screening("clean")
