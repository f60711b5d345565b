"""Downloading the released ELLA files from the Hugging Face hub, safely and resumably: the DownloadManager.

Each file streams into a hidden `.ella-download/` folder beside its target (discovery skips hidden
folders), is checked against the size and hash the hub publishes (sha256 for LFS files, the git blob
sha1 for small ones) and only then moved into place with os.replace. A new T5 folder is assembled
whole in the staging folder and moved in when every file is verified, so a half download is never
found as a model. An interrupted file keeps its bytes and the next attempt continues with an HTTP
Range request.

No write leaves the configured folder's real location (a link inside it cannot lead one out; a folder
that is itself a link to another disk is fine), no file gets more bytes than the listing gives, and
two processes sharing a folder take turns through `folder_lock.FolderLock`.

The hub's protocol is in `hub.py`, the hash cache in `file_hashes.py`, the status text in
`download_status.py`. huggingface_hub's `hf_hub_download` is not used: in 2.4 it deletes a partial
file instead of resuming it on the next call, and over plain HTTP it checks sizes but not hashes.
Nothing here touches the network until `DownloadManager.start`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .discovery import KNOWN_T5
from .download_status import DownloadStatus, human_size
from .errors import ArgumentError, ELLAError, ModelFileError, TextEncoderError, exception_summary
from .file_hashes import cached_digests, file_matches, hash_file, remember_sha256
from .folder_lock import FolderLock
from .hub import (
    BY_HAND,
    ELLA_FILE,
    KINDS,
    PART,
    REPO,
    REVISION,
    HubUnavailable,
    RemoteFile,
    connection_problem,
    hub_client,
    hub_endpoint,
    offline_message,
    offline_reason,
    remote_files,
    status_code,
    stream,
)
from .safetensors_file import read_header
from .schema import shown
from .t5 import inspect_t5_folder

__all__ = [
    "BY_HAND",
    "ELLA_FILE",
    "KINDS",
    "MANAGER",
    "REPO",
    "STAGING",
    "DownloadManager",
    "HubUnavailable",
    "hub_download",
    "remote_files",
]

log = logging.getLogger("ella")

STAGING = ".ella-download"
LOCK_POLL = 0.5  # seconds between looks at a folder another process is downloading into
ERRORS = {"ella": ModelFileError, "t5": TextEncoderError}


def _error(kind: Optional[str]) -> type[ELLAError]:
    return ERRORS.get(kind or "", ELLAError)


class _Retry(Exception):
    """A failure worth another attempt (lost connection, server error); the partial file is kept."""


class _Cancelled(Exception):
    pass


class _TooLong(Exception):
    """The server sends more than the listed size; `declared` is its Content-Length, if it gave one."""

    def __init__(self, declared: Optional[int]):
        self.declared = declared


@dataclass
class _Unit:
    """One kind's files: fetched into `stage`, then moved to `dest` (the folder that holds them)."""

    kind: str
    dest: Path  # target folder (ella) or the T5 folder itself (t5)
    stage: Path
    result: Path  # what the user gets: the ELLA file or the T5 folder
    files: list[tuple[RemoteFile, str]]  # (remote file, name relative to dest)
    whole: bool  # the T5 folder is new: move the staged folder in at once
    target: Path  # the configured folder (models/ELLA or models/ELLA/t5): every write stays inside it
    root: str  # its real location (through any link to another disk)

    def check_inside(self, path: Path, *, follow: bool = True) -> None:
        """Refuse a write whose real path leaves the configured folder (a link inside it pointing out).

        follow=False for a rename's or an unlink's own name: those change the link, not what it points to.
        """
        real = os.path.realpath(path) if follow else os.path.join(os.path.realpath(path.parent), path.name)
        if real != self.root and not real.startswith(self.root.rstrip(os.sep) + os.sep):
            raise _error(self.kind)(
                f"Not writing '{path}': its real location '{real}' is outside the models folder '{self.target}' "
                f"('{self.root}'), through a link inside that folder. Remove the link (or put the folder it points to "
                "in its place) and press Download again."
            )


class DownloadManager:
    """Runs at most one hub download at a time, in a background thread; thread-safe.

    `retries` automatic resumes follow a lost connection or a 5xx answer (`retry_delay` seconds
    apart); `listener`, if given, receives every status update (from the download thread).
    """

    def __init__(
        self,
        *,
        chunk_size: int = 1 << 20,
        timeout: Optional[float] = None,
        retries: int = 3,
        retry_delay: float = 2.0,
        listener: Optional[Callable[[dict], None]] = None,
    ):
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.listener = listener
        self._lock = threading.Lock()
        self._st = DownloadStatus()
        self._finished = threading.Event()
        self._finished.set()
        self._cancel = threading.Event()

    # --- public ---------------------------------------------------------------------------------

    def start(
        self,
        kinds: Sequence[str],
        targets: Mapping[str, str | os.PathLike],
        endpoint: Optional[str] = None,
        offline: bool = False,
    ) -> dict:
        """Start downloading `kinds` ("ella", "t5") into `targets[kind]` (the ELLA folder / the T5 folder's parent).

        Returns the status with `started`: False where a download already runs (its status is
        returned and nothing new starts) or where downloads are refused (state "error").
        """
        kinds = list(dict.fromkeys(kinds))
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad:
            raise ArgumentError(f"'kinds' must list some of {', '.join(KINDS)}; got {shown(kinds)}.")
        missing = [k for k in kinds if not targets.get(k)]
        if missing:
            raise ArgumentError(f"No target folder given for {', '.join(missing)}.")
        dests = {k: Path(targets[k]) for k in kinds}
        with self._lock:
            if not self._finished.is_set():
                out = self._st.to_dict()
                out["started"] = False
                out["notice"] = "A download is already running; its progress is shown. Wait for it to finish."
                return out
            self._st = DownloadStatus(
                state="running", phase="listing", kinds=kinds, endpoint=hub_endpoint(endpoint), started_at=time.time()
            )
            refusal = None
            reason = offline_reason(offline)
            if reason:
                refusal = offline_message(reason)
            else:
                try:
                    hub_client()
                except ELLAError as exc:
                    refusal = str(exc)
            if refusal:
                self._end_locked("error", error=refusal)
                return dict(self._st.to_dict(), started=False)
            self._finished.clear()
            self._cancel.clear()
            worker = threading.Thread(
                target=self._run, args=(kinds, dests, self._st.endpoint), name="ella-download", daemon=True
            )
            worker.start()
            return dict(self._st.to_dict(), started=True)

    def status(self) -> dict:
        """The current or last download, JSON-serialisable:

        state ("idle", "running", "done", "error"), phase ("waiting" for another process, "listing",
        "verifying", "downloading", "installing"; "" when done), kinds, endpoint, current_file (path in the repo), files_done,
        files_total, bytes_done, bytes_total (all files of the job), speed (bytes/s over this run),
        eta (seconds; None while unknown, 0 when done), message (one line for the UI), error (the
        message, or None), paths (kind -> the installed file or folder), started_at and finished_at
        (Unix times).
        """
        with self._lock:
            return self._st.to_dict()

    def wait(self, timeout: Optional[float] = None) -> dict:
        """Block until the download ends (or `timeout` seconds pass); returns the status."""
        self._finished.wait(timeout)
        return self.status()

    def follow(self, poll: float = 0.5) -> Iterator[dict]:
        """The status every `poll` seconds while a download runs, ending with its final status."""
        while True:
            status = self.wait(poll)
            yield status
            if status["state"] != "running":
                return

    def cancel(self) -> dict:
        """Stop the running download; what was fetched stays staged and the next start resumes it."""
        self._cancel.set()
        return self.status()

    # --- the download thread --------------------------------------------------------------------

    def _update(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self._st, k, v)
            snapshot = self._st.to_dict() if self.listener else None
        self._notify(snapshot)

    def _notify(self, snapshot: Optional[dict]) -> None:
        if snapshot is not None:
            try:
                self.listener(snapshot)
            except Exception:  # a broken listener must not break the download
                log.exception("ELLA: download status listener failed")

    def _end_locked(self, state: str, *, error: Optional[str] = None, message: str = "") -> None:
        st = self._st
        st.state, st.error, st.finished_at, st.transfer_ended = state, error, time.time(), time.monotonic()
        st.message = error or message
        if state == "done":
            st.phase, st.current_file = "", None

    def _run(self, kinds: list[str], dests: dict[str, Path], endpoint: str) -> None:
        locks: list[FolderLock] = []
        try:
            by_path = {}  # a folder given for both kinds is locked once; sorted, so two processes never deadlock
            for kind in kinds:
                lock = FolderLock(dests[kind])
                by_path.setdefault(str(lock.path), lock)
            locks = [by_path[k] for k in sorted(by_path)]
            for lock in locks:
                self._lock_folder(lock)
            units = [self._plan(kind, dests[kind], endpoint) for kind in kinds]
            self._check_space(units)
            for unit in units:
                self._fetch_unit(unit, endpoint)
            state, error = "done", None
        except _Cancelled:
            state, error = "error", "Download cancelled. What was downloaded is kept and the next download resumes it."
        except ELLAError as exc:
            state, error = "error", str(exc)
        except Exception as exc:  # a bug or an unexpected library error: still end in a state the UI can show
            log.exception("ELLA: download failed")
            state = "error"
            error = f"The download failed unexpectedly ({exception_summary(exc)}). Try again, or {BY_HAND}."
        finally:
            for lock in locks:
                lock.release()
        with self._lock:
            paths = ", ".join(f"'{p}'" for p in self._st.paths.values())
            self._end_locked(state, error=error, message=f"Downloaded and verified: {paths}.")
            snapshot = self._st.to_dict() if self.listener else None
            self._finished.set()
        if error:
            log.error("ELLA: %s", error)
        self._notify(snapshot)

    def _lock_folder(self, lock: FolderLock) -> None:
        """Take the folder's cross-process lock; while another process holds it, wait and say so."""
        try:
            while not lock.try_acquire():
                self._update(
                    phase="waiting",
                    current_file=None,
                    message=(
                        f"Waiting: another WebUI process ({lock.describe_holder()}) is downloading into "
                        f"'{lock.folder}'. This download goes on when that one ends (what it fetched is then kept)."
                    ),
                )
                if self._cancel.wait(LOCK_POLL):
                    raise _Cancelled()
        except OSError as exc:
            raise ELLAError(
                f"Could not create the download lock '{lock.path}': {exc}. Check that the folder is writable."
            ) from None

    def _plan(self, kind: str, target: Path, endpoint: str) -> _Unit:
        """List the hub's files and decide which still need fetching (verified ones in place are kept)."""
        self._update(phase="listing", current_file=None)
        remote = remote_files(kind, endpoint, timeout=self.timeout)
        root = os.path.realpath(target)
        if kind == "ella":
            files = [(r, r.path) for r in remote]
            unit = _Unit(kind, target, target / STAGING, target / ELLA_FILE, files, False, target, root)
        else:
            dest = target / KNOWN_T5
            files = [(r, r.path[len(KNOWN_T5) + 1 :]) for r in remote]
            unit = _Unit(kind, dest, target / STAGING / KNOWN_T5, dest, files, not dest.exists(), target, root)
        for _, rel in files:  # before any byte is written: a link inside the folder must not lead writes out
            unit.check_inside(unit.stage / (rel + PART))
            unit.check_inside(unit.dest / rel, follow=False)
        with self._lock:
            self._st.files_total += len(unit.files)
            self._st.bytes_total += sum(r.size for r, _ in unit.files)
        return unit

    def _check_space(self, units: list[_Unit]) -> None:
        for unit in units:
            need = sum(r.size for r, rel in unit.files if not _same_size(unit.dest / rel, r.size))
            for r, rel in unit.files:
                part = unit.stage / (rel + PART)
                need -= min(part.stat().st_size, r.size) if part.is_file() else 0
            unit.check_inside(unit.stage)
            unit.stage.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(unit.stage).free
            if need > free:
                raise _error(unit.kind)(
                    f"Not enough disk space for the {unit.kind} download: {human_size(need)} are needed in '{unit.stage.parent}' "
                    f"but only {human_size(free)} are free. Free some space, or choose another model folder in the settings."
                )

    def _fetch_unit(self, unit: _Unit, endpoint: str) -> None:
        fetched = []
        for remote, rel in unit.files:
            staged = unit.stage / rel
            self._update(current_file=remote.path, bytes_current=0, phase="verifying")
            if not unit.whole and file_matches(unit.dest / rel, remote):
                pass  # already in place and intact
            elif not file_matches(staged, remote):  # a file staged by an earlier, interrupted run counts
                self._fetch_file(unit, remote, staged, endpoint)
                fetched.append(rel)
            else:
                fetched.append(rel)
            with self._lock:
                self._st.bytes_base += remote.size
                self._st.bytes_current = 0
                self._st.files_done += 1
        self._update(phase="installing", current_file=None)
        self._install(unit, fetched)
        with self._lock:
            self._st.paths[unit.kind] = str(unit.result)

    def _fetch_file(self, unit: _Unit, remote: RemoteFile, staged: Path, endpoint: str) -> None:
        part = staged.with_name(staged.name + PART)
        unit.check_inside(part)
        part.parent.mkdir(parents=True, exist_ok=True)
        url = hub_client().url(REPO, remote.path, revision=REVISION, endpoint=endpoint)
        for attempt in range(self.retries + 1):
            try:
                digest = self._stream_to(unit, remote, part, url)
                break
            except _TooLong as exc:
                part.unlink(missing_ok=True)
                said = f"its Content-Length is {exc.declared}" if exc.declared is not None else "it kept sending"
                raise _error(unit.kind)(
                    f"'{remote.path}' from {endpoint} is refused: the server sends more than the {remote.size} bytes "
                    f"the file list gives ({said}). Nothing past the listed size was written, and what was written "
                    f"is deleted. A mirror or proxy (HF_ENDPOINT) changes the file: use https://huggingface.co, or "
                    f"{BY_HAND}."
                ) from None
            except _Retry as exc:
                have = part.stat().st_size if part.exists() else 0
                if attempt == self.retries:
                    raise _error(unit.kind)(
                        f"Downloading '{remote.path}' from {endpoint} failed: {exc}. The {human_size(have)} already downloaded "
                        f"are kept in '{part}'; press Download again to resume. If it keeps failing, check the network, "
                        f"proxy settings and HF_ENDPOINT, or {BY_HAND}."
                    ) from None
                log.warning("ELLA: %s; resuming from byte %d in %.0f s", exc, have, self.retry_delay)
                if self._cancel.wait(self.retry_delay):
                    raise _Cancelled() from None
        if digest != remote.expected:
            part.unlink(missing_ok=True)
            raise _error(unit.kind)(
                f"'{remote.path}' downloaded from {endpoint} is corrupt: its {remote.hash_name} is {digest[:16]}..., "
                f"the hub publishes {remote.expected[:16]}... (damaged in transit, or changed by a proxy). The bad "
                "download was deleted; press Download to fetch it again."
            )
        unit.check_inside(staged, follow=False)
        os.replace(part, staged)
        if remote.sha256:
            remember_sha256(staged, digest)

    def _stream_to(self, unit: _Unit, remote: RemoteFile, part: Path, url: str) -> str:
        """Append the rest of `remote` to `part` (Range from its size); returns the whole file's hash."""
        have = part.stat().st_size if part.exists() else 0
        if have > remote.size:  # not ours: start over
            unit.check_inside(part, follow=False)
            part.unlink()
            have = 0
        hasher = hash_file(part, remote.hasher()) if have else remote.hasher()
        self._update(phase="downloading", bytes_current=have)
        if have < remote.size:
            hub = hub_client()
            # identity: byte offsets must be those of the file, not of a compressed stream
            headers = dict(hub.headers(), **{"Accept-Encoding": "identity"})
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                timeout = self.timeout or hub.constants.HF_HUB_DOWNLOAD_TIMEOUT
                with stream(url, headers, timeout, self.chunk_size) as (response, chunks):
                    if have and response.status_code != 206:
                        have, hasher = 0, remote.hasher()  # the server ignored the Range: take the whole file
                        self._update(bytes_current=0)
                    elif have and not str(response.headers.get("Content-Range", "")).startswith(f"bytes {have}-"):
                        raise _Retry(f"the server answered another range ({response.headers.get('Content-Range')})")
                    room = remote.size - have  # the bounded writer: never more than the listed size on disk
                    declared = _declared_length(response)
                    if declared is not None and declared > room:
                        raise _TooLong(declared)
                    flags = (
                        os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0) | (os.O_APPEND if have else os.O_TRUNC)
                    )
                    # O_NOFOLLOW: a link put in its place after the check above is not followed
                    fd = self._disk(unit, remote, part, os.open, part, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
                    try:
                        for chunk in chunks:
                            if self._cancel.is_set():
                                raise _Cancelled()
                            if len(chunk) > room:
                                self._disk(unit, remote, part, _write_all, fd, chunk[:room])
                                raise _TooLong(declared)
                            room -= len(chunk)
                            self._disk(unit, remote, part, _write_all, fd, chunk)
                            hasher.update(chunk)
                            with self._lock:
                                self._st.bytes_current += len(chunk)
                                self._st.transferred += len(chunk)
                                if self._st.transfer_started is None:
                                    self._st.transfer_started = time.monotonic()
                                snapshot = self._st.to_dict() if self.listener else None
                            self._notify(snapshot)
                        self._disk(unit, remote, part, os.fsync, fd)
                    finally:
                        os.close(fd)
            except (ELLAError, _Cancelled, _Retry, _TooLong):
                raise
            except Exception as exc:  # requests/httpx/hub errors differ by version; the status code tells them apart
                code = status_code(exc)
                if code is not None and code < 500:
                    raise _error(unit.kind)(
                        f"The hub at {urlsplit(url).netloc} answered HTTP {code} for '{remote.path}'"
                        + (" (not found: check HF_ENDPOINT)" if code == 404 else "")
                        + f". Try again later, or {BY_HAND}."
                    ) from None
                if code:
                    raise _Retry(f"the server answered HTTP {code}") from None
                raise _Retry(f"the connection was lost ({connection_problem(exc)})") from None
        size = part.stat().st_size
        if size < remote.size:
            raise _Retry(f"the server sent {size} of {remote.size} bytes")
        if size > remote.size:
            part.unlink()
            raise _Retry(f"the server sent {size} bytes, more than the {remote.size} the hub lists")
        return hasher.hexdigest()

    def _disk(self, unit: _Unit, remote: RemoteFile, part: Path, fn, *args):
        """Run a file operation, turning OSError (full disk, no permission) into a message that says what to do."""
        try:
            return fn(*args)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                have = part.stat().st_size if part.exists() else 0
                raise _error(unit.kind)(
                    f"The disk is full: writing '{part}' for '{remote.path}' failed ({exc.strerror}); "
                    f"{human_size(remote.size - have)} more are needed. Free some space and press Download again: the "
                    f"{human_size(have)} already downloaded are kept there and the download resumes."
                ) from None
            raise _error(unit.kind)(
                f"Could not write '{part}' while downloading '{remote.path}': {exc}. Check that the folder is writable "
                "and press Download again."
            ) from None

    def _install(self, unit: _Unit, fetched: list[str]) -> None:
        """Move verified files into place: a new T5 folder at once, otherwise file by file."""
        if unit.kind == "ella":
            staged = unit.stage / ELLA_FILE
            if staged.exists():
                read_header(staged, error=ModelFileError, what="Downloaded ELLA model")
        try:
            if unit.whole:
                listed = {unit.stage / rel for _, rel in unit.files}
                for stale in [p for p in unit.stage.rglob("*") if p.is_file() and p not in listed]:
                    unit.check_inside(stale, follow=False)
                    stale.unlink()  # e.g. the partial of a file the hub no longer lists
                inspect_t5_folder(unit.stage)
                moves = [(unit.stage / rel, unit.dest / rel) for _, rel in unit.files]
                digests = cached_digests(moves)
                unit.check_inside(unit.dest, follow=False)
                os.replace(unit.stage, unit.dest)
            else:
                moves = [(unit.stage / rel, unit.dest / rel) for rel in fetched]
                for _, dst in moves:  # all checked before the first move: nothing is half installed
                    unit.check_inside(dst, follow=False)
                digests = cached_digests(moves)
                for src, dst in moves:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
        except OSError as exc:
            raise _error(unit.kind)(
                f"Could not move the downloaded files from '{unit.stage}' to '{unit.dest}': {exc}. "
                "Move them by hand, or remove the old files and press Download again."
            ) from None
        for path, digest in digests.items():
            remember_sha256(path, digest)
        for leftover in (unit.stage, unit.stage.parent):  # remove the staging folders once empty
            try:  # the files are installed: a folder that cannot be removed must not turn that into an error
                if leftover.name in (STAGING, KNOWN_T5) and not leftover.is_symlink() and leftover.is_dir():
                    if not any(leftover.iterdir()):
                        leftover.rmdir()
            except OSError as exc:
                log.warning("ELLA: could not remove the empty staging folder '%s': %s", leftover, exc)


def _same_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _declared_length(response) -> Optional[int]:
    """The response's Content-Length where it counts the file's bytes (not a compressed body), else None."""
    headers = response.headers
    if str(headers.get("Content-Encoding", "identity")).lower() not in ("", "identity"):
        return None
    try:
        return int(headers.get("Content-Length"))
    except (TypeError, ValueError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


MANAGER = DownloadManager()


def hub_download(
    kind: str,
    target_dir: str | os.PathLike,
    *,
    endpoint: Optional[str] = None,
    manager: Optional[DownloadManager] = None,
    on_status: Optional[Callable[[dict], None]] = None,
    poll: float = 0.5,
) -> Path:
    """Download 'ella' (the TSC weights) or 't5' (the encoder folder) of QQGYLab/ELLA into target_dir; blocks.

    Returns the ELLA file or the T5 folder. Where another download runs, waits for it first.
    `on_status`, if given, gets the status every `poll` seconds while waiting (for progress text).
    """
    manager = manager or MANAGER

    def follow() -> dict:
        for st in manager.follow(poll):
            if st["state"] == "running" and on_status is not None:
                on_status(st)
        return st

    while True:
        st = manager.start([kind], {kind: target_dir}, endpoint=endpoint)
        if st["started"] or st["state"] != "running":
            break
        follow()
    if st["started"]:
        st = follow()
    if st["state"] != "done":
        raise _error(kind)(st["error"] or f"The {kind} download did not finish.")
    return Path(st["paths"][kind])
