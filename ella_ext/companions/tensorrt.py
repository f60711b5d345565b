"""TensorRT U-Net engines (NVIDIA's Stable-Diffusion-WebUI-TensorRT): refused when the engine cannot take
ELLA's context length.

An engine takes the context lengths of its profile, `encoder_hidden_states` min..max tokens; the UI builds
them from 75-token prompt counts, i.e. 77, 154, ... tokens. ELLA gives the U-Net 64 tokens (*ELLA only*) or
64 plus CLIP's 77 per chunk (*ELLA + CLIP*), and an engine fed a length outside its profile fails at the
first U-Net call with "ERROR: inference failed." and nothing that names ELLA. So before sampling ELLA
checks the length its mode gives at least, and at each denoiser call (before the U-Net gets it) the lengths
of the conditioning it made.

The engine in use is A1111's `modules.sd_unet.current_unet` (every U-Net forward goes to it while it is
set); a TensorRT one has `configs` (one per profile, each with a `config.profile`) and `profile_idx`, the
profile TensorRT picked for this pass (it switches to the hires profile before the hires pass).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch

from ..args import Conditioning
from ..errors import IncompatibleExtensionError
from .base import Companion, Finish, JobView, field_of

if TYPE_CHECKING:  # the plan module loads with a job, not at WebUI start-up
    from ..plan import CallResult, DenoiserCall

ELLA_TOKENS = 64  # the TSC's output length
CLIP_CHUNK = 77  # CLIP's tokens per 75-token chunk of prompt


def active_engine() -> Optional[Any]:
    """The TensorRT engine the U-Net runs on now, or None (PyTorch, or another kind of SD Unet)."""
    try:
        from modules import sd_unet
    except ImportError:
        return None
    unet = getattr(sd_unet, "current_unet", None)
    configs, index = getattr(unet, "configs", None), getattr(unet, "profile_idx", None)
    if (
        unet is None
        or not isinstance(configs, (list, tuple))
        or not isinstance(index, int)
        or not 0 <= index < len(configs)
    ):
        return None
    return unet


def context_range(engine: Any) -> Optional[tuple[int, int]]:
    """(min, max) context tokens of the engine's active profile; None where it has no such profile."""
    profile = field_of(field_of(engine.configs[engine.profile_idx], "config"), "profile")
    shapes = field_of(profile, "encoder_hidden_states")  # (min, opt, max) shapes [batch, tokens, width]
    try:
        return int(shapes[0][1]), int(shapes[-1][1])
    except (TypeError, IndexError, ValueError):
        return None


def engine_label(engine: Any) -> str:
    label = getattr(getattr(engine, "option", None), "label", None)
    return str(label or f"[TRT] {getattr(engine, 'model_name', '?')}")


def prompt_tokens_for(context_tokens: int) -> int:
    """The engine builder's "max prompt token count" (steps of 75 -> 77 context tokens) that takes this length."""
    return 75 * math.ceil(context_tokens / CLIP_CHUNK)


def refusal(engine: Any, low: int, high: int, tokens: int, what: str, clip_mode: bool) -> str:
    takes = f"{low} context tokens" if low == high else f"{low}-{high} context tokens"
    if clip_mode:
        fix = (
            f"rebuild the engine (TensorRT tab) with a max prompt token count of at least "
            f"{prompt_tokens_for(max(tokens, ELLA_TOKENS + CLIP_CHUNK))} and a min of at most 75"
        )
    else:
        fix = (
            f"use Conditioning 'ELLA + CLIP' (ELLA's 64 tokens plus CLIP's 77 per 75 prompt tokens) with an engine "
            f"built for a max prompt token count of at least {prompt_tokens_for(ELLA_TOKENS + CLIP_CHUNK)}"
        )
    return (
        f"The TensorRT U-Net '{engine_label(engine)}' takes {takes}, but ELLA gives the U-Net {tokens} ({what}); "
        f"the engine would fail at its first call ('ERROR: inference failed.'). Set 'SD Unet' to None for ELLA "
        f"jobs, or {fix}."
    )


def _tokens(cond: Any) -> Optional[int]:
    return int(cond.shape[1]) if isinstance(cond, torch.Tensor) and cond.ndim == 3 else None


class TensorRT(Companion):
    name = "TensorRT"

    def check(self, job: JobView) -> Optional[str]:
        engine = active_engine()
        limits = context_range(engine) if engine is not None else None
        if limits is None:
            return None
        low, high = limits
        if job.args.mode == Conditioning.ELLA_CLIP:
            least = ELLA_TOKENS + CLIP_CHUNK  # a prompt of one CLIP chunk; longer ones are checked per call
            if least > high:
                return refusal(engine, low, high, least, "ELLA + CLIP: 64 + 77 for one CLIP chunk", True)
            return None
        if not low <= ELLA_TOKENS <= high:
            return refusal(engine, low, high, ELLA_TOKENS, "ELLA only", False)
        return None

    def adapt_call(self, job: JobView, call: DenoiserCall) -> Optional[Finish]:
        engine = active_engine()
        limits = context_range(engine) if engine is not None else None
        if limits is None:
            return None
        low, high = limits
        clip_mode = job.args.mode == Conditioning.ELLA_CLIP

        def finish(result: CallResult) -> CallResult:
            for replaced, cond, half in (
                (result.replaced_cond, result.cond, "the prompt"),
                (result.replaced_uncond, result.uncond, "the negative prompt"),
            ):
                tokens = _tokens(cond) if replaced else None
                if tokens is not None and not low <= tokens <= high:
                    raise IncompatibleExtensionError(refusal(engine, low, high, tokens, f"for {half}", clip_mode))
            return result

        return finish
