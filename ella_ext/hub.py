"""The Hugging Face hub's file protocol, as far as ELLA uses it: listing, streaming, endpoint, offline mode.

Only two things of QQGYLab/ELLA are ever fetched: the TSC weights `ella-sd1.5-tsc-t5xl.safetensors`
(kind "ella") and the folder `models--google--flan-t5-xl--text_encoder/` (kind "t5"), both listed
through the hub's tree API (one folder, never the whole repo).

HTTP goes through huggingface_hub's own session (requests in 0.36, httpx in 2.4: both checked), so
its proxy, certificate, token and user-agent handling apply. Nothing here touches the network
until asked.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional
from urllib.parse import quote

from .discovery import ELLA_SUFFIX, KNOWN_ELLA, KNOWN_T5
from .errors import ArgumentError, ELLAError, exception_summary

REPO = "QQGYLab/ELLA"
REVISION = "main"
ELLA_FILE = KNOWN_ELLA + ELLA_SUFFIX
KINDS = ("ella", "t5")
DEFAULT_ENDPOINT = "https://huggingface.co"
BY_HAND = (
    f"download them by hand from https://huggingface.co/{REPO}: put {ELLA_FILE} into models/ELLA and the folder "
    f"{KNOWN_T5} into models/ELLA/t5 (see the README)"
)
_TRUE = ("1", "ON", "YES", "TRUE")
PART = ".part"  # a partial download's suffix, beside the final name
NAME_MAX = 255 - len(PART)  # bytes of one name: the usual file-system limit, less room for the partial's suffix
_HEX = re.compile(r"[0-9a-f]+")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class HubUnavailable(ELLAError):
    """The hub's file list could not be had; `reason` says why in a few words."""

    default_status = 502

    def __init__(self, reason: str, endpoint: str):
        super().__init__(
            f"Could not get the file list of {REPO} from {endpoint}: {reason}. Check the network, proxy settings and "
            f"HF_ENDPOINT, then try again; or {BY_HAND}."
        )
        self.reason = reason


class OddListing(ELLAError):
    """The hub's (or a mirror's) file list names a file that cannot be stored as listed."""

    default_status = 502

    def __init__(self, path: str, problem: str, endpoint: str):
        super().__init__(
            f"The file list of {REPO} from {endpoint} is refused: it lists {shown_name(path)}, {problem}. The hub "
            f"never lists such a file: a mirror or proxy (HF_ENDPOINT) sends a list of its own. Use "
            f"https://huggingface.co, or {BY_HAND}."
        )
        self.path, self.problem = path, problem


def shown_name(path: str, limit: int = 80) -> str:
    """A listed name for a message: quoted with its odd characters escaped, shortened when long."""
    text = repr(path)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(path)} characters)"


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


def hub_client() -> SimpleNamespace:
    """The parts of huggingface_hub used here: public names in both 0.36 (requests) and 2.4 (httpx)."""
    try:
        from huggingface_hub import constants, get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status
    except ImportError:
        raise ELLAError(
            f"Downloading needs the huggingface_hub package (pip install huggingface_hub); or {BY_HAND}."
        ) from None
    return SimpleNamespace(
        constants=constants,
        session=get_session(),
        url=hf_hub_url,
        headers=build_hf_headers,
        raise_for_status=hf_raise_for_status,
    )


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


def status_code(exc: BaseException) -> Optional[int]:
    return getattr(getattr(exc, "response", None), "status_code", None)


def remote_files(kind: str, endpoint: Optional[str] = None, *, timeout: Optional[float] = None) -> list[RemoteFile]:
    """The hub's files of `kind` with their sizes and hashes (tree API: the repo root or the T5 folder only)."""
    if kind not in KINDS:
        raise ArgumentError(f"Unknown download kind {kind!r}; use one of {', '.join(KINDS)}.")
    hub = hub_client()
    endpoint = hub_endpoint(endpoint)
    url = f"{endpoint}/api/models/{REPO}/tree/{quote(REVISION, safe='')}"
    params: Optional[dict] = None
    if kind == "t5":
        url += "/" + quote(KNOWN_T5)
        params = {"recursive": "true"}
    entries: list = []
    try:
        while url:
            r = hub.session.get(
                url, params=params, headers=hub.headers(), timeout=timeout or hub.constants.HF_HUB_ETAG_TIMEOUT
            )
            hub.raise_for_status(r)
            entries += r.json()
            url, params = r.links.get("next", {}).get("url"), None  # the next link carries the query
    except Exception as exc:  # the client raises requests/httpx/hub errors; all mean "could not list"
        code = status_code(exc)
        reason = f"it answered HTTP {code}" if code else connection_problem(exc)
        raise HubUnavailable(reason, endpoint) from None
    try:
        files = [
            RemoteFile(str(e["path"]), int(e["size"]), (e.get("lfs") or {}).get("oid"), str(e["oid"]))
            for e in entries
            if e.get("type") == "file"
        ]
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        raise HubUnavailable("it answered in an unknown format", endpoint) from None
    files = [f for f in files if (f.path == ELLA_FILE if kind == "ella" else f.path.startswith(KNOWN_T5 + "/"))]
    # a mirror must not be able to write outside the target folder
    unsafe = [f.path for f in files if "\\" in f.path or any(p in ("", ".", "..") for p in f.path.split("/"))]
    if unsafe:
        raise HubUnavailable(f"it lists unsafe file names ({shown_name(unsafe[0])}), which are refused", endpoint)
    odd = listing_problem(files)
    if odd:
        raise OddListing(*odd, endpoint)
    if not files:
        raise HubUnavailable(f"it has no {ELLA_FILE if kind == 'ella' else KNOWN_T5 + '/'}", endpoint)
    return files


def listing_problem(files: list[RemoteFile]) -> Optional[tuple[str, str]]:
    """(a listed name, what is wrong with it) for the first file that cannot be stored as listed, else None."""
    names: dict[str, str] = {}  # casefolded -> as listed
    seen: set[str] = set()
    paths = {f.path for f in files}
    folders = {f.path.rsplit("/", i)[0] for f in files for i in range(1, f.path.count("/") + 1)}
    for f in files:
        odd = next((c for c in f.path if ord(c) < 32 or ord(c) == 127), None)
        if odd is not None:
            return f.path, f"whose name holds the control character U+{ord(odd):04X}"
        longest = max(f.path.split("/"), key=lambda part: len(part.encode("utf-8", "surrogatepass")))
        if len(longest.encode("utf-8", "surrogatepass")) > NAME_MAX:
            return f.path, f"a name of {len(longest.encode('utf-8', 'surrogatepass'))} bytes (at most {NAME_MAX} fit)"
        if f.size < 0:
            return f.path, f"with a negative size ({f.size})"
        if not (_HEX.fullmatch(f.blob_id) and len(f.blob_id) == 40):
            return f.path, f"with a git blob id that is not 40 hex digits ({shown_name(f.blob_id, 50)})"
        if f.sha256 is not None and not (
            isinstance(f.sha256, str) and _HEX.fullmatch(f.sha256) and len(f.sha256) == 64
        ):
            return f.path, f"with an LFS sha256 that is not 64 hex digits ({shown_name(str(f.sha256), 80)})"
        if f.path in folders:
            return f.path, "both as a file and as a folder holding files"
        if f.path.endswith(PART) and f.path[: -len(PART)] in paths:
            return f.path, f"beside {shown_name(f.path[: -len(PART)])}, whose partial download takes that name"
        other = names.setdefault(f.path.casefold(), f.path)
        if other != f.path:
            return f.path, f"and {shown_name(other)}: names that differ only in case, one file on Windows and macOS"
        if f.path in seen:
            return f.path, "twice"
        seen.add(f.path)
    return None


_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\"()\[\]\\]+)")


def connection_problem(exc: BaseException) -> str:
    """A few words for a failed connection. requests nests the OS error's text deep in a pool error's repr."""
    text = str(exc)
    found = _OS_ERROR.search(text)
    if found:
        return found.group(1).strip().rstrip(".").lower()  # "connection refused", "name or service not known"
    if isinstance(exc, TimeoutError) or "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "the connection timed out"
    return exception_summary(exc)


@contextmanager
def stream(url: str, headers: dict, timeout: float, chunk_size: int) -> Iterator[tuple[object, Iterable[bytes]]]:
    """A streamed GET through huggingface_hub's session, following the hub's redirects to its CDN."""
    hub = hub_client()
    if callable(getattr(hub.session, "stream", None)):  # httpx (huggingface_hub >= 1.0)
        with hub.session.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
            hub.raise_for_status(r)
            yield r, r.iter_bytes(chunk_size)
    else:  # requests (huggingface_hub 0.x), where Session.stream is a bool flag; it follows redirects itself
        with hub.session.get(url, headers=headers, timeout=timeout, stream=True) as r:
            hub.raise_for_status(r)
            yield r, r.iter_content(chunk_size)
