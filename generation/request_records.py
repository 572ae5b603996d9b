"""JSON records of each request that reached a model, kept in the store beside its images."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import asdict

from generation.errors import KeyExists, ServiceError, StoreFailed

log = logging.getLogger("ai_image_generator.records")
RECORD_FOLDER = ".requests"  # hidden: the image route never serves a dot segment
RECORD_KIND = "request-record"


class RequestRecords:
    """Writes a 'started' record before any paid call and a final one once every image is done."""

    def __init__(self, store):
        self.store = store

    def begin(self, request, request_id: str, model_id: str) -> str:
        """Write the started record and return the record's key (without suffix); StoreFailed stops the request."""
        base = f"{request.output_folder}/{RECORD_FOLDER}/{request_id}"
        document = {"request_id": request_id, "status": "started", "model_id": model_id,
                    "started_at": time.time(), "parameters": parameters(request)}
        for candidate in (base, f"{base}-{secrets.token_hex(4)}", f"{base}-{secrets.token_hex(8)}"):
            try:
                self.store.put_new(candidate + ".started.json", _encode(document), {"request-id": request_id},
                                   content_type="application/json", kind=RECORD_KIND)
            except KeyExists:
                # A caller reused a request id: keep both records, under a new name.
                continue
            if self.store.get(candidate + ".json") is None:
                return candidate
            # An earlier request with this id has ended (its started record is gone): a new name.
            self.store.delete(candidate + ".started.json")
        raise StoreFailed(f"no free name for the record of request {request_id}")

    def finish(self, record_key: str, request_id: str, model_id: str, request, results, outcome: str) -> None:
        """Write the final record (every image's key, seed, verdict or error), then drop the started one.

        One record per request once it ends. Never raises.
        """
        document = {
            "request_id": request_id, "status": outcome, "model_id": model_id, "finished_at": time.time(),
            "parameters": parameters(request),
            "images": [_image_entry(r) for r in results],
        }
        try:
            self.store.put_new(record_key + ".json", _encode(document), {"request-id": request_id},
                               content_type="application/json", kind=RECORD_KIND)
        except (KeyExists, ServiceError) as error:
            # The images are stored and the caller has its answer; a missing record must not undo that.
            # The started record stays, so the request is still on file.
            log.error("request %s: could not write its record %s.json: %s", request_id, record_key, error)
            return
        try:
            self.store.delete(record_key + ".started.json")
        except ServiceError as error:
            log.warning("request %s: its started record stays beside the final one: %s", request_id, error)


def parameters(request) -> dict:
    """The request as the record keeps it: every field but the input images' bytes (the source names them)."""
    kept = asdict(request)
    kept.pop("inputs", None)
    kept.pop("candidates", None)
    kept["params"] = dict(kept.get("params") or ())
    return kept


def _image_entry(result) -> dict:
    entry = {"index": result.index, "seed": result.seed, "key": result.key,
             "width": result.width, "height": result.height, "model_id": result.model_id}
    if result.skipped:
        entry["skipped_models"] = [{"model_id": m, "reason": why} for m, why in result.skipped]
    if result.moderation is not None:
        entry["moderation"] = {"verdict": result.moderation.verdict, "action": result.moderation.action,
                               "labels": [asdict(label) for label in result.moderation.labels]}
    if result.error is not None:
        entry["error"] = {"code": result.error.code, "detail": result.error.detail}
    return entry


def _encode(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()
