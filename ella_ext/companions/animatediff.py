"""AnimateDiff (sd-webui-animatediff): ELLA at every step, prompt travel on ELLA's outputs, a CLIP negative.

* Its step callback keeps the conditioning it sees at step 0 for every later step, so ELLA's callback must
  run after it (metadata.ini pins that order); a job where the order is wrong is stopped at step 0.
* Its sampler forward assumes cond and uncond rows in one call when the WebUI's "batch cond/uncond" option
  is on, but a 64-token ELLA cond and a 77-token CLIP negative go in separate calls. For those calls only,
  ELLA runs its forward with the option off, which is AnimateDiff's own path for separate calls.
* Prompt travel blends ELLA's own per-frame outputs with AnimateDiff's blending function at every step.

Both sampler adaptations apply where the WebUI runs the U-Net through the denoiser's inner forward, which
AnimateDiff replaces (`Backend.unet_through_inner_forward`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from ..errors import IncompatibleExtensionError
from ..logs import log
from .base import Companion, Finish, JobView, field_of, find_script

if TYPE_CHECKING:  # the plan module loads with a job, not at WebUI start-up
    from ..plan import DenoiserCall


def animatediff_params(p: Any) -> Any:
    ad = find_script(p, "AnimateDiff")
    if ad is None or not ad.args:
        return None
    params = ad.args[0]
    return params if field_of(params, "enable", False) else None


def prompt_travel(p: Any) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """AnimateDiff's own keyframe blending for this job's cond rows (one per frame), if travel is on."""
    params = animatediff_params(p)
    scheduler = field_of(params, "prompt_scheduler") if params is not None else None
    if scheduler is None or getattr(scheduler, "prompt_map", None) is None:
        return None
    video_length = int(field_of(params, "video_length", 0) or 0)
    batch_size = int(field_of(params, "batch_size", 0) or 0)
    closed_loop = video_length > batch_size and field_of(params, "closed_loop", "") in ("R+P", "A")
    return lambda cond: scheduler.multi_cond(cond, closed_loop)


class _SeparateCallsForward:
    """AnimateDiff's sampler forward, run with "batch cond/uncond" off for calls that hold one half.

    With the option on, its forward indexes the uncond half at `frame + video_length`, which a call holding
    only the cond rows (or only the uncond rows) does not have. The option is a global read inside that
    forward, so it is switched off only for the duration of such a call.
    """

    def __init__(self, forward: Callable, options: Any, video_length: int):
        self.forward = forward
        self.options = options
        self.video_length = video_length

    def __call__(self, x_in, sigma_in, cond):
        data = getattr(self.options, "data", None)
        if (
            x_in.shape[0] >= 2 * self.video_length
            or not isinstance(data, dict)
            or not data.get("batch_cond_uncond", False)
        ):
            return self.forward(x_in, sigma_in, cond=cond)
        data["batch_cond_uncond"] = False
        try:
            return self.forward(x_in, sigma_in, cond=cond)
        finally:
            data["batch_cond_uncond"] = True


class AnimateDiff(Companion):
    name = "AnimateDiff"

    def shape_plan(self, job: JobView) -> None:
        travel = prompt_travel(job.p)
        if travel is not None:
            job.plan.shape.cond_transforms.append(travel)
            log.info("ELLA: AnimateDiff prompt travel: ELLA's outputs are blended between the keyframes at every step")

    def adapt_call(self, job: JobView, call: DenoiserCall) -> Optional[Finish]:
        # AnimateDiff hooks each sampler at its step 0, in its callback, which runs before ELLA's
        denoiser = job.denoiser
        if call.step != 0 or not job.backend.unet_through_inner_forward:
            return None
        params = animatediff_params(job.p)
        if params is None:
            return None
        inner = getattr(denoiser, "inner_model", None)
        if inner is None:
            return None
        if getattr(inner, "original_forward", None) is None:
            raise IncompatibleExtensionError(
                "AnimateDiff had not set up the sampler when ELLA's step callback ran: either its motion module did "
                "not load (see AnimateDiff's message in the console), or its callback runs after ELLA's, which would "
                "freeze ELLA's first-step conditioning for every step. Keep the extension folder names "
                "'sd-webui-animatediff' and 'sd-webui-ella' (ELLA's metadata.ini orders the callbacks by them) and "
                "reset any custom callback order in Settings."
            )
        forward = getattr(inner, "__dict__", {}).get("forward")
        if forward is not None and not isinstance(forward, _SeparateCallsForward):
            from modules import shared

            inner.forward = _SeparateCallsForward(forward, shared.opts, int(field_of(params, "video_length", 0) or 0))
        return None
