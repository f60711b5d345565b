"""ELLA + CLIP with a separate CLIP text: the WebUI's own CLIP conditioning of that text, per sampling pass, and
the CLIP text's extra-network tags activated by the WebUI with the prompt's own.

The WebUI parses and activates extra networks from the batch's prompts right after `before_process_batch`
(first pass) and from the hires prompts' parsed tags at the hires pass. So the CLIP text's tags go in front of
each prompt of the batch before that parse (the parse takes them out again, leaving the prompt's text exactly
as it was: T5 and the infotext never see them), and into the hires pass's parsed tags after it. One
activation per pass, with the prompt's tags and the CLIP text's together, as if they had been in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..args import ELLAArgs

if TYPE_CHECKING:
    from ..plan import PassSpec


@dataclass
class ClipTextConds:
    cond: Any = None  # MulticondLearnedConditioning of the CLIP prompt, one per image
    uncond: Any = None  # ScheduledPromptConditioning lists of the CLIP negative, one per image

    @classmethod
    def make(cls, p, spec: PassSpec, args: ELLAArgs) -> ClipTextConds:
        """Made the way the WebUI's setup_conds makes a plain job's conds (same functions, autocast, schedule),
        after extra networks are active, so LoRA tags of the main prompt act on it too."""
        from modules import devices, prompt_parser, shared

        prompt, negative = args.clip_texts
        images = len(spec.prompts)
        hires = spec.hires_steps is not None
        size = {
            "width": getattr(p, "hr_upscale_to_x", p.width) if hires else p.width,
            "height": getattr(p, "hr_upscale_to_y", p.height) if hires else p.height,
        }
        conds = cls()
        with devices.autocast():
            if prompt:
                conds.cond = prompt_parser.get_multicond_learned_conditioning(
                    shared.sd_model,
                    prompt_parser.SdConditioning([prompt] * images, **size),
                    spec.steps,
                    spec.hires_steps,
                    spec.use_old_scheduling,
                )
            if negative:
                conds.uncond = prompt_parser.get_learned_conditioning(
                    shared.sd_model,
                    prompt_parser.SdConditioning([negative] * images, is_negative_prompt=True, **size),
                    spec.steps,
                    spec.hires_steps,
                    spec.use_old_scheduling,
                )
        return conds

    def at(self, step: int) -> tuple[Any, Any]:
        """Rows (one per image) at a denoiser step, as the WebUI's denoiser reconstructs its own."""
        from modules import prompt_parser

        cond = prompt_parser.reconstruct_multicond_batch(self.cond, step)[1] if self.cond is not None else None
        uncond = prompt_parser.reconstruct_cond_batch(self.uncond, step) if self.uncond is not None else None
        return cond, uncond


def add_tags_to_batch(p, args: ELLAArgs) -> None:
    """before_process_batch: the CLIP text's tags in front of each of the batch's prompts, for the WebUI's parse.
    In front, so that nothing in the prompt (an unclosed '<') can run into them."""
    tags = args.clip_network_tags
    if tags:
        p.prompts = [tags + prompt for prompt in p.prompts]


def add_tags_to_hires(p, args: ELLAArgs) -> None:
    """process_batch: the CLIP text's tags joined to the hires prompts' parsed tags (the WebUI parsed those from
    its own copy of the hires prompts), in the order a parse of the tags in front of the prompt gives."""
    from modules import extra_networks

    tags = args.clip_network_tags
    parsed = getattr(p, "hr_extra_network_data", None)
    if not tags or not getattr(p, "enable_hr", False) or parsed is None:
        return
    _, merged = extra_networks.parse_prompt(tags)
    for name, params in parsed.items():
        merged.setdefault(name, []).extend(params)
    p.hr_extra_network_data = merged


def clip_text_conds(job, p, spec: PassSpec) -> Optional[ClipTextConds]:
    """The pass's ClipTextConds of an ELLAJob, made once per pass; None where no separate CLIP text applies."""
    if not any(job.args.clip_texts):
        return None
    conds = job.clip_texts.get(spec)
    if conds is None:
        conds = job.clip_texts[spec] = ClipTextConds.make(p, spec, job.args)
    return conds
