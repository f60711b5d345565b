"""ADetailer: its inpaint pass uses ELLA only when "ella" is in its script list; otherwise the image says so.

ADetailer runs the scripts' `process()` on `copy(p)` (the copy-of-p rule in `webui/job.py` keeps the
original's job); its inpaint pass runs only the scripts named in its "Script names to apply to ADetailer"
setting, and a pass without ELLA is recorded in the outer ELLA job's infotext.
"""

from __future__ import annotations

from typing import Any, Callable

from ..args import INFO_ADETAILER
from .base import Companion

ADETAILER_NOTE = (
    "ELLA: ADetailer's inpaint pass used CLIP, not ELLA. To use ELLA there, add 'ella' to Settings -> ADetailer -> "
    "'Script names to apply to ADetailer'."
)


class ADetailer(Companion):
    name = "ADetailer"

    def outside_job(self, p: Any, note: Callable[[str, Any, str], None]) -> None:
        if getattr(p, "_ad_inner", False):
            note(INFO_ADETAILER, "CLIP", ADETAILER_NOTE)
