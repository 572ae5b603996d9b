"""API keys kept hashed in a JSON file: add, list, revoke, and check a presented key."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

# Names appear in logs, metrics and rate-limit keys, so they stay short and plain.
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
KEY_PREFIX = "aig_"
FILE_VERSION = 1


class KeyFileError(ValueError):
    """The keys file cannot be read or a change to it is refused."""


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: its name and the SHA-256 of the key, never the key itself."""

    name: str
    sha256: str
    created: str


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe, with a prefix that secret scanners can spot."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """The stored form of a key.

    A plain SHA-256 suffices because every key is 256 random bits: nobody can guess one from its hash.
    Slow password hashes (bcrypt, argon2) exist for low-entropy secrets chosen by people, and would
    add tens of milliseconds to every request for no gain here.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: str) -> tuple[ApiKey, ...]:
    """Every key in the file; a missing file holds none."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise KeyFileError(f"cannot read the API keys file {path}: {error}") from None
    try:
        keys = tuple(ApiKey(k["name"], k["sha256"], k.get("created", "")) for k in data["keys"])
    except (KeyError, TypeError) as error:
        raise KeyFileError(f"the API keys file {path} is not a keys file: missing {error}") from None
    if not all(isinstance(k.name, str) and isinstance(k.sha256, str) for k in keys):
        raise KeyFileError(f"the API keys file {path} is not a keys file: names and hashes must be strings")
    return keys


def write_keys(path: str, keys: tuple[ApiKey, ...]) -> None:
    """Replace the file atomically, so a running service never reads half of it."""
    folder = os.path.dirname(os.path.abspath(path))
    payload = json.dumps({"version": FILE_VERSION, "keys": [asdict(k) for k in keys]}, indent=2) + "\n"
    fd, temp = tempfile.mkstemp(prefix=".keys-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        _keep_access(temp, path)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _keep_access(temp: str, path: str) -> None:
    """Give the new file the old one's mode and owner, so an admin's edit never locks the service out."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        # A new file: group-readable, since the service runs as a member of the folder's group
        # (root writes, the service user reads); the world gets nothing.
        os.chmod(temp, 0o640)
        return
    os.chmod(temp, st.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(temp, st.st_uid, st.st_gid)


@contextlib.contextmanager
def _locked(path: str):
    """Serialise read-modify-write changes, so two admins adding keys at once lose neither."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add_key(path: str, name: str) -> str:
    """Add a key named `name` and return the key itself: the only time it is ever seen."""
    if not NAME.fullmatch(name):
        raise KeyFileError("a key name is 1-64 letters, digits, '.', '_' or '-'")
    with _locked(path):
        keys = read_keys(path)
        if any(k.name == name for k in keys):
            raise KeyFileError(f"a key named {name!r} exists; revoke it first or pick another name")
        key = new_key()
        created = datetime.now(UTC).isoformat(timespec="seconds")
        write_keys(path, (*keys, ApiKey(name, digest(key), created)))
    return key


def revoke_key(path: str, name: str) -> None:
    """Remove the key named `name`."""
    with _locked(path):
        keys = read_keys(path)
        kept = tuple(k for k in keys if k.name != name)
        if len(kept) == len(keys):
            raise KeyFileError(f"no key named {name!r}")
        write_keys(path, kept)


class KeyRing:
    """The keys of one file, re-read whenever the file changes, checked in constant time."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._keys: tuple[ApiKey, ...] = ()
        self.refresh(strict=True)

    def refresh(self, strict: bool = False) -> None:
        """Re-read the file if its inode, size or mtime moved; one stat() when nothing changed."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._keys = read_keys(self.path)
            except KeyFileError:
                if strict:
                    raise
                # Fail closed: a broken file must not keep honouring a key someone meant to revoke.
                self._keys = ()
                self._stamp = stamp
                raise
            self._stamp = stamp

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        # A rename gives a new inode, so even two writes within the mtime granularity are seen.
        return st.st_ino, st.st_size, st.st_mtime_ns

    def names(self) -> list[str]:
        """The names of the keys in force."""
        return [k.name for k in self._keys]

    def match(self, presented: str) -> str | None:
        """The name of the key `presented` is, or None."""
        wanted = digest(presented)
        found = None
        # Compare against every key, without stopping early, so timing tells nothing about the keys.
        for key in self._keys:
            if hmac.compare_digest(key.sha256, wanted):
                found = key.name
        return found
