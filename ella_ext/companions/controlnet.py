"""sd-webui-controlnet (A1111): its cond/uncond marker tokens stay in front of ELLA's.

ControlNet prefixes every CLIP cond row with a marker token (all +1024 for cond, all -1024 for uncond) and
reads it at every U-Net call to tell the halves apart. ELLA takes any such leading tokens off before it
makes its conditioning and puts them back in front of its own tokens, in every mode.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional

import torch

from .base import Companion, Finish, JobView

if TYPE_CHECKING:  # the plan module loads with a job, not at WebUI start-up
    from ..plan import CallResult, DenoiserCall

MAX_MARKER_TOKENS = 4


def marker_count(cond: Any) -> int:
    """How many leading tokens of `cond` [rows, tokens, width] are marker tokens.

    A marker token is constant across its width and non-zero in every row. No text encoder output is
    constant over 768 features, so CLIP and ELLA tokens never count.
    """
    if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or cond.shape[0] == 0:
        return 0
    n = 0
    while n < min(MAX_MARKER_TOKENS, cond.shape[1] - 1):
        token = cond[:, n, :]
        first = token[:, :1]
        if not bool(((token == first).all() and (first != 0).all()).item()):
            break
        n += 1
    return n


def split_markers(cond: Any) -> tuple[Optional[torch.Tensor], Any]:
    """(marker tokens [rows, k, width] or None, the rest of `cond`)."""
    n = marker_count(cond)
    if n == 0:
        return None, cond
    return cond[:, :n], cond[:, n:]


def with_markers(markers: Optional[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
    if markers is None:
        return cond
    return torch.cat([markers.to(device=cond.device, dtype=cond.dtype), cond], dim=1)


class ControlNetMarkers(Companion):
    name = "ControlNet"

    def adapt_call(self, job: JobView, call: DenoiserCall) -> Optional[Finish]:
        original_cond, original_uncond = call.text_cond, call.text_uncond
        cond_markers, call.text_cond = split_markers(original_cond)
        uncond_markers, call.text_uncond = split_markers(original_uncond)
        if cond_markers is None and uncond_markers is None:
            return None

        def finish(result: CallResult) -> CallResult:
            cond = with_markers(cond_markers, result.cond) if result.replaced_cond else original_cond
            uncond = with_markers(uncond_markers, result.uncond) if result.replaced_uncond else original_uncond
            return dataclasses.replace(result, cond=cond, uncond=uncond)

        return finish
