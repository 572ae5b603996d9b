"""The offline store: a local folder, files created exclusively and never outside the folder."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from generation.errors import KeyExists, StoreFailed

# What /images/ serves: the PNGs, and the JPEG/WebP copies the OpenAI routes convert them to.
IMAGE_SUFFIXES = {".png": "image/png", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class FilesystemStore:
    """Keeps each image as a file under `root`; a key maps to a relative path."""

    # Keys are paths under the root as they are: nothing is put before them.
    key_prefix = ""

    def __init__(self, root: str | os.PathLike, private_prefix: str = ""):
        self.root = Path(root).resolve()
        # Never served at /images/ (the quarantine of flagged originals), judged on the resolved path.
        self.private_prefix = private_prefix

    def path_for(self, key: str) -> Path:
        """The file of `key`, refusing anything that would land outside the root."""
        path = (self.root / key).resolve()
        if path == self.root or self.root not in path.parents:
            raise StoreFailed(f"key {key!r} falls outside the store")
        return path

    def put_new(self, key: str, data: bytes, metadata: dict[str, str], content_type: str = "image/png",
                kind: str = "") -> None:
        """Write `data` at `key` atomically; KeyExists if the file is already there (metadata and kind not kept)."""
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write a hidden temporary file, then hard-link it into place: link() never replaces an
            # existing file, and no reader ever sees a half-written image at the key.
            temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.part"
            with open(temporary, "xb") as handle:
                handle.write(data)
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise KeyExists(key) from None
            finally:
                temporary.unlink(missing_ok=True)
        except (KeyExists, StoreFailed):
            raise
        except OSError as error:
            raise StoreFailed(f"could not write {key!r}: {error.strerror}") from error

    def get(self, key: str) -> bytes | None:
        """The bytes at `key`, or None when there is no such file."""
        try:
            return self.path_for(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise StoreFailed(f"could not read {key!r}: {error.strerror}") from error

    def delete(self, key: str) -> None:
        """Remove `key` if it is there."""
        try:
            self.path_for(key).unlink(missing_ok=True)
        except OSError as error:
            raise StoreFailed(f"could not delete {key!r}: {error.strerror}") from error

    def listing(self, prefix: str, limit: int = 1000) -> list[tuple[str, float]]:
        """(key, modified time) of the files under `prefix`, at most `limit`."""
        try:
            folder = self.path_for(prefix.rstrip("/"))
        except StoreFailed:
            return []
        found = []
        for path in folder.glob("*") if folder.is_dir() else ():
            if path.is_file() and not path.name.endswith(".part"):
                found.append((path.relative_to(self.root).as_posix(), path.stat().st_mtime))
                if len(found) >= limit:
                    break
        return found

    def prune(self, hidden_folder: str, older_than_seconds: float) -> int:
        """Delete the JSON documents in every `hidden_folder` (e.g. `.requests`) older than that; how many went."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self.root.rglob(f"{hidden_folder}/*.json"):
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # pruned by another process meanwhile
        return removed

    def published(self, key: str) -> bytes | None:
        """The bytes of a published image at `key`: a PNG file of the store, not hidden, not private; else None.

        Judged on the resolved path, so a symlink cannot lead into the quarantine or out of the folder.
        """
        try:
            path = self.path_for(key)
        except StoreFailed:
            return None
        relative = path.relative_to(self.root).as_posix()
        if path.suffix not in IMAGE_SUFFIXES or any(part.startswith(".") for part in relative.split("/")) \
                or (self.private_prefix and relative.startswith(self.private_prefix)):
            return None
        try:
            return path.read_bytes()
        except OSError:  # absent, a folder, or unreadable: not an image to serve
            return None

    def address(self, key: str, image_url) -> dict[str, str]:
        """The URL at which this service serves the image (offline mode)."""
        return {"url": image_url(key)}

    def check(self) -> None:
        """Raise StoreFailed unless the root is a writable folder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreFailed(f"cannot create the data folder {self.root}: {error.strerror}") from error
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreFailed(f"the data folder {self.root} is not writable")
