"""The protocol every companion (another extension, or a WebUI feature, that meets ELLA's conditioning) follows.

The WebUI adapter calls each hook on every companion in `COMPANIONS`; a companion overrides the hooks it
needs. A companion reads `p` and the other extension's objects duck-typed: nothing fails when that
extension is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..args import ELLAArgs

if TYPE_CHECKING:  # the plan module loads with a job, not at WebUI start-up
    from ..plan import CallResult, DenoiserCall, JobPlan

# applied to ELLA's result for the call (see `Companion.adapt_call`)
Finish = Callable[["CallResult"], "CallResult"]


@dataclass
class JobView:
    """What a companion sees of an ELLA job."""

    p: Any  # the WebUI's processing object
    args: ELLAArgs
    plan: JobPlan
    backend: Any  # ella_ext.backends.Backend
    denoiser: Any = None  # at a denoiser call: the WebUI's CFG denoiser
    # note(key, value, message): record something on this job's images (infotext) and in the UI's comments
    note: Callable[[str, Any, str], None] = lambda key, value, message: None


class Companion:
    name = ""  # the extension or WebUI feature as users know it

    def before_sample(self, job: JobView) -> None:
        """When `p.sample` starts (once per batch; every pass's process_before_every_sampling runs inside it, the
        other extension's before or after ELLA's): process-wide changes the other extension's passes need, undone
        by `restore`."""

    def check(self, job: JobView) -> Optional[str]:
        """Before sampling, after every script's process() (their settings for this job are known): why this
        combination cannot work (naming the extension and the fix), or None."""
        return None

    def shape_plan(self, job: JobView) -> None:
        """Before each sampling pass: adapt `job.plan.shape` (per-region rows, transforms of ELLA's rows)."""

    def adapt_call(self, job: JobView, call: DenoiserCall) -> Optional[Finish]:
        """At each denoiser call of an ELLA job, before ELLA makes its conditioning: adapt the call (e.g. take
        off structure the extension put on the conditioning) and return what to do with ELLA's result, if
        anything. Finishes run in the reverse order of the companions."""
        return None

    def outside_job(self, p: Any, note: Callable[[str, Any, str], None]) -> None:
        """A denoiser call that ELLA does not condition while an ELLA job is open (e.g. another extension's
        inner pass); `note(key, value, message)` records something on that ELLA job's images."""

    def job_failed(self, p: Any, reason: str) -> None:
        """An ELLA job stopped with this reason (the message users see): carry it where another extension
        records the job's outcome, if the WebUI's own error display does not reach there."""

    def restore(self) -> None:
        """Undo any process-wide change made for a job. Called at every job's start, after each sampling and
        when a job fails, so it must be cheap and safe to call when nothing was changed."""


@dataclass(frozen=True)
class ScriptOnJob:
    """Another always-on script of this job, with its own argument slice."""

    title: str
    instance: Any
    args: tuple


def scripts_on_job(p: Any):
    runner = getattr(p, "scripts", None)
    script_args = tuple(getattr(p, "script_args", None) or ())
    for script in getattr(runner, "alwayson_scripts", None) or ():
        try:
            title = str(script.title())
        except Exception:
            continue
        start, stop = getattr(script, "args_from", None), getattr(script, "args_to", None)
        args = script_args[start:stop] if isinstance(start, int) and isinstance(stop, int) else ()
        yield ScriptOnJob(title, script, args)


def find_script(p: Any, title: str) -> Optional[ScriptOnJob]:
    return next((s for s in scripts_on_job(p) if s.title.lower() == title.lower()), None)


def field_of(obj: Any, name: str, default: Any = None) -> Any:
    """An argument of another extension, whether it keeps them in a dict or on an object."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)
