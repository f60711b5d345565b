"""Per-job state on `p`, and failing loudly.

The WebUI logs and swallows exceptions raised by script hooks and callbacks and would go on to make plain
CLIP images. So an ELLA job that cannot run records its error, the next denoiser call raises `ELLAAbort`
(a BaseException, which the WebUI's `except Exception` handlers let through), and a guard installed on
`p.sample` turns it back into the `ELLAError`, which the WebUI shows in the UI and the API returns (HTTP
422 for bad input).

Copies of `p` (XYZ cells, ADetailer, Prompts from file) carry the original's state in their own
`__dict__`; a job belongs to exactly the `p` it was made for.
"""

from __future__ import annotations

import traceback
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import companions
from ..args import ELLAArgs, is_ella_info_key
from ..errors import ELLAError
from ..logs import log

if TYPE_CHECKING:
    from ..plan import JobPlan, PassSpec


JOB_ATTR = "_ella_job"


class ELLAAbort(BaseException):
    """Unwinds the sampler after an ELLA error; caught by the guard on `p.sample`.

    A BaseException because the WebUI wraps callbacks in `except Exception`, which would log the error and
    carry on with CLIP conditioning.
    """


@dataclass
class ELLAJob:
    """What ELLA knows about one processing job; lives on `p` as `p._ella_job`."""

    args: ELLAArgs
    owner: weakref.ref[Any]
    plan: Optional[JobPlan] = None
    error: Optional[ELLAError] = None
    clip_texts: dict[PassSpec, Any] = field(default_factory=dict)  # ClipTextConds per pass
    on_sample: Optional[Callable[[], None]] = None  # run by the guard when p.sample starts

    def fail(self, exc: BaseException) -> ELLAError:
        if self.error is None:
            if isinstance(exc, ELLAError):
                self.error = exc
            else:
                log.error(
                    "ELLA: unexpected error\n%s", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                )
                self.error = ELLAError(f"ELLA failed: {type(exc).__name__}: {exc}")
            owner = self.owner()
            if owner is not None:
                companions.job_failed(owner, str(self.error))
        return self.error


class SampleGuard:
    """Stands in for `p.sample` (an instance attribute, so only this job's `p` is affected). Other
    extensions' process-wide changes for the job are undone when sampling ends, however it ends."""

    def __init__(self, job: ELLAJob, original: Callable):
        self.job = job
        self.original = original

    def __call__(self, *args, **kwargs):
        if self.job.error is not None:
            raise self.job.error
        try:
            if self.job.on_sample is not None:
                try:
                    self.job.on_sample()
                except Exception as exc:
                    raise self.job.fail(exc) from None
            return self.original(*args, **kwargs)
        except ELLAAbort:
            raise self.job.error or ELLAError("ELLA stopped the job.") from None
        finally:
            companions.restore()


def attach(p, args: ELLAArgs) -> ELLAJob:
    job = ELLAJob(args=args, owner=weakref.ref(p))
    setattr(p, JOB_ATTR, job)
    p.sample = SampleGuard(job, p.sample)
    return job


def active_job(p) -> Optional[ELLAJob]:
    job = getattr(p, JOB_ATTR, None) if p is not None else None
    if not isinstance(job, ELLAJob) or job.owner() is not p:
        return None  # a copy of another job's p (XYZ, ADetailer) or nothing: not ours
    return job


def clear_job(p) -> None:
    """Remove ELLA's state and guard from `p` (also ones inherited by copying another job's p).

    A copy of another job's `p` carries that job in its own __dict__; dropping it there leaves the
    original's job as it is.
    """
    job = p.__dict__.pop(JOB_ATTR, None)
    sample = p.__dict__.get("sample")
    if isinstance(sample, SampleGuard):
        del p.__dict__["sample"]
    if isinstance(job, ELLAJob) and job.owner() is p:
        job.plan = None


def own_infotext(p) -> None:
    """Give `p` its own generation-parameter dict, without ELLA's entries.

    Copies of one `p` share its `extra_generation_params`: writing ELLA's entries into the shared dict
    would give them to every other copy (an XYZ cell without ELLA would say ELLA), and removing them from
    it would take them from the original.
    """
    params = getattr(p, "extra_generation_params", None) or {}
    p.extra_generation_params = {k: v for k, v in params.items() if not is_ella_info_key(k)}


def note(p, key: str, value: Any, message: str) -> None:
    """Record what ELLA could not do where the user looks: the image's infotext and the UI/API comments.

    Infotexts are written after sampling, so an entry made before or during sampling reaches the images of
    this job.
    """
    if key in p.extra_generation_params:
        return
    p.extra_generation_params[key] = value
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(message)
