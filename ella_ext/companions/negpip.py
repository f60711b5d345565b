"""NegPiP: its negative-weighted words work when cond and uncond share one U-Net call; refused otherwise.

NegPiP takes each `(word:-w)` out of the prompt (T5 never reads it) and appends the word's CLIP vectors,
negated, to the cond rows' context. When cond and uncond run in one call it finds the cond rows by their
place in the batch, and its vectors follow ELLA's tokens. When they run separately it finds the cond call by
its CLIP length (a multiple of 77 tokens), which ELLA's contexts never have: the words would be dropped
without a word. Calls are separate when the negative goes through CLIP (its length differs from ELLA's),
when "batch cond/uncond" is off, or when a prompt has AND sub-prompts (more cond rows than images).
"""

from __future__ import annotations

from typing import Optional

from ..args import Negative
from ..prompt_syntax import AND_SEPARATOR
from .base import Companion, JobView, find_script

INFO_NEGPIP = "ELLA NegPiP"


def _active(job: JobView) -> bool:
    negpip = find_script(job.p, "NegPiP")
    return negpip is not None and bool(getattr(negpip.instance, "active", False))  # set when a prompt has (w:-x)


def _separate_calls(job: JobView) -> Optional[str]:
    """Why cond and uncond of this job reach the U-Net in separate calls, if they do."""
    if job.args.negative == Negative.CLIP:
        return "the negative prompt goes through CLIP"
    from modules import shared

    if not getattr(shared.opts, "batch_cond_uncond", True):
        return "'Batch cond/uncond' is off in Settings"
    if any(AND_SEPARATOR.search(str(prompt)) for prompt in getattr(job.p, "prompts", None) or ()):
        return "the prompt has AND sub-prompts"
    return None


class NegPiP(Companion):
    name = "NegPiP"

    def check(self, job: JobView) -> Optional[str]:
        if not _active(job):
            return None
        why = _separate_calls(job)
        if why is None:
            return None
        return (
            f"NegPiP finds the prompt's conditioning by its CLIP length (a multiple of 77 tokens) when cond and uncond "
            f"run separately, as they do here ({why}); ELLA's 64 tokens are not found, so the (word:-1) parts would be "
            "dropped. Set 'Negative prompt through' to ELLA, turn 'Batch cond/uncond' on and leave out AND, or disable "
            "NegPiP."
        )

    def shape_plan(self, job: JobView) -> None:
        if _active(job):
            job.note(
                INFO_NEGPIP,
                "CLIP vectors",
                "ELLA: NegPiP's negative-weighted words act through CLIP vectors after ELLA's tokens, not through T5.",
            )
