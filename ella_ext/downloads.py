"""Downloading the released ELLA files from the Hugging Face hub, safely and resumably.

Only two things of QQGYLab/ELLA are ever fetched: the TSC weights `ella-sd1.5-tsc-t5xl.safetensors`
(kind "ella") and the folder `models--google--flan-t5-xl--text_encoder/` (kind "t5"), both listed
through the hub's tree API (one folder, never the whole repo). Each file streams into a hidden
`.ella-download/` folder beside its target (discovery skips hidden folders), is checked against
the size and hash the hub publishes (sha256 for LFS files, the git blob sha1 for small ones) and
only then moved into place with os.replace. A new T5 folder is assembled whole in the staging
folder and moved in when every file is verified, so a half download is never found as a model.
An interrupted file keeps its bytes and the next attempt continues with an HTTP Range request.

HTTP goes through huggingface_hub's own session (requests in 0.36, httpx in 2.4: both checked), so
its proxy, certificate, token and user-agent handling apply. Its `hf_hub_download` is not used: in
2.4 it deletes a partial file instead of resuming it on the next call, and over plain HTTP it
checks sizes but not hashes. Nothing here touches the network until `DownloadManager.start`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence
from urllib.parse import quote, urlsplit

from .discovery import ELLA_SUFFIX, KNOWN_ELLA, KNOWN_T5
from .errors import ArgumentError, ELLAError, ModelFileError, TextEncoderError, exception_summary
from .safetensors_file import read_header
from .t5 import inspect_t5_folder

log = logging.getLogger("ella")

REPO = "QQGYLab/ELLA"
REVISION = "main"
ELLA_FILE = KNOWN_ELLA + ELLA_SUFFIX
KINDS = ("ella", "t5")
STAGING = ".ella-download"
PART = ".part"
DEFAULT_ENDPOINT = "https://huggingface.co"
ERRORS = {"ella": ModelFileError, "t5": TextEncoderError}
BY_HAND = (
    f"download them by hand from https://huggingface.co/{REPO}: put {ELLA_FILE} into models/ELLA and the folder "
    f"{KNOWN_T5} into models/ELLA/t5 (see the README)"
)
_TRUE = ("1", "ON", "YES", "TRUE")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _error(kind: Optional[str]) -> type[ELLAError]:
    return ERRORS.get(kind or "", ELLAError)


class HubUnavailable(ELLAError):
    """The hub's file list could not be had; `reason` says why in a few words."""

    default_status = 502

    def __init__(self, reason: str, endpoint: str):
        super().__init__(
            f"Could not get the file list of {REPO} from {endpoint}: {reason}. Check the network, proxy settings and "
            f"HF_ENDPOINT, then try again; or {BY_HAND}."
        )
        self.reason = reason


# --- the hub ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repo as the hub lists it."""

    path: str  # path in the repo
    size: int
    sha256: Optional[str]  # LFS files: sha256 of the content
    blob_id: str  # git blob sha1 (of the content for small files, of the LFS pointer otherwise)

    @property
    def expected(self) -> str:
        return self.sha256 or self.blob_id

    @property
    def hash_name(self) -> str:
        return "sha256" if self.sha256 else "git blob sha1"

    def hasher(self):
        if self.sha256:
            return hashlib.sha256()
        h = hashlib.sha1()
        h.update(b"blob %d\0" % self.size)  # git hashes a header before the content
        return h


def _hub() -> SimpleNamespace:
    """The parts of huggingface_hub used here: public names in both 0.36 (requests) and 2.4 (httpx)."""
    try:
        from huggingface_hub import constants, get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status
    except ImportError:
        raise ELLAError(f"Downloading needs the huggingface_hub package (pip install huggingface_hub); or {BY_HAND}.") from None
    return SimpleNamespace(constants=constants, session=get_session(), url=hf_hub_url, headers=build_hf_headers,
                           raise_for_status=hf_raise_for_status)


def hub_endpoint(endpoint: Optional[str] = None) -> str:
    """The hub's address: the argument, else HF_ENDPOINT as set now (huggingface_hub reads it only at import)."""
    if endpoint:
        return endpoint.rstrip("/")
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")
    except ImportError:
        return DEFAULT_ENDPOINT


def offline_reason(offline: bool = False) -> Optional[str]:
    """Why downloads are off, or None. huggingface_hub's offline mode is HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE."""
    if offline:
        return "offline mode was requested"
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in _TRUE:
            return f"{name} is set"
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    # huggingface_hub read the variables at import; its HTTP session keeps refusing until a restart
    return "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE was set when the WebUI started" if constants.HF_HUB_OFFLINE else None


def offline_message(reason: str) -> str:
    return (
        f"Not downloading: {reason}. To allow downloads, unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE (or set them "
        f"to 0) and restart the WebUI; or {BY_HAND}."
    )


def _status_code(exc: BaseException) -> Optional[int]:
    return getattr(getattr(exc, "response", None), "status_code", None)


def remote_files(kind: str, endpoint: Optional[str] = None, *, timeout: Optional[float] = None) -> list[RemoteFile]:
    """The hub's files of `kind` with their sizes and hashes (tree API: the repo root or the T5 folder only)."""
    if kind not in KINDS:
        raise ArgumentError(f"Unknown download kind {kind!r}; use one of {', '.join(KINDS)}.")
    hub = _hub()
    endpoint = hub_endpoint(endpoint)
    url = f"{endpoint}/api/models/{REPO}/tree/{quote(REVISION, safe='')}"
    params: Optional[dict] = None
    if kind == "t5":
        url += "/" + quote(KNOWN_T5)
        params = {"recursive": "true"}
    entries: list = []
    try:
        while url:
            r = hub.session.get(url, params=params, headers=hub.headers(),
                                timeout=timeout or hub.constants.HF_HUB_ETAG_TIMEOUT)
            hub.raise_for_status(r)
            entries += r.json()
            url, params = r.links.get("next", {}).get("url"), None  # the next link carries the query
    except Exception as exc:  # the client raises requests/httpx/hub errors; all mean "could not list"
        code = _status_code(exc)
        reason = f"it answered HTTP {code}" if code else _connection_problem(exc)
        raise HubUnavailable(reason, endpoint) from None
    try:
        files = [
            RemoteFile(e["path"], int(e["size"]), (e.get("lfs") or {}).get("oid"), e["oid"])
            for e in entries
            if e.get("type") == "file"
        ]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise HubUnavailable("it answered in an unknown format", endpoint) from None
    files = [f for f in files if (f.path == ELLA_FILE if kind == "ella" else f.path.startswith(KNOWN_T5 + "/"))]
    # a mirror must not be able to write outside the target folder
    unsafe = [f.path for f in files if "\\" in f.path or any(p in ("", ".", "..") for p in f.path.split("/"))]
    if unsafe:
        raise HubUnavailable(f"it lists unsafe file names ({unsafe[0]!r}), which are refused", endpoint)
    if not files:
        raise HubUnavailable(f"it has no {ELLA_FILE if kind == 'ella' else KNOWN_T5 + '/'}", endpoint)
    return files


_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\"()\[\]\\]+)")


def _connection_problem(exc: BaseException) -> str:
    """A few words for a failed connection. requests nests the OS error's text deep in a pool error's repr."""
    text = str(exc)
    found = _OS_ERROR.search(text)
    if found:
        return found.group(1).strip().rstrip(".").lower()  # "connection refused", "name or service not known"
    if isinstance(exc, TimeoutError) or "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "the connection timed out"
    return exception_summary(exc)


@contextmanager
def _stream(url: str, headers: dict, timeout: float, chunk_size: int) -> Iterator[tuple[object, Iterable[bytes]]]:
    """A streamed GET through huggingface_hub's session, following the hub's redirects to its CDN."""
    hub = _hub()
    if callable(getattr(hub.session, "stream", None)):  # httpx (huggingface_hub >= 1.0)
        with hub.session.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
            hub.raise_for_status(r)
            yield r, r.iter_bytes(chunk_size)
    else:  # requests (huggingface_hub 0.x), where Session.stream is a bool flag; it follows redirects itself
        with hub.session.get(url, headers=headers, timeout=timeout, stream=True) as r:
            hub.raise_for_status(r)
            yield r, r.iter_content(chunk_size)


# --- hashes -----------------------------------------------------------------------------------

_sha256_cache: dict[tuple[str, int, int], str] = {}
_sha256_lock = threading.Lock()


def file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    """A file's identity for caches: its real path, size and mtime (a rewrite or a replacement changes it)."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _hash_file(path: str | os.PathLike, hasher):
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
    digest = _hash_file(path, hashlib.sha256()).hexdigest()
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


def _remember_sha256(path: Path, digest: str) -> None:
    with _sha256_lock:
        _sha256_cache[file_key(path)] = digest


def file_matches(path: Path, remote: RemoteFile) -> bool:
    """Whether a local file has the hub's size and hash."""
    try:
        if not path.is_file() or path.stat().st_size != remote.size:
            return False
        if remote.sha256:
            return file_sha256(path) == remote.sha256
        return _hash_file(path, remote.hasher()).hexdigest() == remote.blob_id
    except OSError:
        return False


# --- the manager ------------------------------------------------------------------------------


class _Retry(Exception):
    """A failure worth another attempt (lost connection, server error); the partial file is kept."""


class _Cancelled(Exception):
    pass


@dataclass
class _Unit:
    """One kind's files: fetched into `stage`, then moved to `dest` (the folder that holds them)."""

    kind: str
    dest: Path  # target folder (ella) or the T5 folder itself (t5)
    stage: Path
    result: Path  # what the user gets: the ELLA file or the T5 folder
    files: list[tuple[RemoteFile, str]]  # (remote file, name relative to dest)
    whole: bool  # the T5 folder is new: move the staged folder in at once


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class _State:
    state: str = "idle"
    phase: str = ""
    kinds: list = field(default_factory=list)
    endpoint: str = ""
    current_file: Optional[str] = None
    files_done: int = 0
    files_total: int = 0
    bytes_base: int = 0  # bytes of the files finished in this job
    bytes_current: int = 0  # bytes of the current file on disk
    bytes_total: int = 0
    transferred: int = 0
    transfer_started: Optional[float] = None  # time.monotonic() of the first byte, and of the end
    transfer_ended: Optional[float] = None
    message: str = ""
    error: Optional[str] = None
    paths: dict = field(default_factory=dict)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None

    def to_dict(self) -> dict:
        done = self.bytes_base + self.bytes_current
        elapsed = (self.transfer_ended or time.monotonic()) - self.transfer_started if self.transfer_started else 0.0
        speed = self.transferred / elapsed if elapsed > 0 else 0.0
        remaining = max(self.bytes_total - done, 0)
        eta = 0.0 if self.state == "done" else remaining / speed if self.state == "running" and speed > 0 else None
        message = self.message
        name = (self.current_file or "").rsplit("/", 1)[-1]
        if self.state == "running":
            message = {"listing": "Asking the hub for the file list...", "verifying": f"Checking {name}...",
                       "installing": "Moving the verified files into place..."}.get(self.phase, message)
        if self.state == "running" and self.phase == "downloading" and name:
            message = (
                f"Downloading {name} (file {self.files_done + 1} of {self.files_total}, "
                f"{human_size(done)} of {human_size(self.bytes_total)}"
                + (f", {human_size(speed)}/s" if speed else "")
                + (f", about {eta / 60:.0f} min left" if eta and eta >= 60 else f", about {eta:.0f} s left" if eta else "")
                + ")"
            )
        return {
            "state": self.state,
            "phase": self.phase,
            "kinds": list(self.kinds),
            "endpoint": self.endpoint,
            "current_file": self.current_file,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": done,
            "bytes_total": self.bytes_total,
            "speed": speed,
            "eta": eta,
            "message": message,
            "error": self.error,
            "paths": dict(self.paths),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class DownloadManager:
    """Runs at most one hub download at a time, in a background thread; thread-safe.

    `retries` automatic resumes follow a lost connection or a 5xx answer (`retry_delay` seconds
    apart); `listener`, if given, receives every status update (from the download thread).
    """

    def __init__(self, *, chunk_size: int = 1 << 20, timeout: Optional[float] = None, retries: int = 3,
                 retry_delay: float = 2.0, listener: Optional[Callable[[dict], None]] = None):
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.listener = listener
        self._lock = threading.Lock()
        self._st = _State()
        self._finished = threading.Event()
        self._finished.set()
        self._cancel = threading.Event()

    # --- public ---------------------------------------------------------------------------------

    def start(self, kinds: Sequence[str], targets: Mapping[str, str | os.PathLike], endpoint: Optional[str] = None,
              offline: bool = False) -> dict:
        """Start downloading `kinds` ("ella", "t5") into `targets[kind]` (the ELLA folder / the T5 folder's parent).

        Returns the status with `started`: False where a download already runs (its status is
        returned and nothing new starts) or where downloads are refused (state "error").
        """
        kinds = list(dict.fromkeys(kinds))
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad:
            raise ArgumentError(f"'kinds' must list some of {', '.join(KINDS)}; got {kinds!r}.")
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
            self._st = _State(state="running", phase="listing", kinds=kinds, endpoint=hub_endpoint(endpoint),
                              started_at=time.time())
            refusal = None
            reason = offline_reason(offline)
            if reason:
                refusal = offline_message(reason)
            else:
                try:
                    _hub()
                except ELLAError as exc:
                    refusal = str(exc)
            if refusal:
                self._end_locked("error", error=refusal)
                return dict(self._st.to_dict(), started=False)
            self._finished.clear()
            self._cancel.clear()
            worker = threading.Thread(target=self._run, args=(kinds, dests, self._st.endpoint), name="ella-download", daemon=True)
            worker.start()
            return dict(self._st.to_dict(), started=True)

    def status(self) -> dict:
        """The current or last download, JSON-serialisable:

        state ("idle", "running", "done", "error"), phase ("listing", "verifying", "downloading",
        "installing"; "" when done), kinds, endpoint, current_file (path in the repo), files_done,
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
        try:
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
        with self._lock:
            paths = ", ".join(f"'{p}'" for p in self._st.paths.values())
            self._end_locked(state, error=error, message=f"Downloaded and verified: {paths}.")
            snapshot = self._st.to_dict() if self.listener else None
            self._finished.set()
        if error:
            log.error("ELLA: %s", error)
        self._notify(snapshot)

    def _plan(self, kind: str, target: Path, endpoint: str) -> _Unit:
        """List the hub's files and decide which still need fetching (verified ones in place are kept)."""
        self._update(phase="listing", current_file=None)
        remote = remote_files(kind, endpoint, timeout=self.timeout)
        if kind == "ella":
            unit = _Unit(kind, target, target / STAGING, target / ELLA_FILE, [(r, r.path) for r in remote], False)
        else:
            dest = target / KNOWN_T5
            files = [(r, r.path[len(KNOWN_T5) + 1:]) for r in remote]
            unit = _Unit(kind, dest, target / STAGING / KNOWN_T5, dest, files, not dest.exists())
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
        part.parent.mkdir(parents=True, exist_ok=True)
        url = _hub().url(REPO, remote.path, revision=REVISION, endpoint=endpoint)
        for attempt in range(self.retries + 1):
            try:
                digest = self._stream_to(unit, remote, part, url)
                break
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
        os.replace(part, staged)
        if remote.sha256:
            _remember_sha256(staged, digest)

    def _stream_to(self, unit: _Unit, remote: RemoteFile, part: Path, url: str) -> str:
        """Append the rest of `remote` to `part` (Range from its size); returns the whole file's hash."""
        have = part.stat().st_size if part.exists() else 0
        if have > remote.size:  # not ours: start over
            part.unlink()
            have = 0
        hasher = _hash_file(part, remote.hasher()) if have else remote.hasher()
        self._update(phase="downloading", bytes_current=have)
        if have < remote.size:
            hub = _hub()
            # identity: byte offsets must be those of the file, not of a compressed stream
            headers = dict(hub.headers(), **{"Accept-Encoding": "identity"})
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                timeout = self.timeout or hub.constants.HF_HUB_DOWNLOAD_TIMEOUT
                with _stream(url, headers, timeout, self.chunk_size) as (response, chunks):
                    if have and response.status_code != 206:
                        have, hasher = 0, remote.hasher()  # the server ignored the Range: take the whole file
                        self._update(bytes_current=0)
                    elif have and not str(response.headers.get("Content-Range", "")).startswith(f"bytes {have}-"):
                        raise _Retry(f"the server answered another range ({response.headers.get('Content-Range')})")
                    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0) | (os.O_APPEND if have else os.O_TRUNC)
                    fd = self._disk(unit, remote, part, os.open, part, flags, 0o666)
                    try:
                        for chunk in chunks:
                            if self._cancel.is_set():
                                raise _Cancelled()
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
            except (ELLAError, _Cancelled, _Retry):
                raise
            except Exception as exc:  # requests/httpx/hub errors differ by version; the status code tells them apart
                code = _status_code(exc)
                if code is not None and code < 500:
                    raise _error(unit.kind)(
                        f"The hub at {urlsplit(url).netloc} answered HTTP {code} for '{remote.path}'"
                        + (" (not found: check HF_ENDPOINT)" if code == 404 else "")
                        + f". Try again later, or {BY_HAND}."
                    ) from None
                if code:
                    raise _Retry(f"the server answered HTTP {code}") from None
                raise _Retry(f"the connection was lost ({_connection_problem(exc)})") from None
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
                    stale.unlink()  # e.g. the partial of a file the hub no longer lists
                inspect_t5_folder(unit.stage)
                moves = [(unit.stage / rel, unit.dest / rel) for _, rel in unit.files]
                digests = _cached_digests(moves)
                os.replace(unit.stage, unit.dest)
            else:
                moves = [(unit.stage / rel, unit.dest / rel) for rel in fetched]
                digests = _cached_digests(moves)
                for src, dst in moves:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
        except OSError as exc:
            raise _error(unit.kind)(
                f"Could not move the downloaded files from '{unit.stage}' to '{unit.dest}': {exc}. "
                "Move them by hand, or remove the old files and press Download again."
            ) from None
        for path, digest in digests.items():
            _remember_sha256(path, digest)
        for leftover in (unit.stage, unit.stage.parent):  # remove the staging folders once empty
            if leftover.name in (STAGING, KNOWN_T5) and leftover.is_dir() and not any(leftover.iterdir()):
                leftover.rmdir()


def _same_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _cached_digests(moves: list[tuple[Path, Path]]) -> dict[Path, str]:
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


MANAGER = DownloadManager()


def hub_download(kind: str, target_dir: str | os.PathLike, *, endpoint: Optional[str] = None,
                 manager: Optional[DownloadManager] = None, on_status: Optional[Callable[[dict], None]] = None,
                 poll: float = 0.5) -> Path:
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
