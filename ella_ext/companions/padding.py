"""A1111's "Pad prompt/negative prompt to be same length" options, kept off ELLA's conditioning.

A1111 pads cond and uncond to one length right after the cfg-denoiser callbacks, through two methods of
its denoiser. With the negative through CLIP that would append an empty CLIP chunk to ELLA's 64 tokens
(or cut the CLIP negative to 64). An instance attribute shadows each method for the calls ELLA replaced;
it is removed again for the calls ELLA leaves to CLIP, which the user's setting then pads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .base import Companion, Finish, JobView

if TYPE_CHECKING:  # the plan module loads with a job, not at WebUI start-up
    from ..plan import CallResult, DenoiserCall

PADDING_METHODS = ("pad_cond_uncond", "pad_cond_uncond_v0")


def _no_padding(cond, uncond):
    return cond, uncond


def suspend_padding(denoiser: Any, replaced: bool) -> None:
    """Per denoiser, i.e. per job and pass: no padding for the calls whose conditioning ELLA made."""
    if denoiser is None:
        return
    for name in PADDING_METHODS:
        if replaced:
            if callable(getattr(type(denoiser), name, None)):
                denoiser.__dict__[name] = _no_padding
        else:
            denoiser.__dict__.pop(name, None)


class PaddingOption(Companion):
    name = "Pad prompt/negative prompt to be same length"

    def adapt_call(self, job: JobView, call: DenoiserCall) -> Optional[Finish]:
        def finish(result: CallResult) -> CallResult:
            suspend_padding(job.denoiser, replaced=result.replaced_cond)
            return result

        return finish
