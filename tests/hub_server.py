"""A local stand-in for the Hugging Face hub's file protocol, for download tests.

A real HTTP server on 127.0.0.1 (random port) that answers exactly the requests huggingface_hub's
HTTP session makes for `ella_ext.hub` (used by `downloads` and `model_check`), in the hub's formats:

* GET  /api/models/{repo}/tree/{revision}[/{folder}][?recursive=true]  the tree listing (JSON, paged
  with a `Link: <...>; rel="next"` header like the hub);
* GET /{repo}/resolve/{revision}/{path}: small (non-LFS) files directly with their git blob
  sha1 as ETag; LFS files answer 302 to /cdn/{sha256} with X-Linked-Size / X-Linked-Etag, as the
  hub redirects to its CDN; both send X-Repo-Commit and honour `Range: bytes=N-` with 206.

Knobs for failures: `cut_after[path] = [n, ...]` (each GET of that file sends n bytes and closes the
connection, one entry per request), `corrupt` (a flipped byte, same size), `fail[path] = status`,
and `gate` (a file's body waits until the event is set; `waiting` is set when one does).
Knobs for a hub or proxy that lies: `too_long[path] = (extra_bytes, with_length)` sends the file
followed by that many more bytes, with a Content-Length that counts them or (with_length False)
with none, closing the connection to end the body; `listed_size[path]` lists another size than the
file's. Odd names are served as given to `add` (NUL bytes, long names, a name that is also a folder).
`downloads` records every body request with its Range header.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".model", ".bin")
COMMIT = "5f3b2a9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode()


class HubServer:
    def __init__(self, repo: str = "QQGYLab/ELLA", revision: str = "main"):
        self.repo, self.revision = repo, revision
        self.files: dict[str, bytes] = {}
        self.lfs: set[str] = set()
        self.cut_after: dict[str, list[int]] = {}
        self.corrupt: set[str] = set()
        self.fail: dict[str, int] = {}
        self.too_long: dict[str, tuple[int, bool]] = {}
        self.listed_size: dict[str, int] = {}
        self.gate: Optional[threading.Event] = None
        self.gate_paths: set[str] = set()  # empty: every file waits at the gate
        self.waiting = threading.Event()
        self.gate_timeout = 10.0  # seconds a body waits at the gate at most
        self.page_size = 1000
        self.downloads: list[tuple[str, Optional[str]]] = []  # (path, Range header) per body request
        self.listings: list[str] = []  # request paths of tree calls
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None

    # --- content --------------------------------------------------------------------------------

    def add(self, path: str, data: bytes, *, lfs: Optional[bool] = None) -> None:
        self.files[path] = data
        if lfs if lfs is not None else path.endswith(LFS_SUFFIXES):
            self.lfs.add(path)

    def add_folder(self, folder: Path, prefix: str) -> None:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                self.add(f"{prefix}/{f.relative_to(folder).as_posix()}", f.read_bytes())

    def requests_for(self, path: str) -> list[Optional[str]]:
        """Range headers of the body requests for `path` (None where the whole file was asked for)."""
        with self._lock:
            return [r for p, r in self.downloads if p == path]

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="hub-server", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- protocol -------------------------------------------------------------------------------

    def entry(self, path: str) -> dict:
        data = self.files[path]
        out = {"type": "file", "oid": git_blob_sha1(data), "size": self.listed_size.get(path, len(data)), "path": path}
        if path in self.lfs:
            pointer = lfs_pointer(data)
            out["oid"] = git_blob_sha1(pointer)
            out["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
        return out

    def tree(self, folder: str, recursive: bool) -> Optional[list[dict]]:
        prefix = f"{folder}/" if folder else ""
        below = sorted(p[len(prefix) :] for p in self.files if p.startswith(prefix))
        if folder and not below:
            return None
        out, folders = [], set()
        for rel in below:
            parts = rel.split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(self.entry(prefix + rel))
        out += [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f} for f in folders
        ]
        return sorted(out, key=lambda e: e["path"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        hub = self.hub
        resolve = f"/{hub.repo}/resolve/"
        tree = f"/api/models/{hub.repo}/tree/"
        if path.startswith(tree):
            rev, _, folder = path[len(tree) :].partition("/")
            return self._tree(rev, folder.strip("/"), query)
        if path.startswith(resolve):
            rev, _, file = path[len(resolve) :].partition("/")
            if rev != hub.revision:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            if file not in hub.files:
                return self._error(404, "EntryNotFound", f"{file} does not exist on {rev}")
            if file in hub.fail:
                return self._error(
                    hub.fail[file], None, "Internal Error - We're working hard to fix this as soon as possible!"
                )
            return self._file(file, lfs_redirect=file in hub.lfs)
        if path.startswith("/cdn/"):
            sha = path[len("/cdn/") :]
            file = next((p for p in hub.lfs if hashlib.sha256(hub.files[p]).hexdigest() == sha), None)
            if file is None:
                return self._error(404, None, "no such object")
            return self._file(file, lfs_redirect=False)
        self._error(404, None, "Not found")

    def _tree(self, rev: str, folder: str, query: dict) -> None:
        hub = self.hub
        with hub._lock:
            hub.listings.append(self.path)
        if rev != hub.revision:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entries = hub.tree(folder, query.get("recursive", ["false"])[0].lower() in ("1", "true"))
        if entries is None:
            return self._error(404, "EntryNotFound", f"{folder} does not exist on {rev}")
        cursor = int(query.get("cursor", ["0"])[0])
        page = entries[cursor : cursor + hub.page_size]
        headers = {"Content-Type": "application/json"}
        if cursor + hub.page_size < len(entries):
            rest = "&".join(f"{k}={quote(v[0])}" for k, v in query.items() if k != "cursor")
            headers["Link"] = (
                f'<{hub.url}{urlsplit(self.path).path}?{rest}&cursor={cursor + hub.page_size}>; rel="next"'
            )
        self._send(200, json.dumps(page).encode(), headers)

    def _file(self, file: str, lfs_redirect: bool) -> None:
        hub = self.hub
        data = hub.files[file]
        headers = {"X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if file in hub.lfs:
            sha = hashlib.sha256(data).hexdigest()
            headers.update(
                {
                    "X-Linked-Size": str(len(data)),
                    "X-Linked-Etag": f'"{sha}"',
                    "ETag": f'"{git_blob_sha1(lfs_pointer(data))}"',
                }
            )
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        if lfs_redirect:
            headers["Location"] = f"/cdn/{hashlib.sha256(data).hexdigest()}"
            return self._send(302, b"", headers)
        if file in hub.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        with hub._lock:
            hub.downloads.append((file, rng))
            cuts = hub.cut_after.get(file)
            cut = cuts.pop(0) if cuts else None
        if hub.gate is not None and (not hub.gate_paths or file in hub.gate_paths):
            hub.waiting.set()
            hub.gate.wait(hub.gate_timeout)
        payload = data[start:]
        extra, with_length = hub.too_long.get(file, (0, True))
        if extra:
            payload += b"\0" * extra
            if not with_length:  # no Content-Length: the body ends when the connection closes
                headers.update({"Connection": "close", "Content-Length": None})
                self.close_connection = True
        if cut is not None:  # promise the whole file, send part of it, then drop the connection
            headers["Connection"] = "close"
            self._send(status, payload[:cut], dict(headers, **{"Content-Length": str(len(payload))}))
            self.close_connection = True
            return
        self._send(status, payload, headers)

    def _error(self, status: int, code: Optional[str], message: str) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, payload: bytes, headers: dict) -> None:
        try:
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(payload)))
            for k, v in headers.items():
                if v is not None:  # None: the header is left out
                    self.send_header(k, v)
            self.end_headers()
            for i in range(0, len(payload), 16384):
                self.wfile.write(payload[i : i + 16384])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
