"""The T5 token counter on the page: hidden gradio components that javascript/ella_token_counter.js drives.

The page's script writes a request (`{"id", "field", "text", "steps", "hires_steps"}`) into a hidden textbox
and clicks a hidden button, as the WebUI's own token counter does; the answer comes back as the hidden
`result` HTML, which the script reads and shows beside the prompt box. Going through gradio, the request
carries the page's own session (`--gradio-auth`). Fields: "prompt" and "hires" (the T5 count, see
`token_count.py`), "clip" (ELLA's CLIP text: the WebUI's own CLIP count of it, since CLIP reads it, not T5).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from ..args import ELLAArgs
from ..errors import ELLAError
from ..logs import warn_once

FIELDS = ("prompt", "hires", "clip")
_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")


def build(gr, script, extension, components: dict) -> None:
    """The hidden request box, button and result; the button counts with the accordion's T5 and length."""
    request = gr.Textbox(value="", visible=False, elem_id=script.elem_id("tokens_request"))
    button = gr.Button("count", visible=False, elem_id=script.elem_id("tokens_button"))
    result = gr.HTML("", visible=False, elem_id=script.elem_id("tokens_result"))
    button.click(
        fn=lambda *values: answer(extension, *values),
        inputs=[request, components["t5"], components["length"], components["long_prompts"]],
        outputs=[result],
        show_progress=False,
        queue=False,
    )


def answer(extension, request: str, t5: str, length: str, long_prompts: str) -> str:
    """The result HTML for one request: the JSON of `result()` as the text of a hidden div."""
    return f'<div class="ella-tokens-result">{html.escape(json.dumps(result(extension, request, t5, length, long_prompts)))}</div>'


def result(extension, request: str, t5: str, length: str, long_prompts: str) -> dict[str, Any]:
    """{"id", "field", "label", "truncated", "title"} or, where counting failed, {"id", "field", "error"}."""
    try:
        data = json.loads(request or "{}")
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        return {"id": None, "field": None, "error": f"ELLA token count: bad request ({exc})."}
    out: dict[str, Any] = {"id": data.get("id"), "field": data.get("field")}
    text, steps = data.get("text", ""), data.get("steps") or 20
    try:
        if data.get("field") == "clip":
            return {**out, **clip_count(text, steps)}
        if data.get("field") not in FIELDS:
            raise ELLAError(f"ELLA token count: unknown field {data.get('field')!r}; one of {', '.join(FIELDS)}.")
        args = ELLAArgs.from_dict(
            {k: v for k, v in (("t5", t5), ("length", length), ("long_prompts", long_prompts)) if v}
        )
        hires = data.get("hires_steps") if data.get("field") == "hires" else None
        count = extension.token_counter.count(text, args, steps=int(steps), hires_steps=int(hires) if hires else None)
    except (ELLAError, TypeError, ValueError) as exc:
        return {**out, "error": str(exc)}
    if count.truncated:
        title = (
            f"ELLA reads {count.tokens} T5 tokens and cuts every text at {count.limit} (its training length): "
            "the end of this prompt is lost. Shorten it, or set 'Prompts over 128 T5 tokens' to Keep."
        )
    elif count.limit is None:
        title = f"ELLA reads {count.tokens} T5 tokens and keeps them all ('Prompts over 128 T5 tokens': Keep)."
    else:
        title = f"ELLA reads {count.tokens} T5 tokens; it cuts a text at {count.limit}."
    return {**out, "label": count.label, "truncated": count.truncated, "title": title}


def clip_count(text: str, steps: int) -> dict[str, Any]:
    """The WebUI's own CLIP token count of a text (its prompt box counter's function), as 'CLIP 12/75'."""
    from modules import ui

    try:
        shown = ui.update_token_counter(text, int(steps), [])
    except TypeError:  # WebUIs before 1.9 take no styles
        shown = ui.update_token_counter(text, int(steps))
    found = _COUNT.search(str(shown))
    if not found:
        warn_once("clip-count", f"ELLA: the WebUI's token counter answered {str(shown)[:80]!r}; no CLIP count shown.")
        return {"error": "the WebUI's CLIP token counter gave no count"}
    tokens, limit = found.groups()
    return {
        "label": f"CLIP {tokens}/{limit}",
        "truncated": False,
        "title": "CLIP tokens of the CLIP prompt (what CLIP encodes in ELLA + CLIP mode; T5 reads the prompt).",
    }
