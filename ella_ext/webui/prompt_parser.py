"""The WebUI's own prompt parser as a `PromptSyntax`, so ELLA's text schedule is the one CLIP's conditioning uses."""

from __future__ import annotations

from ..logs import log
from ..prompt_syntax import BuiltinPromptSyntax, PromptSyntax


class WebUIPromptSyntax:
    def __init__(self):
        from modules import prompt_parser

        self._pp = prompt_parser

    def schedules(self, prompts, steps, hires_steps=None, use_old_scheduling=False):
        raw = self._pp.get_learned_conditioning_prompt_schedules(list(prompts), steps, hires_steps, use_old_scheduling)
        return [[(int(end), text) for end, text in s] for s in raw]

    def sub_prompts(self, prompts):
        # the WebUI's own batch-wide call: Neutral Prompt keeps its AND_PERP/AND_SALT trees per call and zips
        # them with the batch when it combines the U-Net's outputs, so one call per image would leave the last
        # image's tree alone
        indexes, flat, _ = self._pp.get_multicond_prompt_list(list(prompts))
        return [[(flat[i], float(w)) for i, w in image] for image in indexes]

    def parse_attention(self, text):
        return [(t, float(w)) for t, w in self._pp.parse_prompt_attention(text)]


def prompt_syntax() -> PromptSyntax:
    try:
        return WebUIPromptSyntax()
    except Exception:  # a WebUI fork without these helpers: the built-in parser has the same semantics
        log.warning("ELLA: the WebUI's prompt parser is not usable; using ELLA's own.", exc_info=True)
        return BuiltinPromptSyntax()
