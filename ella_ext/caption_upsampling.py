"""Caption upsampling: an LLM rewrites a short prompt into the dense caption ELLA was trained on.

The ELLA authors advise upsampling short captions with an LLM: ELLA learned from long machine-written
captions (3 to 5 sentences naming objects, colours, shapes, textures and where things are), and that is
where it is best. `expand_prompt` sends the prompt to any OpenAI-compatible chat endpoint (llama.cpp's
server, Ollama, LM Studio, vLLM, a hosted API) with an instruction and few-shot examples written for that
style, and returns the cleaned answer.

The WebUI's own syntax never reaches the LLM:

* extra-network tags (``<lora:name:0.8>``) are taken out and appended to the result unchanged;
* each ``AND`` sub-prompt (with its weight) and each ``BREAK`` part is expanded on its own and put back in
  its place, so composable diffusion and Regional Prompter keep their structure;
* emphasis (``(word:1.3)``, ``[word]``) is sent as plain words; the notice says the weights were dropped;
* a prompt with prompt editing or alternation (``[a:b:0.5]``, ``[a|b]``) is not expanded: a rewrite cannot
  keep its schedule. The result says so and leaves the prompt as it is.

The answer is cleaned: reasoning blocks, markdown, quotes and "Here is..." preambles are removed, and
characters the WebUI would read as syntax (brackets, ``AND``, ``BREAK``, ``<a:b>``) are escaped or
lowered, so the text means exactly what it says. Its length is bounded.

Stdlib HTTP only (urllib); nothing is sent unless a base URL is set.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any, Optional

from .errors import (
    UpsamplerError,
    UpsamplerHTTPError,
    UpsamplerOffError,
    UpsamplerResponseError,
    UpsamplerTimeoutError,
    UpsamplerUnreachableError,
)
from .prompt_syntax import (
    BREAK_MARK,
    extra_network_tags,
    has_scheduling,
    parse_attention,
    split_and,
    split_break,
    sub_extra_networks,
)

SETTING = "Settings → ELLA → Caption upsampling"
MAX_CHARS = 1000  # per expanded part: 5 dense sentences are ~700 characters, ELLA reads ~128 T5 tokens
MAX_TOKENS = 400  # asked of the server; a reasoning model may spend some of it on its reasoning
TEMPERATURE = 0.4
STREAM_TOTAL_FACTOR = 5  # a streamed answer may take this many timeouts in all, while it keeps coming
SERVER_MESSAGE_CHARS = 300  # of an error body quoted back
DENSE_WORDS, DENSE_SENTENCES = 40, 3  # a prompt this long is already ELLA's style (unless forced)

INSTRUCTION = """\
You rewrite short image prompts into the long, literal captions that a text-to-image model was trained on.

Write one paragraph of 3 to 5 sentences describing only what is visible in the picture:
- every object the prompt names, with its colour, shape, size, material and surface texture;
- where the objects are relative to each other and in the frame (left of, on top of, behind, in the \
foreground, in the background);
- counts exactly as given, and any text that appears in the image in double quotes.
Keep everything the prompt asks for, including its medium or style (photo, oil painting, 3D render, pixel art), \
and add only plausible visual details. Do not describe mood, atmosphere, emotions, sounds, smells or a story; \
avoid words like "evoking", "serene", "captivating" or "a sense of".
Answer with the caption only: no title, no preamble, no quotes around it, no list, no markdown."""

# (prompt, caption): written for this module in the style of DPG-Bench, without atmosphere
EXAMPLES = (
    (
        "a cat on a bookshelf",
        "A ginger tabby cat with a white chest and a long striped tail lies curled on the top shelf of a tall "
        "bookshelf painted matte white. Its front paws hang over the edge of the shelf, just above a row of "
        "hardcover books with spines in dark green, navy blue and burgundy. To the left of the cat stands a small "
        "round terracotta pot holding an ivy whose pointed leaves trail down over the books below. The back panel "
        "behind the cat is bare and shows the pale, straight grain of the wood.",
    ),
    (
        "three apples, oil painting",
        "An oil painting of three apples arranged in a loose triangle on a folded cream linen cloth. The apple in "
        "front is a deep glossy red with a short brown stem, while the two behind it are yellow-green with a pink "
        "blush on their rounded sides. Thick, visible brushstrokes give the cloth soft ridges and the apples a "
        "slightly uneven skin. The background is a flat field of muted olive green, and each apple casts a small "
        "grey shadow to its right.",
    ),
    (
        "neon sign that says OPEN in a shop window",
        'A rectangular shop window in a thin black metal frame holds a neon sign that reads "OPEN" in red capital '
        "letters. The glass tubes of the sign are bent into rounded letters and fixed to a clear acrylic panel that "
        "hangs from two short silver chains. Behind the glass, a narrow wooden counter with a grey cash register "
        "stands against a white tiled wall. Two small white price cards are taped to the lower left corner of the "
        "window pane.",
    ),
)
PART_NOTE = "This is one of {n} parts of a longer prompt: write 1 to 2 sentences for this part only."


@dataclass(frozen=True)
class UpsamplerConfig:
    """Where the LLM is. `base_url` "" means caption upsampling is off.

    `timeout` (seconds): without streaming, how long the whole answer may take; with streaming, the longest
    silence between two pieces of the answer (which may take `STREAM_TOTAL_FACTOR` timeouts in all)."""

    base_url: str = ""
    model: str = ""
    api_key: str = ""
    timeout: float = 60.0
    stream: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.base_url.strip())

    @property
    def chat_url(self) -> str:
        """POST target: ``{base}/chat/completions``; a bare host gets ``/v1``, a full URL is kept."""
        base = self.base_url.strip().rstrip("/")
        parsed = urllib.parse.urlsplit(base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UpsamplerOffError(
                f"The LLM endpoint {base[:120]!r} is not an http(s) URL. Set {SETTING} to e.g. "
                "http://127.0.0.1:8080/v1 (llama.cpp), http://127.0.0.1:11434/v1 (Ollama) or "
                "http://127.0.0.1:1234/v1 (LM Studio).",
                status_code=422,
            )
        if parsed.path.endswith("/chat/completions"):
            return base
        return base + ("/chat/completions" if parsed.path else "/v1/chat/completions")


@dataclass(frozen=True)
class UpsampleResult:
    prompt: str  # what to use: the expansion, or the original where nothing was expanded
    original: str
    changed: bool
    notices: tuple[str, ...] = ()  # what was kept, dropped or cut, for the status line / API / log

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "original": self.original,
            "changed": self.changed,
            "notices": list(self.notices),
        }


def expand_prompt(prompt: str, config: UpsamplerConfig, *, negative: str = "", force: bool = False) -> UpsampleResult:
    """`prompt` rewritten by the LLM at `config` into ELLA's dense caption style (see the module's doc).

    A prompt that is already a dense description (at least 3 sentences and 40 words) is left as it is
    unless `force`. `negative` is passed as what the caption must leave out. Raises `UpsamplerError`
    subclasses: off (no URL), unreachable, timeout, HTTP error, malformed or empty answer."""
    if not config.enabled:
        raise UpsamplerOffError(f"Caption upsampling is off: set the LLM endpoint in {SETTING}.")
    url = config.chat_url
    notices: list[str] = []
    tags = extra_network_tags(prompt)
    text = sub_extra_networks(prompt)

    def unchanged(reason: str) -> UpsampleResult:
        return UpsampleResult(prompt, prompt, False, (reason,))

    if not text.strip():
        return unchanged("The prompt has no text to expand.")
    if has_scheduling(text):
        return unchanged(
            "Not expanded: the prompt uses prompt editing or alternation ([a:b:N], [a|b]), whose "
            "schedule a rewrite cannot keep. Expand the texts by hand, or remove the brackets."
        )
    subs = [(weight, [_plain(part) for part in split_break(sub)]) for sub, weight in split_and(text)]
    plain_parts = [plain for _weight, parts in subs for plain, _weighted in parts if plain.strip()]
    if not force and _is_dense(" ".join(plain_parts)):
        return unchanged("Not expanded: the prompt is already a dense description. Expand anyway to rewrite it.")
    if any(weighted for _weight, parts in subs for _plain_text, weighted in parts):
        notices.append(
            "Emphasis weights ((word:1.3), [word]) were not sent to the LLM and are not in the result; "
            "add them again where you want them."
        )
    if tags:
        notices.append(f"Kept {', '.join(tags)} as written (not sent to the LLM).")
    count = len(plain_parts)
    negative_text = _plain(sub_extra_networks(negative))[0].strip()
    out_subs = []
    for weight, parts in subs:
        out_parts = []
        for plain, _weighted in parts:
            if not plain.strip():
                out_parts.append("")
                continue
            answer, finish = _complete(url, config, _messages(plain.strip(), negative_text, count))
            caption, cut = clean_answer(answer)
            if not caption:
                raise UpsamplerResponseError(
                    f"The LLM at {url} gave an empty answer for {plain.strip()[:60]!r}"
                    + (" (it ran out of tokens while reasoning)" if finish == "length" else "")
                    + ". Try another model, or check the server's log."
                )
            if finish == "length" or cut:
                notices.append("The LLM's answer was long and was cut at a sentence end.")
            out_parts.append(caption)
        joined = " BREAK ".join(out_parts)
        out_subs.append(joined if weight == 1.0 else f"{joined} :{weight:g}")
    result = " AND ".join(out_subs)
    if tags:
        result = f"{result} {' '.join(tags)}"
    return UpsampleResult(result, prompt, result != prompt, tuple(dict.fromkeys(notices)))


def _plain(part: str) -> tuple[str, bool]:
    """A prompt part's words without emphasis markup (escapes resolved), and whether it had weights."""
    segments = [seg for seg in parse_attention(part) if seg != BREAK_MARK]
    return "".join(text for text, _w in segments), any(w != 1.0 and text.strip() for text, w in segments)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def _is_dense(text: str) -> bool:
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if len(s.split()) >= 3]
    return len(text.split()) >= DENSE_WORDS and len(sentences) >= DENSE_SENTENCES


def _messages(prompt: str, negative: str, parts: int) -> list[dict[str, str]]:
    def ask(text: str, note: str = "") -> str:
        lines = [f"Prompt: {text}"]
        if note:
            lines.append(note)
        if negative:
            lines.append(f"Leave out: {negative[:300]}")
        return "\n".join(lines)

    messages = [{"role": "system", "content": INSTRUCTION}]
    for example, caption in EXAMPLES:
        messages += [{"role": "user", "content": ask(example)}, {"role": "assistant", "content": caption}]
    messages.append({"role": "user", "content": ask(prompt, PART_NOTE.format(n=parts) if parts > 1 else "")})
    return messages


# --- HTTP -------------------------------------------------------------------------------------------


def _complete(url: str, config: UpsamplerConfig, messages: list[dict[str, str]]) -> tuple[str, Optional[str]]:
    """(answer text, finish_reason) of one chat completion; UpsamplerError subclasses for every failure."""
    body: dict[str, Any] = {
        "messages": messages,
        "temperature": TEMPERATURE,
        "max_tokens": MAX_TOKENS,
        "stream": bool(config.stream),
    }
    if config.model.strip():
        body["model"] = config.model.strip()
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if config.stream else "application/json",
    }
    if config.api_key.strip():
        headers["Authorization"] = f"Bearer {config.api_key.strip()}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    timeout = max(float(config.timeout), 0.1)  # 0 would make the socket non-blocking
    try:
        with _opener(url).open(request, timeout=timeout) as response:
            if "text/event-stream" in (response.headers.get("Content-Type") or ""):
                return _read_stream(response, url, time.monotonic() + STREAM_TOTAL_FACTOR * timeout, timeout)
            return _read_completion(response.read(), url)  # also a server that ignored "stream"
    except urllib.error.HTTPError as exc:
        raise _http_error(url, exc.code, _read_quietly(exc)) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _timeout(url, timeout) from None
        raise UpsamplerUnreachableError(
            f"Cannot reach the LLM endpoint {url}: {exc.reason}. Is the server running, and is {SETTING} right?"
        ) from None
    except TimeoutError:  # socket.timeout too
        raise _timeout(url, timeout) from None
    except (HTTPException, ConnectionError, OSError) as exc:
        raise UpsamplerUnreachableError(
            f"The LLM endpoint {url} closed the connection without a complete answer ({type(exc).__name__}). "
            "Check the server's log."
        ) from None


def _opener(url: str):
    """No proxy for loopback and private hosts (a local LLM server), the environment's proxies otherwise."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_private
    except ValueError:
        local = False
    return urllib.request.build_opener(urllib.request.ProxyHandler({} if local else None))


def _timeout(url: str, timeout: float) -> UpsamplerTimeoutError:
    return UpsamplerTimeoutError(
        f"The LLM endpoint {url} sent nothing for {timeout:g} s. A model on a CPU can be slow: raise the "
        f"timeout in {SETTING}, turn streaming on, or use a smaller model."
    )


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except Exception:  # the body of an error response is only quoted back
        return b""


def _http_error(url: str, status: int, body: bytes) -> UpsamplerHTTPError:
    reason = _server_message(body)
    hint = {
        401: "Check the API key.",
        403: "Check the API key.",
        404: "Check the URL (most servers want .../v1) and the model name.",
        429: "The server is busy or over its quota: try again later.",
    }.get(status, "Check the server's log.")
    return UpsamplerHTTPError(
        f"The LLM endpoint {url} answered HTTP {status}" + (f": {reason}" if reason else "") + f". {hint}",
        upstream_status=status,
    )


def _server_message(body: bytes) -> str:
    """The reason an error body gives (OpenAI's {"error": {"message"}}, {"error": "..."}, {"detail"}), cut short."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            text = error if isinstance(error, str) else json.dumps(error)
    text = " ".join(text.split())
    return text if len(text) <= SERVER_MESSAGE_CHARS else text[:SERVER_MESSAGE_CHARS] + "..."


def _malformed(url: str, what: str, sample: Any) -> UpsamplerResponseError:
    shown = sample if isinstance(sample, str) else json.dumps(sample)[:200]
    return UpsamplerResponseError(
        f"The LLM endpoint {url} did not answer with an OpenAI chat completion ({what}: {shown[:200]!r}). Is the "
        "URL the server's OpenAI-compatible API (usually ending in /v1)?"
    )


def _read_completion(raw: bytes, url: str) -> tuple[str, Optional[str]]:
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        raise _malformed(url, "not JSON", text) from None
    if isinstance(data, dict) and "error" in data and "choices" not in data:
        raise _http_error(url, 200, raw)
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise _malformed(url, "no choices[0].message", data) from None
    return _content_text(content, url), choice.get("finish_reason")


def _content_text(content: Any, url: str) -> str:
    """A message's content: a string, or a list of parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    raise _malformed(url, "content is neither text nor parts", content)


def _read_stream(response, url: str, deadline: float, timeout: float) -> tuple[str, Optional[str]]:
    """Server-sent events: ``data: {chunk}`` lines until ``data: [DONE]``; reading stops early past MAX_CHARS
    (a model that does not stop) and at the deadline (a server that trickles forever)."""
    pieces: list[str] = []
    size = 0
    finish = None
    for raw in response:  # each read waits at most `timeout` (the socket's timeout)
        if time.monotonic() > deadline:
            raise UpsamplerTimeoutError(
                f"The LLM endpoint {url} was still streaming after {STREAM_TOTAL_FACTOR * timeout:g} s "
                f"({STREAM_TOTAL_FACTOR} x the timeout). Raise the timeout in {SETTING} or use a faster model."
            )
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, event:/id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            raise _malformed(url, "a streamed event is not JSON", data) from None
        if not isinstance(chunk, dict):
            raise _malformed(url, "a streamed event is not an object", chunk)
        if "error" in chunk:
            raise _http_error(url, 200, json.dumps(chunk).encode())
        choices = chunk.get("choices") or []
        if not choices:
            continue  # usage-only chunks
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or choice.get("message") or {}
        piece = _content_text(delta.get("content") if isinstance(delta, dict) else None, url)
        pieces.append(piece)
        size += len(piece)
        finish = choice.get("finish_reason") or finish
        if size > 2 * MAX_CHARS:
            finish = "length"
            break
    return "".join(pieces), finish


# --- the answer -------------------------------------------------------------------------------------

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_THINK_END = re.compile(r"^.*</(think|thinking|reasoning)>", re.S | re.I)  # its opening tag was in the template
_FENCE = re.compile(r"```[\w-]*")
_INTERJECTION = re.compile(r"^(sure|certainly|of course|okay|ok|alright|absolutely|great)\b[!.,]?\s*", re.I)
_INTRO = re.compile(
    r"^(here(?:'s| is| are)\b|below is\b|i(?: have|'ve) (?:rewritten|expanded)\b)[^:\n]{0,100}:\s*", re.I
)
_LABEL = re.compile(r"^(expanded |rewritten |dense |detailed |image |final )?(prompt|caption|description)\s*:\s*", re.I)
_CHATTER = re.compile(
    r"^(note\b|\(note|i hope|let me know|feel free|this (caption|description|prompt)\b"
    r"|i (have|kept|added|focused)\b)",
    re.I,
)
_MARKUP = re.compile(r"^\s*(#{1,6}\s+|[-*•]\s+|>\s*|\d+[.)]\s+)")
_QUOTES = ('"', "'", "“", "”", "‘", "’", "«", "»")


def clean_answer(text: str) -> tuple[str, bool]:
    """The caption in an LLM's answer, as prompt text, and whether it was cut to MAX_CHARS."""
    text = _THINK_END.sub("", _THINK.sub("", text))
    text = _FENCE.sub("", text).replace("**", "").replace("__", "")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    while len(paragraphs) > 1 and _CHATTER.match(paragraphs[-1]):
        paragraphs.pop()  # "Note: I kept the colours...", "I hope this helps!"
    lines = [_MARKUP.sub("", line).strip() for p in paragraphs for line in p.splitlines()]
    text = " ".join(" ".join(line for line in lines if line).split())
    for _ in range(3):  # "Sure! Here is the caption: Caption: ..."
        shorter = _LABEL.sub("", _INTRO.sub("", _INTERJECTION.sub("", text))).strip()
        if shorter == text:
            break
        text = shorter
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    text = _as_prompt_text(text)
    if len(text) <= MAX_CHARS:
        return text, False
    head = text[:MAX_CHARS]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", head)]
    return (head[: ends[-1]] if ends else head.rsplit(" ", 1)[0]).strip(), True


def _as_prompt_text(text: str) -> str:
    """Plain words that the WebUI's prompt parser reads as themselves: brackets escaped, no AND/BREAK keywords,
    no extra-network tags, no backslashes."""
    text = text.replace("\\", "/")
    text = sub_extra_networks(text, lambda m: f"{m.group(1)} {m.group(2)}")
    text = re.sub(r"\b(AND|BREAK)\b", lambda m: m.group(1).lower(), text)
    return re.sub(r"([()\[\]])", r"\\\1", text)


def config_from_settings(settings) -> UpsamplerConfig:
    """The upsampler of `settings.Settings` (its expand_* fields); a timeout that is not a number gives 60 s."""
    try:
        timeout = float(settings.expand_timeout)
    except (TypeError, ValueError):
        timeout = UpsamplerConfig.timeout
    return UpsamplerConfig(
        base_url=str(settings.expand_url or ""),
        model=str(settings.expand_model or ""),
        api_key=str(settings.expand_api_key or ""),
        timeout=timeout,
        stream=bool(settings.expand_stream),
    )


__all__ = [
    "UpsampleResult",
    "UpsamplerConfig",
    "UpsamplerError",
    "clean_answer",
    "config_from_settings",
    "expand_prompt",
]
