"""Idempotency-Key: a retried POST gets the first answer instead of paying again; state lives in the store."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from generation.errors import IdempotencyConflict, IdempotencyMismatch, InvalidRequest, KeyExists

FOLDER = ".idempotency"  # hidden: never served as an image
KIND = "idempotency"  # the store's tag for these documents, which a retention rule expires
# Printable ASCII without spaces at the ends, as in the IETF Idempotency-Key draft's examples.
KEY_PATTERN = re.compile(r"[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?")
# Answers worth replaying: a manifest, or a 504 whose images are still being kept. Anything else
# paid for nothing, so a retry should really try again.
REPLAYED_STATUSES = (200, 504)



@dataclass(frozen=True)
class Claim:
    """This request owns the key: it runs, then records its answer."""

    object_key: str


@dataclass(frozen=True)
class Replay:
    """The first answer, to send again."""

    status: int
    body: dict


class IdempotencyKeys:
    """Claims keys with the store's no-overwrite put, so they hold across workers and hosts."""

    def __init__(self, store, stale_after_seconds: float):
        self.store = store
        # A claim with no answer after this long belongs to a process that died mid-request.
        self.stale_after_seconds = stale_after_seconds

    @staticmethod
    def check_key(key: str) -> None:
        """InvalidRequest unless the header value is 1-255 printable ASCII characters."""
        if not KEY_PATTERN.fullmatch(key):
            raise InvalidRequest([{"field": "Idempotency-Key",
                                   "message": "must be 1 to 255 printable ASCII characters"}])

    def begin(self, key: str, scope: str, fingerprint: str, request_id: str) -> Claim | Replay:
        """Claim `key`, or return the first answer; 409 while the first runs, 422 for another body."""
        self.check_key(key)
        name = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        claim = Claim(f"{FOLDER}/{name}")
        document = {"fingerprint": fingerprint, "request_id": request_id, "claimed_at": time.time()}
        for _ in range(2):
            try:
                self.store.put_new(claim.object_key + ".claim.json", _encode(document), {"request-id": request_id},
                                   content_type="application/json", kind=KIND)
                return claim
            except KeyExists:
                pass
            first = _decode(self.store.get(claim.object_key + ".claim.json"))
            if first is None:
                continue  # released between our put and our read: try to claim again
            if first["fingerprint"] != fingerprint:
                raise IdempotencyMismatch("this Idempotency-Key was used with a different request body")
            answer = _decode(self.store.get(claim.object_key + ".answer.json"))
            if answer is not None:
                return Replay(answer["status"], answer["body"])
            if time.time() - first["claimed_at"] < self.stale_after_seconds:
                raise IdempotencyConflict(
                    f"request {first['request_id']} with this Idempotency-Key is still running; retry later",
                    retry_after=5)
            self.store.delete(claim.object_key + ".claim.json")  # its owner died; take it over
        raise IdempotencyConflict("this Idempotency-Key is being claimed by another request", retry_after=1)

    def finish(self, claim: Claim, status: int, body: dict) -> None:
        """Keep the answer for replays, or release the key when the attempt bought nothing."""
        if status in REPLAYED_STATUSES:
            self.store.put_new(claim.object_key + ".answer.json", _encode({"status": status, "body": body}), {},
                               content_type="application/json", kind=KIND)
        else:
            self.store.delete(claim.object_key + ".claim.json")


def fingerprint(body: dict) -> str:
    """A digest of the body's meaning: the same fields and values in any order give the same digest."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _encode(document: dict) -> bytes:
    return json.dumps(document).encode()


def _decode(data: bytes | None) -> dict | None:
    return None if data is None else json.loads(data)
