"""Tiled Diffusion (MultiDiffusion): tiles work; Region Prompt Control is refused.

Region Prompt Control encodes each region's prompt with CLIP in its own code, so ELLA would not reach the
regions.
"""

from __future__ import annotations

from typing import Optional

from .base import Companion, JobView, find_script


class TiledDiffusion(Companion):
    name = "Tiled Diffusion"

    def check(self, job: JobView) -> Optional[str]:
        td = find_script(job.p, "Tiled Diffusion")
        delegate = getattr(td.instance, "delegate", None) if td is not None else None
        if delegate is None or not getattr(delegate, "enable_custom_bbox", False):
            return None
        return (
            "Tiled Diffusion's Region Prompt Control encodes each region's prompt with CLIP, so ELLA would not reach "
            "the regions. Turn off 'Enable Control' under Region Prompt Control (tiling alone works with ELLA), "
            "or disable ELLA."
        )
