"""ELLA's own HTTP API, under /ella/v1, for headless users (the WebUI's /sdapi/v1 runs the jobs).

    GET    /ella/v1/models[?check=true&model=NAME&t5=NAME]   what is installed, what is missing, where
                                                             downloads go, the download's status; with
                                                             check=true, the Check report for the files
    POST   /ella/v1/download  {"kinds": ["ella", "t5"]}     start fetching (default: what is missing);
                                                             202 started, 200 already running or nothing
                                                             to do (see "notice"), 409 refused (offline)
    GET    /ella/v1/download[?wait=SECONDS]                  poll the progress; wait (up to 60 s) returns
                                                             early when the download ends
    DELETE /ella/v1/download                                 cancel; the next POST resumes

With --api-auth, credentials are checked before anything of the request is read: the POST body is
parsed by the handler itself (a body FastAPI parses is read before any dependency runs). Passwords
are compared as UTF-8 bytes (RFC 7617), or Latin-1 for older clients, in constant time. Error
details are cut to MAX_DETAIL characters: nothing a client sends comes back unbounded.

FastAPI is imported when the routes are registered (it ships with every WebUI), not at import.
No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.
"""

import base64
import binascii
import json
import secrets
from typing import Optional

from .errors import ELLAError
from .model_setup import ModelSetup

PREFIX = "/ella/v1"
MAX_WAIT = 60.0
MAX_BODY = 64 * 1024  # bytes of a POST body: {"kinds": [...]} needs a few dozen
MAX_DRAIN = 16 << 20  # bytes read (and dropped) of a longer body before the 413, so that the client reads it
MAX_DETAIL = 2000  # characters of an error detail


def detail(text: str) -> str:
    """An error detail, cut to MAX_DETAIL characters."""
    return text if len(text) <= MAX_DETAIL else f"{text[:MAX_DETAIL]}... ({len(text)} characters)"


def credentials_match(header: Optional[str], credentials: dict[str, str]) -> bool:
    """Whether an Authorization header carries one of the user:password pairs (Basic), in constant time."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, colon, password = given.partition(b":")
    if not colon:
        return False
    found = False
    for name, secret in credentials.items():
        for encoding in ("utf-8", "latin-1"):  # RFC 7617's UTF-8; Latin-1 from clients that predate it
            try:
                want_user, want_password = name.encode(encoding), secret.encode(encoding)
            except UnicodeEncodeError:
                continue
            # every pair is compared, so the time says nothing about which user name exists
            found |= secrets.compare_digest(want_user, user) & secrets.compare_digest(want_password, password)
    return found


def register_routes(app, setup: ModelSetup, *, credentials: Optional[dict[str, str]] = None) -> None:
    """Add the routes to the WebUI's FastAPI `app`; `credentials` (user -> password) as the WebUI's --api-auth."""
    from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

    dependencies = []
    if credentials:

        def authenticate(request: Request):
            if not credentials_match(request.headers.get("Authorization"), credentials):
                raise HTTPException(status_code=401, detail="Incorrect username or password",
                                    headers={"WWW-Authenticate": 'Basic realm="ELLA", charset="UTF-8"'})

        dependencies.append(Depends(authenticate))

    router = APIRouter(prefix=PREFIX, tags=["ELLA"], dependencies=dependencies)

    @router.get("/models")
    def models(check: bool = False, model: Optional[str] = None, t5: Optional[str] = None):
        report = None
        if check:  # first: what it finds damaged is part of "to_download"
            try:
                report = setup.check(model, t5)
            except ELLAError as exc:
                raise HTTPException(status_code=422, detail=detail(str(exc))) from None
        out = setup.describe()
        if report is not None:
            out["check"] = dict(report.to_dict(), markdown=report.to_markdown())
        return out

    @router.post("/download", openapi_extra={"requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"kinds": {"type": "array", "items": {"type": "string"}}}}}}}})
    async def start_download(request: Request, response: Response):
        kinds = download_kinds(await read_body(request))
        try:
            status = setup.start_download(kinds)
        except ELLAError as exc:
            raise HTTPException(status_code=422, detail=detail(str(exc))) from None
        if status["started"]:
            response.status_code = 202
        elif "notice" not in status:  # refused before starting: offline, or no huggingface_hub
            raise HTTPException(status_code=409, detail=detail(status["error"]))
        return status

    @router.get("/download")
    def download_status(wait: float = Query(0.0, ge=0.0, le=MAX_WAIT)):
        status = setup.download_status()
        if wait and status["state"] == "running":
            status = setup.wait(wait)
        return status

    @router.delete("/download")
    def cancel_download():
        return setup.cancel_download()

    async def read_body(request: Request) -> bytes:
        body, size = b"", 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_BODY:
                body += chunk
            elif size > MAX_DRAIN:  # stop reading: the client sees the connection close
                break
        if size > MAX_BODY:  # read to the end (up to MAX_DRAIN) so that the client gets this answer
            raise HTTPException(status_code=413, detail=f"The body is over {MAX_BODY} bytes; send {{\"kinds\": [...]}}.")
        return body

    def download_kinds(body: bytes) -> Optional[list]:
        if not body.strip():
            return None
        try:
            data = json.loads(body)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise HTTPException(status_code=422, detail=detail(f"The body is not JSON ({exc}); send {{\"kinds\": [\"ella\", \"t5\"]}}.")) from None
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("kinds", []), (list, type(None))):
            raise HTTPException(status_code=422, detail='The body must be {"kinds": ["ella", "t5"]} (kinds optional).')
        kinds = data.get("kinds")
        if kinds is not None and not all(isinstance(k, str) for k in kinds):
            raise HTTPException(status_code=422, detail="'kinds' must list strings: \"ella\", \"t5\".")
        return kinds

    app.include_router(router)
