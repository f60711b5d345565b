"""A cache of file hashes, keyed by a file's identity (real path, size, mtime), shared by downloads and checks."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hub import RemoteFile

_sha256_cache: dict[tuple[str, int, int], str] = {}
_sha256_lock = threading.Lock()


def file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    """A file's identity for caches: its real path, size and mtime (a rewrite or a replacement changes it)."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def hash_file(path: str | os.PathLike, hasher):
    """Feed a file to `hasher` in 1 MiB chunks; returns the hasher."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file; cached by (path, size, mtime) so a second call is instant."""
    key = file_key(Path(path))
    with _sha256_lock:
        if key in _sha256_cache:
            return _sha256_cache[key]
    digest = hash_file(path, hashlib.sha256()).hexdigest()
    with _sha256_lock:
        _sha256_cache[key] = digest
    return digest


def sha256_known(path: str | os.PathLike) -> bool:
    """Whether file_sha256(path) would answer from its cache (no read of the file)."""
    try:
        key = file_key(Path(path))
    except OSError:
        return False
    with _sha256_lock:
        return key in _sha256_cache


def remember_sha256(path: Path, digest: str) -> None:
    with _sha256_lock:
        _sha256_cache[file_key(path)] = digest


def file_matches(path: Path, remote: RemoteFile) -> bool:
    """Whether a local file has the hub's size and hash."""
    try:
        if not path.is_file() or path.stat().st_size != remote.size:
            return False
        if remote.sha256:
            return file_sha256(path) == remote.sha256
        return hash_file(path, remote.hasher()).hexdigest() == remote.blob_id
    except OSError:
        return False


def cached_digests(moves: list[tuple[Path, Path]]) -> dict[Path, str]:
    """The cached sha256 of each source, to re-key under its destination (a rename keeps size and mtime)."""
    out = {}
    with _sha256_lock:
        for src, dst in moves:
            try:
                digest = _sha256_cache.get(file_key(src))
            except OSError:
                continue
            if digest:
                out[dst] = digest
    return out
