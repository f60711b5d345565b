"""One download per models folder across processes: two WebUIs sharing a models folder take turns.

The lock is `.ella-download.lock` in the folder's real location (so a WebUI that reaches it through a
link shares it with one that does not), held with the operating system's file lock (fcntl.flock, on
Windows msvcrt.locking). The OS drops that lock when its holder exits or crashes, so a lock left by a
dead process never blocks: the next process takes it at once. The file records the holder (PID, host,
start time) for the message the waiting side shows; the file itself stays (removing it would race
with a process that just opened it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

LOCK_NAME = ".ella-download.lock"
_WINDOWS_LOCK_OFFSET = 1 << 20  # msvcrt locks a byte range: one past the holder's record, which stays readable


class FolderLock:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(os.path.realpath(folder))
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if no other process (or other FolderLock) holds it; never blocks."""
        if self._fd is not None:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(self.path, flags, 0o666)
        try:
            if not _os_lock(fd):
                os.close(fd)
                return False
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, record)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder recorded while nobody holds it
        except OSError:
            pass
        os.close(fd)  # closing drops the OS lock

    def holder(self) -> Optional[dict]:
        """The recorded holder {pid, host, started}, or None when unknown (no file, nobody recorded yet)."""
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(4096) or b"null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def describe_holder(self) -> str:
        """'PID 123 on host, since 10:02:03' or 'another process' for the waiting side's message."""
        h = self.holder() or {}
        if not isinstance(h.get("pid"), int):
            return "another process"
        since = (
            time.strftime("%H:%M:%S", time.localtime(h["started"]))
            if isinstance(h.get("started"), (int, float))
            else "?"
        )
        return f"PID {h['pid']} on {h.get('host', '?')}, since {since}"

    def __enter__(self) -> FolderLock:
        if not self.try_acquire():
            raise BlockingIOError(f"'{self.path}' is held by {self.describe_holder()}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _os_lock(fd: int) -> bool:
    """An exclusive, non-blocking OS lock on the open file; False where another holder has it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
