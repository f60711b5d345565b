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
    POST   /ella/v1/tokens  {"prompt": "...", "t5": ..., ...}  T5 tokens of a prompt and whether ELLA cuts it
                                                             (the tokenizer only; see token_count.py)
    POST   /ella/v1/expand  {"prompt": ..., "negative_prompt": "", "force": false}
                                                             caption upsampling through the LLM set in the
                                                             settings: {"prompt", "original", "changed",
                                                             "notices"}; 409 when no endpoint is set, 502/503/
                                                             504 when the LLM fails (the detail says how)

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from .errors import ELLAError
from .model_setup import ModelSetup

if TYPE_CHECKING:
    from .token_count import TokenCounter

PREFIX = "/ella/v1"
MAX_WAIT = 60.0
MAX_BODY = 64 * 1024  # bytes of a POST body: {"kinds": [...]} needs a few dozen, a prompt a few thousand
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


def register_routes(
    app,
    setup: ModelSetup,
    *,
    credentials: Optional[dict[str, str]] = None,
    tokens: Optional["TokenCounter"] = None,
    expand: Optional[Callable[..., Any]] = None,
) -> None:
    """Add the routes to the WebUI's FastAPI `app`; `credentials` (user -> password) as the WebUI's --api-auth;
    `tokens` serves /tokens; `expand(prompt, negative=, force=)` -> UpsampleResult serves /expand."""
    from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

    dependencies = []
    if credentials:

        def authenticate(request: Request):
            if not credentials_match(request.headers.get("Authorization"), credentials):
                raise HTTPException(
                    status_code=401,
                    detail="Incorrect username or password",
                    headers={"WWW-Authenticate": 'Basic realm="ELLA", charset="UTF-8"'},
                )

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

    @router.post(
        "/download",
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"kinds": {"type": "array", "items": {"type": "string"}}},
                        }
                    }
                }
            }
        },
    )
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
            raise HTTPException(status_code=413, detail=f"The body is over {MAX_BODY} bytes.")
        return body

    def download_kinds(body: bytes) -> Optional[list]:
        if not body.strip():
            return None
        try:
            data = json.loads(body)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise HTTPException(
                status_code=422, detail=detail(f'The body is not JSON ({exc}); send {{"kinds": ["ella", "t5"]}}.')
            ) from None
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("kinds", []), (list, type(None))):
            raise HTTPException(status_code=422, detail='The body must be {"kinds": ["ella", "t5"]} (kinds optional).')
        kinds = data.get("kinds")
        if kinds is not None and not all(isinstance(k, str) for k in kinds):
            raise HTTPException(status_code=422, detail='\'kinds\' must list strings: "ella", "t5".')
        return kinds

    async def read_model(request: Request, model):
        """The JSON body as `model` (a pydantic class), read only after the credentials were checked."""
        from pydantic import ValidationError

        body = await read_body(request)
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=detail(f"The body is not JSON ({exc}).")) from None
        if not isinstance(data, dict):
            raise HTTPException(status_code=422, detail="The body must be a JSON object.")
        try:
            return model(**data)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise HTTPException(status_code=422, detail=detail(f"Bad request body: {fields}")) from None

    if tokens is not None:
        _token_route(router, tokens, read_model)
    if expand is not None:
        _expand_route(router, expand, read_model)
    app.include_router(router)


def json_body(model) -> dict:
    """The OpenAPI request body of a route that reads its JSON itself (after the credentials): `model`'s schema
    (pydantic 2; pydantic 1 documents none)."""
    schema = model.model_json_schema() if hasattr(model, "model_json_schema") else {}
    return {"requestBody": {"content": {"application/json": {"schema": schema}}}}


def _token_route(router, counter: "TokenCounter", read_model) -> None:
    """POST /tokens on ELLA's router (and so behind its credentials check)."""
    from fastapi import HTTPException, Request
    from pydantic import BaseModel
    from starlette.concurrency import run_in_threadpool

    from .args import ELLAArgs

    class TokensRequest(BaseModel):
        prompt: str
        t5: Optional[str] = None  # default: the first installed T5 folder, as a job
        length: Optional[str] = None
        long_prompts: Optional[str] = None
        steps: int = 20  # prompt editing: the text at each of these steps is counted
        hires_steps: Optional[int] = None  # the hires prompt: its steps (numbers count on from `steps`)
        negative: bool = False  # a negative prompt: not split at AND

    @router.post(
        "/tokens",
        openapi_extra=json_body(TokensRequest),
    )
    async def count_tokens(request: Request):
        body = await read_model(request, TokensRequest)

        def count():
            named = {k: getattr(body, k) for k in ("t5", "length", "long_prompts") if getattr(body, k)}
            return counter.count(
                body.prompt,
                ELLAArgs.from_dict(named),
                steps=body.steps,
                hires_steps=body.hires_steps,
                negative=body.negative,
            )

        try:
            result = await run_in_threadpool(count)  # the tokenizer may load: not on the event loop
        except ELLAError as exc:
            raise HTTPException(status_code=exc.status_code, detail=detail(str(exc))) from None
        return result.to_dict()


def _expand_route(router, expand: Callable[..., Any], read_model) -> None:
    from fastapi import HTTPException, Request
    from pydantic import BaseModel
    from starlette.concurrency import run_in_threadpool

    class ExpandRequest(BaseModel):
        prompt: str
        negative_prompt: str = ""
        force: bool = False  # also rewrite a prompt that is already a dense description

    @router.post(
        "/expand",
        openapi_extra=json_body(ExpandRequest),
    )
    async def expand_prompt(request: Request):
        body = await read_model(request, ExpandRequest)
        try:  # the LLM answers in seconds: in a worker thread, not on the event loop
            result = await run_in_threadpool(expand, body.prompt, negative=body.negative_prompt, force=body.force)
        except ELLAError as exc:
            raise HTTPException(status_code=exc.status_code, detail=detail(str(exc))) from None
        return result.to_dict()
