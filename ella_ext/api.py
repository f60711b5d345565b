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

FastAPI is imported when the routes are registered (it ships with every WebUI), not at import.
No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.
"""

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .errors import ELLAError
from .model_setup import ModelSetup

if TYPE_CHECKING:
    from .token_count import TokenCounter

PREFIX = "/ella/v1"
MAX_WAIT = 60.0


def register_routes(app, setup: ModelSetup, *, credentials: Optional[Dict[str, str]] = None,
                    tokens: Optional["TokenCounter"] = None, expand: Optional[Callable[..., Any]] = None) -> None:
    """Add the routes to the WebUI's FastAPI `app`; `credentials` (user -> password) as the WebUI's --api-auth;
    `tokens` serves /tokens; `expand(prompt, negative=, force=)` -> UpsampleResult serves /expand."""
    from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response
    from fastapi.security import HTTPBasic, HTTPBasicCredentials
    from pydantic import BaseModel

    dependencies = []
    if credentials:
        basic = HTTPBasic()

        def authenticate(given: HTTPBasicCredentials = Depends(basic)):
            expected = credentials.get(given.username)
            if expected is None or not secrets.compare_digest(expected.encode(), given.password.encode()):
                raise HTTPException(status_code=401, detail="Incorrect username or password",
                                    headers={"WWW-Authenticate": "Basic"})

        dependencies.append(Depends(authenticate))

    class DownloadRequest(BaseModel):
        kinds: Optional[List[str]] = None

    router = APIRouter(prefix=PREFIX, tags=["ELLA"], dependencies=dependencies)

    @router.get("/models")
    def models(check: bool = False, model: Optional[str] = None, t5: Optional[str] = None):
        report = None
        if check:  # first: what it finds damaged is part of "to_download"
            try:
                report = setup.check(model, t5)
            except ELLAError as exc:
                raise HTTPException(status_code=422, detail=str(exc))
        out = setup.describe()
        if report is not None:
            out["check"] = dict(report.to_dict(), markdown=report.to_markdown())
        return out

    @router.post("/download")
    def start_download(response: Response, request: Optional[DownloadRequest] = Body(default=None)):
        try:
            status = setup.start_download(request.kinds if request is not None else None)
        except ELLAError as exc:
            raise HTTPException(status_code=422, detail=str(exc))
        if status["started"]:
            response.status_code = 202
        elif "notice" not in status:  # refused before starting: offline, or no huggingface_hub
            raise HTTPException(status_code=409, detail=status["error"])
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

    if tokens is not None:
        add_token_route(router, tokens)
    if expand is not None:
        _expand_route(router, expand)
    app.include_router(router)


def add_token_route(router, counter: "TokenCounter") -> None:
    """POST /tokens on ELLA's router (and so behind its credentials check)."""
    from fastapi import HTTPException
    from pydantic import BaseModel

    from .args import ELLAArgs

    class TokensRequest(BaseModel):
        prompt: str
        t5: Optional[str] = None  # default: the first installed T5 folder, as a job
        length: Optional[str] = None
        long_prompts: Optional[str] = None
        steps: int = 20  # prompt editing: the text at each of these steps is counted
        hires_steps: Optional[int] = None  # the hires prompt: its steps (numbers count on from `steps`)
        negative: bool = False  # a negative prompt: not split at AND

    @router.post("/tokens")
    def count_tokens(request: TokensRequest):
        try:
            named = {k: getattr(request, k) for k in ("t5", "length", "long_prompts") if getattr(request, k)}
            count = counter.count(request.prompt, ELLAArgs.from_dict(named), steps=request.steps,
                                  hires_steps=request.hires_steps, negative=request.negative)
        except ELLAError as exc:
            raise HTTPException(status_code=exc.status_code, detail=str(exc))
        return count.to_dict()


def _expand_route(router, expand: Callable[..., Any]) -> None:
    from fastapi import HTTPException
    from pydantic import BaseModel

    class ExpandRequest(BaseModel):
        prompt: str
        negative_prompt: str = ""
        force: bool = False  # also rewrite a prompt that is already a dense description

    @router.post("/expand")
    def expand_prompt(request: ExpandRequest):
        try:
            result = expand(request.prompt, negative=request.negative_prompt, force=request.force)
        except ELLAError as exc:
            raise HTTPException(status_code=exc.status_code, detail=str(exc)) from None
        return result.to_dict()
