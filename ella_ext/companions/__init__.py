"""What ELLA does about each other extension (and WebUI feature) that meets its conditioning.

One module per extension, each a `Companion` (see `base.py` for the protocol); the WebUI adapter runs the
hooks of every entry of `COMPANIONS`. Supporting another extension is one module here, its entry below,
its fake in tests/fake_extensions.py and its tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import IncompatibleExtensionError
from ..logs import log
from .adetailer import ADetailer
from .agent_scheduler import AgentScheduler
from .animatediff import AnimateDiff
from .base import Companion, Finish, JobView
from .controlnet import ControlNetMarkers
from .cutoff import Cutoff
from .forge_couple import ForgeCouple
from .negpip import NegPiP
from .padding import PaddingOption
from .prompt_fusion import PromptFusion
from .regional_prompter import RegionalPrompter
from .tensorrt import TensorRT
from .tiled_diffusion import TiledDiffusion

if TYPE_CHECKING:  # the plan module loads with a job, not at WebUI start-up
    from ..plan import CallResult, DenoiserCall

# the order of adapt_call (finishes run in reverse): ControlNet's markers come off first and go back on last
COMPANIONS: tuple[Companion, ...] = (
    TensorRT(),  # first: its finish runs last and sees the lengths the U-Net gets
    ControlNetMarkers(),
    PaddingOption(),
    RegionalPrompter(),
    ForgeCouple(),
    TiledDiffusion(),
    AnimateDiff(),
    ADetailer(),
    Cutoff(),
    NegPiP(),
    AgentScheduler(),
    PromptFusion(),
)


def before_sample(job: JobView) -> None:
    for companion in COMPANIONS:
        companion.before_sample(job)


def check(job: JobView) -> None:
    """Refuse, before sampling, a combination with another extension that cannot work."""
    for companion in COMPANIONS:
        problem = companion.check(job)
        if problem:
            raise IncompatibleExtensionError(problem)


def shape_plan(job: JobView) -> None:
    for companion in COMPANIONS:
        companion.shape_plan(job)


def adapt_call(job: JobView, call: DenoiserCall) -> list[Finish]:
    finishes = []
    for companion in COMPANIONS:
        finish = companion.adapt_call(job, call)
        if finish is not None:
            finishes.append(finish)
    return finishes


def finish_call(finishes: list[Finish], result: CallResult) -> CallResult:
    for finish in reversed(finishes):
        result = finish(result)
    return result


def outside_job(p: Any, note: Callable[[str, Any, str], None]) -> None:
    for companion in COMPANIONS:
        companion.outside_job(p, note)


def job_failed(p: Any, reason: str) -> None:
    for companion in COMPANIONS:
        try:
            companion.job_failed(p, reason)
        except Exception as exc:  # reporting a failure must not hide it
            log.warning("ELLA: could not pass the job's error to %s: %s", companion.name, exc)


def restore() -> None:
    for companion in COMPANIONS:
        companion.restore()


__all__ = [
    "COMPANIONS",
    "Companion",
    "JobView",
    "adapt_call",
    "before_sample",
    "check",
    "finish_call",
    "job_failed",
    "outside_job",
    "restore",
    "shape_plan",
]
