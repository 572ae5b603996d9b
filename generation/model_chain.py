"""The models a service offers: the default and its fallback chain, their lifecycle, and which are skipped."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

ACTIVE, LEGACY, RETIRED, UNKNOWN = "ACTIVE", "LEGACY", "RETIRED", "UNKNOWN"


@dataclass(frozen=True)
class Lifecycle:
    """What Bedrock's control plane last said of a model (UNKNOWN until asked, or when it may not be asked)."""

    status: str = UNKNOWN
    legacy_time: datetime | None = None
    end_of_life_time: datetime | None = None
    public_extended_access_time: datetime | None = None
    checked_at: datetime | None = None
    detail: str = ""

    def retired(self, now: datetime | None = None) -> bool:
        """True when Bedrock refused the model or its end of life has passed."""
        now = now or datetime.now(UTC)
        return self.status == RETIRED or (self.end_of_life_time is not None and self.end_of_life_time <= now)


class ModelChain:
    """Image model adapters by id, the chain tried when a request names none, and refusals remembered a while."""

    def __init__(self, models, fallback_ids=(), *, skip_seconds: float = 600.0, clock=time.monotonic):
        self.models = {m.model_id: m for m in models}
        self.default_id = models[0].model_id
        chain = (self.default_id, *fallback_ids)
        self.fallback_chain = tuple(dict.fromkeys(m for m in chain if m in self.models))
        self.skip_seconds = skip_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._skipped: dict[str, tuple[float, str]] = {}
        self._lifecycle: dict[str, Lifecycle] = {}

    def offered(self) -> list[str]:
        """Every model id a request may name, the default first."""
        return list(self.models)

    def chain(self, requested: str | None) -> list:
        """The adapters to try, in order: the one a request named, else the default and its fallbacks."""
        ids = (requested,) if requested else self.fallback_chain
        return [self.models[m] for m in ids]

    def skip(self, model_id: str, reason: str) -> None:
        """Remember that Bedrock refused `model_id`, so it is not called again for a while."""
        if self.skip_seconds:
            with self._lock:
                self._skipped[model_id] = (self._clock() + self.skip_seconds, reason)

    def unusable(self, model_id: str) -> str | None:
        """Why `model_id` is not to be called now (retired, or refused a moment ago), else None."""
        lifecycle = self.lifecycle(model_id)
        if lifecycle.retired():
            return lifecycle.detail or f"{model_id} is past its end of life"
        with self._lock:
            until, reason = self._skipped.get(model_id, (0.0, ""))
            if until > self._clock():
                return reason
            self._skipped.pop(model_id, None)
        return None

    def set_lifecycle(self, model_id: str, lifecycle: Lifecycle) -> None:
        """Record what the control plane said of a model."""
        with self._lock:
            self._lifecycle[model_id] = lifecycle

    def lifecycle(self, model_id: str) -> Lifecycle:
        """The last known lifecycle of a model."""
        with self._lock:
            return self._lifecycle.get(model_id, Lifecycle())
