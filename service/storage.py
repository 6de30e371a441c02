"""Blob store: content-addressed files under one directory.

Paths are built from the SHA-256 of the content only, never from user-supplied strings,
so no filename, UID or form field can steer a write outside the store.

Two transactions can store the same bytes at once, and one of them may fail. The file
is then removed only if nobody else stored it meanwhile: ``put`` returns a *stamp* (the
file's mtime) to the one call that created the file, and every later ``put`` of the same
content bumps the mtime. ``discard`` deletes a file only while its mtime is still the
creator's stamp, so a failed creator never deletes a file a concurrent writer relies on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError("blob key must be a lowercase sha256 hex digest")
        return self.root / key[:2] / key[2:4] / key

    @staticmethod
    def key_for(data: bytes) -> str:
        """The key ``put`` stores ``data`` under."""
        return hashlib.sha256(data).hexdigest()

    def put(self, data: bytes) -> tuple[str, int | None]:
        """Store ``data`` durably; return its key and, if this call created the file, its stamp."""
        key = self.key_for(data)
        path = self.path_for(key)
        for _ in range(3):  # a concurrent discard can remove the file between our steps
            if self._touch(path):
                return key, None
            stamp = self._create(path, data)
            if stamp is not None:
                return key, stamp
        raise OSError(f"blob {key} kept appearing and vanishing while being stored")

    def _create(self, path: Path, data: bytes) -> int | None:
        """Write via a fsynced temporary file; None if a concurrent put created the file first."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                stamp = os.fstat(fh.fileno()).st_mtime_ns
            os.link(tmp, path)  # unlike rename, refuses to replace a file another put created
        except FileExistsError:
            return None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return stamp

    def discard(self, key: str, stamp: int) -> None:
        """Delete the file created with ``stamp`` unless another ``put`` has stored it since."""
        path = self.path_for(key)
        tomb = path.with_name(f".tomb-{uuid.uuid4().hex}")
        try:
            os.rename(path, tomb)  # atomically out of reach of new puts, which recreate it
        except FileNotFoundError:
            return
        if tomb.stat().st_mtime_ns != stamp:
            with contextlib.suppress(FileExistsError):  # a new put already wrote the same bytes
                os.link(tomb, path)  # someone stored it meanwhile: put it back
        tomb.unlink()

    def get(self, key: str) -> bytes:
        return self.path_for(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path_for(key).exists()

    def writable(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.access(self.root, os.W_OK)

    @staticmethod
    def _touch(path: Path) -> bool:
        """Mark an existing file as stored again: its mtime becomes now (at least mtime + 1 ns, never
        back to a creator's stamp), so the orphan sweeper's grace period protects it afresh."""
        try:
            mtime = max(path.stat().st_mtime_ns + 1, time.time_ns())
            os.utime(path, ns=(mtime, mtime))
        except FileNotFoundError:
            return False
        return True
