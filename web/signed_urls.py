"""Signed, expiring /images/ URLs: a browser's <img src> (or an OpenAI client) fetches without a key header."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from urllib.parse import urlencode

from generation.errors import KeyExists

# The signing secret lives in the store (hidden, never served), so every worker and host signs alike.
SECRET_KEY = ".signing/url-secret"
SIGNED_EXPIRY = re.compile(r"[0-9]{1,12}")
SIGNATURE = re.compile(r"[0-9a-f]{64}")


class UrlSigner:
    """Signs image keys with a secret kept in the store; checks signatures in constant time."""

    def __init__(self, store, seconds: int):
        self.store = store
        self.seconds = seconds
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def _key(self) -> bytes:
        with self._lock:
            if self._secret is None:
                secret = self.store.get(SECRET_KEY)
                if secret is None:
                    try:
                        self.store.put_new(SECRET_KEY, secrets.token_bytes(32), {},
                                           content_type="application/octet-stream")
                    except KeyExists:
                        pass  # another worker made it first: use theirs
                    secret = self.store.get(SECRET_KEY)
                self._secret = secret
            return self._secret

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._key(), f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, key: str) -> str:
        """`<base>/images/<key>?expires=..&signature=..`, valid for the configured seconds."""
        expires = int(time.time()) + self.seconds
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{base_url}/images/{key}?{query}"

    def valid(self, key: str, expires: str | None, signature: str | None) -> bool:
        """True for an unexpired URL this service signed for exactly this key."""
        if not expires or not signature or not SIGNED_EXPIRY.fullmatch(expires) \
                or not SIGNATURE.fullmatch(signature) or int(expires) < time.time():
            return False  # anything but the shape this service makes is no signature at all
        return hmac.compare_digest(self._signature(key, int(expires)), signature)
