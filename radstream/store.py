"""The claim-check store: DICOM instance bytes addressed by their SHA-256.

Layout under the store root::

    sha256/ab/cd/abcd....dcm   one file per distinct content, written once, fsynced
    incoming/                  files being received (same filesystem, so adding is a rename/link)

No UID or other sender-controlled value ever becomes part of a path. Events carry the
``file://`` URI of the object; :func:`path_for_uri` turns one back into a path and
refuses anything outside the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from radstream.settings import Settings

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredObject:
    sha256: str
    byte_size: int
    path: Path
    uri: str
    existed: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class ContentStore:
    """A folder of immutable, content-addressed objects."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.objects = self.root / "sha256"
        self.incoming = self.root / "incoming"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ContentStore:
        return cls(settings.store_root)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a lowercase hex SHA-256")
        return self.objects / sha256[:2] / sha256[2:4] / f"{sha256}.dcm"

    @staticmethod
    def _intact(path: Path, sha256: str) -> bool:
        """A stored object is kept only if its bytes still hash to its name (a crash between
        linking and fsync could have left it short)."""
        try:
            return hash_file(path)[0] == sha256
        except OSError:
            return False

    def uri_for(self, sha256: str) -> str:
        return self.path_for(sha256).as_uri()

    def add_file(self, src: Path, *, move: bool = False, digest: tuple[str, int] | None = None) -> StoredObject:
        """Make ``src`` (a file under :attr:`incoming`) a durable object.

        The file is hashed (unless ``digest``, its ``hash_file`` result, is given), hard-linked
        to its content address (atomically, via a temporary name), fsynced, and the directory
        entry is fsynced too. Content already stored (and still intact) is kept; the incoming
        file is removed with ``move``.
        """
        sha, size = digest if digest is not None else hash_file(src)
        dest = self.path_for(sha)
        existed = dest.exists() and self._intact(dest, sha)
        if not existed:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # link (or rename) first, then one fsync of the file: on a journalling file system it
            # commits the data and the new name together, and the directory fsync finds little left
            tmp_name = dest.with_name(f".{dest.name}.{os.getpid()}.{time.monotonic_ns()}")
            os.link(src, tmp_name)
            os.replace(tmp_name, dest)
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not existed:
            _fsync_dir(dest.parent)
        if move:
            with contextlib.suppress(FileNotFoundError):
                src.unlink()
        return StoredObject(sha, size, dest, dest.as_uri(), existed)

    def add_bytes(self, data: bytes) -> StoredObject:
        """Store bytes held in memory (small objects, tests)."""
        tmp = self.incoming / f"put-{os.getpid()}-{time.monotonic_ns()}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        return self.add_file(tmp, move=True)

    def sweep_incoming(self, older_than_s: float = 3600.0) -> int:
        """Remove partial files left by dropped associations or a crash."""
        cutoff = time.time() - older_than_s
        removed = 0
        for p in self.incoming.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def path_for_uri(uri: str, store_root: Path | None = None) -> Path:
    """The local path of a ``file://`` store URI (optionally checked to lie under ``store_root``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"unsupported store URI scheme {parsed.scheme!r}")
    path = Path(unquote(parsed.path))
    if store_root is not None:
        root = store_root.resolve()
        if not path.resolve().is_relative_to(root):
            raise ValueError("store URI outside the store root")
    return path
