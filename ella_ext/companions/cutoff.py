"""Cutoff (A1111): works on CLIP's tokens in ELLA + CLIP; refused in ELLA only.

Cutoff rewrites CLIP's output token by token through a hook on the CLIP model, so its target words keep
their colours. ELLA's tokens come from T5 through the TSC, which mixes every T5 token into each of its 64:
there are no word positions to separate. In ELLA + CLIP the CLIP tokens after ELLA's are Cutoff's (the
WebUI's and ELLA's separate CLIP text are both encoded through the hooked model), which the infotext says;
in ELLA only Cutoff would do nothing, so the job stops with the choice.
"""

from __future__ import annotations

from typing import Optional

from ..args import Conditioning
from .base import Companion, JobView, find_script

INFO_CUTOFF = "ELLA Cutoff"


def _active(job: JobView) -> bool:
    cutoff = find_script(job.p, "Cutoff")
    return cutoff is not None and getattr(cutoff.instance, "last_hooker", None) is not None  # set by its process()


class Cutoff(Companion):
    name = "Cutoff"

    def check(self, job: JobView) -> Optional[str]:
        if not _active(job) or job.args.mode == Conditioning.ELLA_CLIP:
            return None
        return (
            "Cutoff separates its target words inside CLIP's conditioning, which ELLA replaces in 'ELLA only' mode, so "
            "it would have no effect. Use Conditioning 'ELLA + CLIP' (Cutoff then acts on the CLIP tokens) or disable "
            "Cutoff."
        )

    def shape_plan(self, job: JobView) -> None:
        if _active(job):
            job.note(
                INFO_CUTOFF,
                "CLIP tokens only",
                "ELLA: Cutoff acts on the CLIP tokens after ELLA's, not on ELLA's T5 tokens.",
            )
