"""The WebUI's prompt token counter function (A1111 1.10 modules/ui.py update_token_counter): extra networks
removed, AND sub-prompts and each step's text counted, the longest shown as '<count>/<chunk capacity>'. The
fake CLIP's tokens are the words and punctuation of the text (emphasis parsed out), 75 to a chunk."""

import re

from modules import extra_networks, prompt_parser

_TOKEN = re.compile(r"\w+|[^\w\s]")


def _lengths(text):
    # as the WebUI's CLIP tokenizer wrapper, the emphasis syntax is parsed out before tokenizing
    n = len(_TOKEN.findall("".join(t for t, w in prompt_parser.parse_prompt_attention(text) if w != -1)))
    return n, max(1, -(-n // 75)) * 75


def update_token_counter(text, steps, styles, *, is_positive=True):
    text, _ = extra_networks.parse_prompt(text)
    flat = prompt_parser.get_multicond_prompt_list([text])[1] if is_positive else [text]
    schedules = prompt_parser.get_learned_conditioning_prompt_schedules(flat, steps)
    count, limit = max((_lengths(t) for schedule in schedules for _, t in schedule), key=lambda c: c[0])
    return f"<span class='gr-box gr-text-input'>{count}/{limit}</span>"
