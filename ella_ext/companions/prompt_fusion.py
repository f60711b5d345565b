"""Prompt Fusion (prompt-fusion-extension): refused when its syntax is in a text ELLA's T5 reads.

Prompt Fusion replaces the WebUI's `get_learned_conditioning` while its option `prompt_fusion_enabled` is on:
it parses each prompt with its own grammar (interpolation `[a:b: 2, 8]`, alternation interpolation
`[a|b:0.5]`, weighted sums `[a:b::mean]`, attention interpolation `(word: 1, 2)`, `$variables`), CLIP-encodes
the prompts its parse lists, and blends their conditionings per step. The WebUI's own parser, which ELLA
schedules its texts with, leaves that syntax as plain text, so T5 would read it literally and the blend would
be lost. ELLA asks Prompt Fusion's parser what it makes of each text T5 reads: more than one prompt, or one
whose schedule differs from the WebUI's (beyond Fusion's re-spelling of spaces, numbers and escapes), means
its syntax is there.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional

from ..args import Negative
from ..logs import log
from ..prompt_syntax import strip_extra_networks
from .base import Companion, JobView

# where Fusion's own parser cannot be reached: its interpolation forms, a colon then a comma-separated
# list of steps closing a bracket, e.g. `[a:b: 2, 8]`, `[a:b:c: , .1, .4:bezier]`, `(word: 1.0, 2.0)`
STEP_LIST = re.compile(r":\s*[-+\d.\s]*,[-+\d.,\s]*(?::\s*\w+\s*)?[\])]")
_NUMBER = re.compile(r"\d*\.\d+|\d+\.?")


def fusion_enabled() -> bool:
    try:
        from modules import shared
    except ImportError:
        return False
    return bool(getattr(shared.opts, "prompt_fusion_enabled", False))


def _canonical(text: str) -> str:
    """A text as Fusion may re-spell it: without spaces and escapes, numbers in one notation."""
    text = _NUMBER.sub(lambda m: repr(float(m.group(0))), text)
    return re.sub(r"\s+|\\", "", text)


def fusion_prompts(text: str, steps: int) -> Optional[list[str]]:
    """The prompts Prompt Fusion's parser lists for `text` (one for a text without its syntax); None where its
    parser is not loaded or fails on the text (Fusion then fails the job itself)."""
    parser = sys.modules.get("lib_prompt_fusion.prompt_parser")
    tensor = sys.modules.get("lib_prompt_fusion.interpolation_tensor")
    if parser is None or tensor is None:
        return None
    try:
        builder = tensor.InterpolationTensorBuilder()
        parser.parse_prompt(text).extend_tensor(builder, (0, steps), steps, {}, False, False)
        return [str(prompt) for prompt in builder.get_prompt_database()]
    except Exception as exc:
        log.debug("ELLA: Prompt Fusion's parser failed on %r: %s", text[:80], exc)
        return None


def fusion_reading(text: str, steps: int, syntax: Any) -> Optional[str]:
    """How Prompt Fusion reads `text` where that differs from the WebUI's reading, or None."""
    prompts = fusion_prompts(text, steps)
    if prompts is None:
        match = STEP_LIST.search(text) if "lib_prompt_fusion.prompt_parser" not in sys.modules else None
        return f"its interpolation '{match.group(0)}'" if match else None
    if len(prompts) > 1:
        return "a blend of " + ", ".join(f"'{p[:60]}'" for p in prompts[:4]) + (", ..." if len(prompts) > 4 else "")

    def scheduled(t: str) -> set[str]:
        return {_canonical(s) for _, s in syntax.schedules([t], steps)[0]}

    if not prompts or scheduled(prompts[0]) == scheduled(text):
        return None
    return f"'{prompts[0][:100]}'"


class PromptFusion(Companion):
    name = "Prompt Fusion"

    def check(self, job: JobView) -> Optional[str]:
        if not fusion_enabled():
            return None
        p = job.p
        hires = bool(getattr(p, "is_hr_pass", False))
        prompts = list(getattr(p, "hr_prompts" if hires else "prompts", None) or [])
        steps = int(getattr(p, "steps", 20) or 20)
        texts = [("prompt", t) for t in dict.fromkeys(prompts)]
        if job.args.negative == Negative.ELLA:
            negatives = getattr(p, "hr_negative_prompts" if hires else "negative_prompts", None) or []
            texts += [("negative prompt", t) for t in dict.fromkeys(negatives)]
        syntax = job.plan.syntax
        for what, text in texts:
            for part, _weight in syntax.sub_prompts([strip_extra_networks(text)])[0]:
                reading = fusion_reading(part, steps, syntax)
                if reading:
                    return (
                        f"Prompt Fusion is on and reads the {what} '{part[:100]}' as {reading}: it blends CLIP's "
                        "conditionings, but ELLA's T5 reads the WebUI's prompt, where that syntax is plain text, so the "
                        "interpolation would be lost. Remove Prompt Fusion's syntax from the " + what + ", or turn "
                        "Prompt Fusion off for ELLA jobs (Settings -> Prompt Fusion -> 'Enable prompt-fusion "
                        'extension\'; override_settings {"prompt_fusion_enabled": false} in the API).'
                    )
        return None
