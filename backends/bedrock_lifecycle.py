"""Asks Bedrock's control plane (GetFoundationModel) where each offered model is in its lifecycle."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError

from generation.model_chain import ACTIVE, LEGACY, RETIRED, UNKNOWN, Lifecycle, ModelChain
from generation.model_registry import base_model_id

log = logging.getLogger("ai_image_generator.lifecycle")
# Bedrock's words for a model it will not serve (wave2-reference.md B 3.1 and 4).
REFUSED_CODES = {"ResourceNotFoundException", "ValidationException"}


class LifecycleWatcher:
    """Checks every offered model at start-up and then every `interval` seconds, on one daemon thread."""

    def __init__(self, chain: ModelChain, client_for, regions: dict[str, str], interval: float):
        self.chain = chain
        self.client_for = client_for  # region -> a `bedrock` control-plane client
        self.regions = regions  # model id -> the region it is called in
        self.interval = interval
        self.checked = threading.Event()  # set once the first round is done (tests and readiness wait on it)
        self._stop = threading.Event()
        self._denied_warned = False

    def start(self) -> LifecycleWatcher:
        """Run the first round now, in the background, then one every interval."""
        threading.Thread(target=self._loop, name="bedrock-lifecycle", daemon=True).start()
        return self

    def stop(self) -> None:
        """End the loop after the current round."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check_all()
            self.checked.set()
            if self._stop.wait(self.interval):
                return

    def check_all(self) -> None:
        """Ask about every offered model once; never raises."""
        for model_id in self.chain.offered():
            try:
                lifecycle = self.check(model_id)
            except Exception:  # noqa: BLE001 - a lifecycle check only informs; it must never stop the service
                log.exception("lifecycle check of %s failed unexpectedly", model_id)
                continue
            if lifecycle is not None:
                self.chain.set_lifecycle(model_id, lifecycle)

    def check(self, model_id: str) -> Lifecycle | None:
        """The model's lifecycle, or None when the control plane could not say (the last answer stands)."""
        now = datetime.now(UTC)
        # GetFoundationModel takes the base id, never a cross-region profile id (`us.…`).
        base = base_model_id(model_id)
        try:
            details = self.client_for(self.regions[model_id]).get_foundation_model(
                modelIdentifier=base)["modelDetails"]
        except ClientError as error:
            return self._refusal(model_id, error, now)
        except BotoCoreError as error:
            log.warning("could not ask Bedrock about %s (%s); its lifecycle stays as last known",
                        model_id, type(error).__name__)
            return None
        found = details.get("modelLifecycle") or {}
        lifecycle = Lifecycle(
            status=LEGACY if found.get("status") == LEGACY else ACTIVE,
            legacy_time=found.get("legacyTime"), end_of_life_time=found.get("endOfLifeTime"),
            public_extended_access_time=found.get("publicExtendedAccessTime"), checked_at=now)
        if lifecycle.retired(now):
            lifecycle = Lifecycle(RETIRED, lifecycle.legacy_time, lifecycle.end_of_life_time,
                                  lifecycle.public_extended_access_time, now,
                                  f"{model_id} reached its end of life on {lifecycle.end_of_life_time:%Y-%m-%d}")
            log.warning("%s is past its end of life; it is not called", model_id)
        elif lifecycle.status == LEGACY:
            log.warning("%s is a LEGACY model: end of life %s; answers made with it carry Sunset", model_id,
                        f"{lifecycle.end_of_life_time:%Y-%m-%d}" if lifecycle.end_of_life_time else "not announced")
        return lifecycle

    def _refusal(self, model_id: str, error: ClientError, now: datetime) -> Lifecycle | None:
        info = error.response.get("Error", {})
        code, message = info.get("Code", ""), info.get("Message", "")
        if code in REFUSED_CODES:
            log.warning("Bedrock does not offer %s here (%s: %s); it is not called", model_id, code, message)
            return Lifecycle(RETIRED, checked_at=now,
                             detail=f"Bedrock's control plane refused {model_id} ({code}: {message})")
        if code == "AccessDeniedException":
            if not self._denied_warned:
                # Asking is optional: without bedrock:GetFoundationModel the service still runs.
                log.warning("no permission to ask Bedrock about model lifecycles (%s); grant "
                            "bedrock:GetFoundationModel to see LEGACY and end-of-life dates", message)
                self._denied_warned = True
            return Lifecycle(UNKNOWN, checked_at=now, detail="no permission to ask (bedrock:GetFoundationModel)")
        log.warning("Bedrock could not say where %s is in its lifecycle (%s); it stays as last known",
                    model_id, code)
        return None
