"""Forge Couple (regional prompting on Forge): ELLA per region.

Forge Couple encodes each line of the prompt once per pass through `lib_couple.mapping.text2cond` (CLIP),
captures those tensors in its attention patch, and gives the whole prompt's conditioning (ELLA's) zero
weight: left alone, the image would come from CLIP. While ELLA's job samples, ELLA stands in for
`text2cond`: each region gets a tensor of ELLA's tokens (64; in ELLA + CLIP followed by the line's own CLIP
tokens) already on the WebUI's device and dtype, so the patch's `.to()` keeps that very tensor, and at every
denoiser call ELLA refills it in place with the TSC output for that line at the call's timestep. Each
region's cross-attention then sees exactly ELLA's tokens for its line, as ELLA alone would give that text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from ..args import Conditioning
from ..errors import ConditioningError
from ..prompt_syntax import strip_extra_networks
from .base import Companion, Finish, JobView, find_script

if TYPE_CHECKING:  # the plan module loads with a job, not at WebUI start-up
    from ..plan import DenoiserCall

MAPPING_MODULE = "lib_couple.mapping"  # where Forge Couple's mapping functions look up text2cond


@dataclass
class Region:
    text: str  # the line as T5 reads it
    tokens: torch.Tensor  # [1, num_latents (+ CLIP tokens), width], captured by Forge Couple's patch
    hires: bool  # the pass it was made for


def _active_instance(p: Any) -> Optional[Any]:
    """Forge Couple's script when it will couple this job's passes (it sets `couples` and `valid` per batch)."""
    fc = find_script(p, "Forge Couple")
    if fc is None or not fc.args or not fc.args[0]:
        return None
    instance = fc.instance
    return instance if getattr(instance, "couples", None) and getattr(instance, "valid", False) else None


def _mapping_module() -> Optional[Any]:
    module = sys.modules.get(MAPPING_MODULE)
    return module if callable(getattr(module, "text2cond", None)) else None


class ForgeCouple(Companion):
    name = "Forge Couple"

    def __init__(self):
        self._module: Optional[Any] = None
        self._original: Optional[Callable] = None  # Forge Couple's own text2cond
        self._job: Optional[JobView] = None
        self._regions: list[Region] = []

    def before_sample(self, job: JobView) -> None:
        if _active_instance(job.p) is None or self._module is not None:
            return
        module = _mapping_module()
        if module is None:
            return  # `check` refuses the job
        self._module, self._original, self._job = module, module.text2cond, job
        module.text2cond = self._text2cond

    def check(self, job: JobView) -> Optional[str]:
        if _active_instance(job.p) is None:
            return None
        if _mapping_module() is None:
            return (
                "This version of Forge Couple does not encode its regions through lib_couple.mapping.text2cond, so ELLA "
                "cannot give each region its own tokens and the image would come from CLIP alone. Update Forge Couple, "
                "or disable it for ELLA jobs."
            )
        if job.args.start > 0.0 or job.args.end < 1.0:
            return (
                "Forge Couple captures each region's conditioning once per pass, so it cannot switch between CLIP and "
                "ELLA within the pass: with Forge Couple, set ELLA's start to 0 and end to 1."
            )
        return None

    def shape_plan(self, job: JobView) -> None:
        # Forge Couple ran first for this pass: its lines are encoded with the pass's prompts
        hires = bool(getattr(job.p, "is_hr_pass", False))
        job.plan.shape.side_texts.extend(r.text for r in self._regions if r.hires == hires)

    def _text2cond(self, sd_model, texts):
        job = self._job
        if job is None or job.plan is None or self._original is None:
            return self._original(sd_model, texts) if self._original else None
        from modules import devices

        config = job.plan.tsc.config
        with torch.inference_mode():
            tokens = torch.zeros((1, config.num_latents, config.width), device=devices.device, dtype=devices.dtype)
            if job.args.mode == Conditioning.ELLA_CLIP:
                clip = self._original(sd_model, texts)[0][0]
                tokens = torch.cat([tokens, clip.to(tokens)], dim=1)
        line = strip_extra_networks(str(texts[0])).strip()
        self._regions.append(Region(line, tokens, bool(getattr(job.p, "is_hr_pass", False))))
        return [[tokens]]

    def adapt_call(self, job: JobView, call: DenoiserCall) -> Optional[Finish]:
        hires = bool(getattr(job.p, "is_hr_pass", False))
        regions = [r for r in self._regions if r.hires == hires]
        if not regions:
            return None
        t = call.timesteps.reshape(-1).float()
        if bool((t != t[0]).any()):
            raise ConditioningError(
                "Forge Couple gives every image of the batch the same region conditioning, but this denoiser call has "
                f"images at different timesteps ({sorted(set(t.tolist()))}); ELLA cannot condition its regions. Use "
                "batch size 1 with Forge Couple and this sampler."
            )
        name = "hires pass" if hires else "first pass"
        batch = job.plan.side_batch([r.text for r in regions], name)
        texts = [r.text for r in regions]
        n = job.plan.tsc.config.num_latents
        with torch.inference_mode():
            out = job.plan.embeddings(batch, texts, t[:1].expand(len(texts)))
            for region, tokens in zip(regions, out):
                region.tokens[0, :n].copy_(tokens)
        return None

    def restore(self) -> None:
        if self._module is not None and self._module.text2cond == self._text2cond:
            self._module.text2cond = self._original
        self._module = self._original = self._job = None
        self._regions = []
