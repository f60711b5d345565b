"""Regional Prompter: ELLA per region in its Attention mode; Latent mode as it is; Prompt mode refused.

Attention mode (Matrix, Mask) cuts the context into units of 77 tokens (one CLIP chunk), region k taking
the units its CLIP text fills (its `pt`/`nt` spans). ELLA encodes each region's text on its own (T5 and
TSC), fills each of the region's units with that region's 64 tokens, and has RP cut units of 64 tokens
for the job. Every region's cross-attention then sees exactly ELLA's tokens for its text (a region
spanning two units sees them twice, which leaves softmax attention unchanged); no padding token is
needed. It needs ELLA only with the negative through ELLA. Prompt mode finds regions through the CLIP
token positions of words, which ELLA's tokens do not have. Latent mode turns regions into AND sub-prompts,
which ELLA conditions row by row.
"""

from __future__ import annotations

from typing import Any, Optional

from ..args import Conditioning, Negative
from .base import Companion, JobView, find_script


def _active_instance(p: Any) -> Optional[Any]:
    rp = find_script(p, "Regional Prompter")
    if rp is None or not getattr(rp.instance, "active", False):
        return None  # its process() sets active/mode/calc/pt/nt for this job
    return rp.instance


def _attention_globals(rp: Any) -> Optional[dict]:
    """The namespace of RP's attention module, whose TOKENSCON its hooked cross-attention reads."""
    process = getattr(type(rp), "process", None)
    hook = getattr(process, "__globals__", {}).get("hook_forwards")
    namespace = getattr(hook, "__globals__", None)
    return namespace if isinstance(namespace, dict) and isinstance(namespace.get("TOKENSCON"), int) else None


def _attention_mode(rp: Any) -> bool:
    return "Att" in str(getattr(rp, "calc", ""))


class RegionalPrompter(Companion):
    name = "Regional Prompter"

    def __init__(self):
        self._patched: dict[int, tuple[dict, int]] = {}  # id(namespace) -> (namespace, RP's own unit)

    def check(self, job: JobView) -> Optional[str]:
        rp = _active_instance(job.p)
        if rp is None:
            return None
        if "Pro" in str(getattr(rp, "mode", "")):
            return (
                "Regional Prompter's Prompt mode finds each region through the CLIP token positions of its words, which "
                "ELLA's tokens do not have. Use a Matrix or Mask region (Attention or Latent), or disable ELLA."
            )
        if not _attention_mode(rp):
            return None
        if job.args.mode != Conditioning.ELLA or job.args.negative != Negative.ELLA:
            return (
                "Regional Prompter's Attention mode with ELLA needs ELLA's Conditioning 'ELLA only' and 'Negative prompt "
                "through' ELLA (each region then gets its own ELLA tokens). Change those, or set Regional Prompter's "
                "Generation mode to 'Latent'."
            )
        if _attention_globals(rp) is None or not isinstance(getattr(rp, "pt", None), list):
            return (
                "This version of Regional Prompter does not expose how its Attention mode cuts the conditioning, so ELLA "
                "cannot give each region its own tokens. Update Regional Prompter, or set its Generation mode to 'Latent'."
            )
        return None

    def shape_plan(self, job: JobView) -> None:
        """The region layout for a job in RP's Attention mode, with RP cutting units of ELLA's token count until
        `restore`. `check` has refused the settings this cannot serve."""
        from ..plan import RegionLayout

        rp = _active_instance(job.p)
        if rp is None or not _attention_mode(rp):
            return
        namespace = _attention_globals(rp)
        if namespace is None:
            return
        self._patched.setdefault(id(namespace), (namespace, namespace["TOKENSCON"]))
        namespace["TOKENSCON"] = job.plan.tsc.config.num_latents

        def units(spans):
            return tuple(int(end) - int(start) for start, end in spans)

        job.plan.shape.regions = RegionLayout(
            cond_units=units(rp.pt), uncond_units=units(getattr(rp, "nt", None) or [[0, 1]])
        )

    def restore(self) -> None:
        while self._patched:
            _, (namespace, unit) = self._patched.popitem()
            namespace["TOKENSCON"] = unit
