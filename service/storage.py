"""Blob store: content-addressed files under one directory.

Paths are built from the SHA-256 of the content only, never from user-supplied strings,
so no filename, UID or form field can steer a write outside the store.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError("blob key must be a lowercase sha256 hex digest")
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` durably; return its key and whether this call created the file."""
        key = hashlib.sha256(data).hexdigest()
        path = self.path_for(key)
        if path.exists():
            return key, False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key, True

    def get(self, key: str) -> bytes:
        return self.path_for(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path_for(key).exists()

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def writable(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.access(self.root, os.W_OK)
