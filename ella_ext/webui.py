"""The WebUI backend adapter: the only library module that touches the WebUI's `modules`.

It translates WebUI objects (the processing object `p`, the cfg-denoiser params, settings) into
library calls, for AUTOMATIC1111 1.10, Forge and reForge. `modules` is imported inside functions
only, so importing this module costs nothing at start-up and works without a WebUI (tests pass
fake `modules`).

Failing loudly: the WebUI logs and swallows exceptions raised by script hooks and callbacks and
would go on to make plain CLIP images. So an ELLA job that cannot run records its error, the
next denoiser call raises `ELLAAbort` (a BaseException, which the WebUI's `except Exception`
handlers let through), and a guard installed on `p.sample` turns it back into the `ELLAError`,
which the WebUI shows in the UI and the API returns (HTTP 422 for bad input).
"""

from __future__ import annotations

import importlib.util
import logging
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import compat
from .args import (
    CONDITIONING_MODES,
    INFO_ADETAILER,
    INFO_EMPHASIS_IGNORED,
    INFO_TRUNCATED,
    LENGTH_MODES,
    ELLAArgs,
    is_ella_info_key,
)
from .discovery import KNOWN_ELLA, KNOWN_T5, ModelRoots, list_ella_models, list_t5_encoders
from .errors import ELLAError, UnsupportedModelError
from .plan import DenoiserCall, Interrupted, JobPlan, PassSpec
from .prompt_syntax import BuiltinPromptSyntax, PromptSyntax
from .timesteps import A1111, FORGE, REFORGE

log = logging.getLogger("ella")

JOB_ATTR = "_ella_job"
OVERRIDES_ATTR = "_ella_overrides"
SETTINGS_SECTION = ("ella", "ELLA")
RESIDENCY_LABELS = {"gpu": "Keep on GPU", "cpu": "Offload to CPU", "unload": "Unload after each job"}


class ELLAAbort(BaseException):
    """Unwinds the sampler after an ELLA error; caught by the guard on `p.sample`.

    A BaseException because the WebUI wraps callbacks in `except Exception`, which would log the
    error and carry on with CLIP conditioning.
    """


def detect_backend() -> str:
    if importlib.util.find_spec("ldm_patched") is not None:
        return REFORGE
    if importlib.util.find_spec("modules_forge") is not None:
        return FORGE
    return A1111


# --- memory -----------------------------------------------------------------------------------

def memory_hooks(backend: str):
    from .runtime import MemoryHooks

    import torch

    class WebUIMemory(MemoryHooks):
        def compute_device(self):
            from modules import devices

            return torch.device(devices.device)

        def tsc_dtype(self, device):
            from modules import devices

            # fp16 on CUDA as the authors run it, unless the user runs the WebUI in full precision.
            if device.type == "cuda" and getattr(devices, "dtype", torch.float16) != torch.float32:
                return torch.float16
            return torch.float32

        def released(self):
            from modules import devices

            devices.torch_gc()

        def force_offload(self):
            from modules import shared

            opts = shared.cmd_opts
            return bool(getattr(opts, "lowvram", False) or getattr(opts, "medvram", False))

    class ForgeMemory(WebUIMemory):
        def _mm(self):
            if backend == FORGE:
                from backend import memory_management
            else:
                from ldm_patched.modules import model_management as memory_management
            return memory_management

        def make_room(self, nbytes, device):
            if device.type != "cpu":
                self._mm().free_memory(int(nbytes * 1.2), device)

        def released(self):
            self._mm().soft_empty_cache()

        def force_offload(self):
            mm = self._mm()
            state = getattr(mm, "vram_state", None)
            return getattr(state, "name", "") in ("LOW_VRAM", "NO_VRAM")

    return ForgeMemory() if backend in (FORGE, REFORGE) else WebUIMemory()


def api_credentials() -> dict[str, str]:
    """The WebUI's --api-auth ("user:password,user2:password2"), which ELLA's routes honour like /sdapi/v1."""
    from modules import shared

    spec = getattr(shared.cmd_opts, "api_auth", None) or ""
    pairs = (item.split(":", 1) for item in spec.split(",") if ":" in item)
    return {user.strip(): password.strip() for user, password in pairs}


# --- progress text --------------------------------------------------------------------------------

class ProgressText:
    """ELLA's activity as the WebUI's progress text: `shared.state.textinfo`, which the UI shows before the
    progress bar's numbers and `/sdapi/v1/progress` returns (same in A1111, Forge and reForge).

    None puts back the text the WebUI had before ELLA's first line, so ELLA's words never outlive its work.
    """

    _UNSET = object()

    def __init__(self):
        self._before: Any = self._UNSET

    def __call__(self, text: Optional[str]) -> None:
        try:
            from modules import shared
        except ImportError:  # the library used outside a WebUI
            return
        state = getattr(shared, "state", None)
        if state is None:
            return
        if text is None:
            if self._before is not self._UNSET:
                state.textinfo, self._before = self._before, self._UNSET
            return
        if self._before is self._UNSET:
            self._before = getattr(state, "textinfo", None)
        state.textinfo = text


# --- callbacks ------------------------------------------------------------------------------------

def register_callback(category: str, callback: Callable, *, filename: str, name: Optional[str] = None) -> None:
    """`script_callbacks.on_<category>(callback)`, naming the calling file instead of finding it.

    The public `on_*` functions find the caller's file with `inspect.stack()`, which reads source
    context for every frame: about 80 ms a callback in a real WebUI start on 2 cores (four of them
    were 90% of ELLA's start-up). `add_callback` takes the file directly; its name also follows the
    extension's folder, which `metadata.ini`'s callback order refers to.
    """
    from modules import script_callbacks

    callbacks = getattr(script_callbacks, "callback_map", {}).get(f"callbacks_{category}")
    add = getattr(script_callbacks, "add_callback", None)
    if callbacks is not None and add is not None:
        try:
            add(callbacks, callback, name=name, category=category, filename=filename)
            return
        except TypeError:  # a WebUI whose add_callback takes no filename
            pass
    getattr(script_callbacks, f"on_{category}")(callback, name=name)


# --- settings ---------------------------------------------------------------------------------

def register_settings() -> None:
    """Settings tab, section "ELLA". Called from `on_ui_settings`."""
    import gradio as gr
    from modules import shared

    from .runtime import Settings

    default = Settings()  # the defaults live there, for the WebUI and for plain library use alike
    section = SETTINGS_SECTION
    options = {
        "ella_model_dirs": shared.OptionInfo(
            "", "Extra folders with ELLA models (one per line; models/ELLA is always searched)", gr.Textbox, {"lines": 2}, section=section
        ),
        "ella_t5_dirs": shared.OptionInfo(
            "", "Extra folders with T5 encoder folders (one per line; models/ELLA/t5 is always searched)", gr.Textbox, {"lines": 2}, section=section
        ),
        "ella_t5_precision": shared.OptionInfo(
            default.t5_precision, "T5 precision", gr.Radio, {"choices": ["auto", "fp16", "bf16", "fp32"]}, section=section
        ).info("auto = fp16 as the ELLA authors ran it; fp32 where the device cannot run fp16"),
        "ella_t5_residency": shared.OptionInfo(
            RESIDENCY_LABELS[default.t5_residency], "Where T5 waits between encodes", gr.Radio, {"choices": list(RESIDENCY_LABELS.values())}, section=section
        ).info("offloading keeps about 2.8 GB of VRAM free during sampling"),
        "ella_feature_cache_entries": shared.OptionInfo(
            default.cache_entries, "T5 feature cache: prompts kept", gr.Slider, {"minimum": 0, "maximum": 4096, "step": 16}, section=section
        ),
        "ella_feature_cache_mb": shared.OptionInfo(
            default.cache_mb, "T5 feature cache: size limit (MB, CPU memory)", gr.Slider, {"minimum": 0, "maximum": 8192, "step": 64}, section=section
        ),
        "ella_hub_download": shared.OptionInfo(
            default.hub_download, "Download the released ELLA model and T5 encoder from the Hugging Face hub when they are selected but missing", section=section
        ),
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)


def read_settings():
    from modules import shared

    from .runtime import Settings

    o, default = shared.opts, Settings()
    label_to_residency = {v: k for k, v in RESIDENCY_LABELS.items()}
    residency = getattr(o, "ella_t5_residency", RESIDENCY_LABELS[default.t5_residency])
    return Settings(
        t5_precision=getattr(o, "ella_t5_precision", default.t5_precision),
        t5_residency=label_to_residency.get(residency, residency if residency in RESIDENCY_LABELS else default.t5_residency),
        cache_entries=int(getattr(o, "ella_feature_cache_entries", default.cache_entries)),
        cache_mb=int(getattr(o, "ella_feature_cache_mb", default.cache_mb)),
        hub_download=bool(getattr(o, "ella_hub_download", default.hub_download)),
    )


def model_roots() -> ModelRoots:
    from modules import paths, shared

    ella_dir = getattr(shared.cmd_opts, "ella_dir", None)
    base = Path(ella_dir) if ella_dir else Path(paths.models_path) / "ELLA"
    extra_ella = _lines(getattr(shared.opts, "ella_model_dirs", ""))
    extra_t5 = _lines(getattr(shared.opts, "ella_t5_dirs", ""))
    return ModelRoots(ella=(base, *extra_ella), t5=(base / "t5", *extra_t5))


def _lines(text: str) -> list[Path]:
    return [Path(line.strip()) for line in str(text or "").replace(",", "\n").splitlines() if line.strip()]


# --- the WebUI's prompt parser ----------------------------------------------------------------

class WebUIPromptSyntax:
    """The WebUI's own prompt parser, so ELLA's text schedule is the one CLIP's conditioning uses."""

    def __init__(self):
        from modules import prompt_parser

        self._pp = prompt_parser

    def schedules(self, prompts, steps, hires_steps=None, use_old_scheduling=False):
        raw = self._pp.get_learned_conditioning_prompt_schedules(list(prompts), steps, hires_steps, use_old_scheduling)
        return [[(int(end), text) for end, text in s] for s in raw]

    def split_and(self, prompt):
        indexes, flat, _ = self._pp.get_multicond_prompt_list([prompt])
        return [(flat[i], float(w)) for i, w in indexes[0]]

    def parse_attention(self, text):
        return [(t, float(w)) for t, w in self._pp.parse_prompt_attention(text)]


def prompt_syntax() -> PromptSyntax:
    try:
        return WebUIPromptSyntax()
    except Exception:  # a WebUI fork without these helpers: the built-in parser has the same semantics
        log.warning("ELLA: the WebUI's prompt parser is not usable; using ELLA's own.", exc_info=True)
        return BuiltinPromptSyntax()


# --- ELLA + CLIP with a separate CLIP text -----------------------------------------------------

@dataclass
class ClipTextConds:
    """The WebUI's own CLIP conditioning of ELLA's separate CLIP texts, for one sampling pass."""

    cond: Any = None  # MulticondLearnedConditioning of the CLIP prompt, one per image
    uncond: Any = None  # ScheduledPromptConditioning lists of the CLIP negative, one per image

    @classmethod
    def make(cls, p, spec: PassSpec, args: ELLAArgs) -> "ClipTextConds":
        """Made the way the WebUI's setup_conds makes a plain job's conds (same functions, autocast,
        schedule), after extra networks are active, so LoRA tags of the main prompt act on it too."""
        from modules import devices, prompt_parser, shared

        prompt, negative = args.clip_texts
        images = len(spec.prompts)
        hires = spec.hires_steps is not None
        size = {"width": getattr(p, "hr_upscale_to_x", p.width) if hires else p.width,
                "height": getattr(p, "hr_upscale_to_y", p.height) if hires else p.height}
        conds = cls()
        with devices.autocast():
            if prompt:
                conds.cond = prompt_parser.get_multicond_learned_conditioning(
                    shared.sd_model, prompt_parser.SdConditioning([prompt] * images, **size),
                    spec.steps, spec.hires_steps, spec.use_old_scheduling)
            if negative:
                conds.uncond = prompt_parser.get_learned_conditioning(
                    shared.sd_model, prompt_parser.SdConditioning([negative] * images, is_negative_prompt=True, **size),
                    spec.steps, spec.hires_steps, spec.use_old_scheduling)
        return conds

    def at(self, step: int) -> tuple[Any, Any]:
        """Rows (one per image) at a denoiser step, as the WebUI's denoiser reconstructs its own."""
        from modules import prompt_parser

        cond = prompt_parser.reconstruct_multicond_batch(self.cond, step)[1] if self.cond is not None else None
        uncond = prompt_parser.reconstruct_cond_batch(self.uncond, step) if self.uncond is not None else None
        return cond, uncond


def clip_text_conds(job: "ELLAJob", p, spec: PassSpec) -> Optional[ClipTextConds]:
    if not any(job.args.clip_texts):
        return None
    conds = job.clip_texts.get(spec)
    if conds is None:
        conds = job.clip_texts[spec] = ClipTextConds.make(p, spec, job.args)
    return conds


# --- per-job state ----------------------------------------------------------------------------

@dataclass
class ELLAJob:
    """What ELLA knows about one processing job; lives on `p` as `p._ella_job`."""

    args: ELLAArgs
    owner: "weakref.ref[Any]"
    plan: Optional[JobPlan] = None
    error: Optional[ELLAError] = None
    guards: dict[str, Any] = field(default_factory=dict)
    clip_texts: dict[PassSpec, "ClipTextConds"] = field(default_factory=dict)

    def fail(self, exc: BaseException) -> ELLAError:
        if self.error is None:
            if isinstance(exc, ELLAError):
                self.error = exc
            else:
                log.error("ELLA: unexpected error\n%s", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                self.error = ELLAError(f"ELLA failed: {type(exc).__name__}: {exc}")
        return self.error


class _SampleGuard:
    """Stands in for `p.sample` (an instance attribute, so only this job's `p` is affected)."""

    def __init__(self, job: ELLAJob, original: Callable):
        self.job = job
        self.original = original

    def __call__(self, *args, **kwargs):
        if self.job.error is not None:
            raise self.job.error
        try:
            return self.original(*args, **kwargs)
        except ELLAAbort:
            compat.restore_regional_prompter()  # the job ends here, without postprocess
            raise self.job.error or ELLAError("ELLA stopped the job.") from None
        except BaseException:
            compat.restore_regional_prompter()
            raise


def active_job(p) -> Optional[ELLAJob]:
    job = getattr(p, JOB_ATTR, None) if p is not None else None
    if not isinstance(job, ELLAJob) or job.owner() is not p:
        return None  # a copy of another job's p (XYZ, ADetailer) or nothing: not ours
    return job


def clear_job(p) -> None:
    """Remove ELLA's state and guards from `p` (also ones inherited by copying another job's p).

    A copy of another job's `p` (XYZ cells, ADetailer, Prompts from file) carries that job in its
    own __dict__; dropping it there leaves the original's job as it is.
    """
    job = p.__dict__.pop(JOB_ATTR, None)
    sample = p.__dict__.get("sample")
    if isinstance(sample, _SampleGuard):
        del p.__dict__["sample"]
    if isinstance(job, ELLAJob) and job.owner() is p:
        job.plan = None


def own_infotext(p) -> None:
    """Give `p` its own generation-parameter dict, without ELLA's entries.

    Copies of one `p` share its `extra_generation_params`: writing ELLA's entries into the shared
    dict would give them to every other copy (an XYZ cell without ELLA would say ELLA), and
    removing them from it would take them from the original.
    """
    params = getattr(p, "extra_generation_params", None) or {}
    p.extra_generation_params = {k: v for k, v in params.items() if not is_ella_info_key(k)}


# --- the extension ----------------------------------------------------------------------------

class ELLAExtension:
    """The WebUI-facing logic; `scripts/ella.py` forwards its hooks here."""

    def __init__(self, runtime=None, backend: Optional[str] = None, syntax: Optional[PromptSyntax] = None,
                 roots: Optional[Callable[[], ModelRoots]] = None):
        from .downloads import hub_download
        from .model_setup import ModelSetup
        from .runtime import ELLARuntime

        self.backend = backend or detect_backend()
        self.runtime = runtime or ELLARuntime(hooks=memory_hooks(self.backend), hub_download=hub_download,
                                              report=ProgressText())
        self._syntax = syntax
        self._roots = roots or model_roots
        self.models = ModelSetup(self.roots)  # the first-run row and the /ella/v1 API
        self._open_jobs: list[weakref.ref] = []  # ELLA jobs between their first sampling and postprocess

    @property
    def syntax(self) -> PromptSyntax:
        if self._syntax is None:
            self._syntax = prompt_syntax()
        return self._syntax

    def roots(self) -> ModelRoots:
        return self._roots()

    # --- UI helpers ---

    def model_choices(self) -> list[str]:
        names = list_ella_models(self.roots())
        if self.runtime.settings.hub_download and KNOWN_ELLA not in names:
            names.append(KNOWN_ELLA)
        return names

    def t5_choices(self) -> list[str]:
        names = list_t5_encoders(self.roots())
        if self.runtime.settings.hub_download and KNOWN_T5 not in names:
            names.append(KNOWN_T5)
        return names

    def installed(self) -> dict[str, str]:
        """The first ELLA model and T5 encoder found: the defaults where a job names none."""
        models, encoders = self.model_choices(), self.t5_choices()
        return {"model": models[0] if models else "", "t5": encoders[0] if encoders else ""}

    def refresh_settings(self) -> None:
        try:
            self.runtime.configure(read_settings())
        except ELLAError as exc:
            log.error("%s", exc)

    def register_api(self, _demo, app) -> None:
        """app_started: ELLA's /ella/v1 routes (models, download, check) on the WebUI's FastAPI app."""
        from .api import register_routes

        register_routes(app, self.models, credentials=api_credentials())

    # --- lifecycle ---

    def process(self, p, script_args: Sequence[Any]) -> None:
        compat.restore_regional_prompter()  # a job ELLA set RP up for may have ended without postprocess
        clear_job(p)
        own_infotext(p)
        try:
            overrides = dict(getattr(p, OVERRIDES_ATTR, None) or {})  # set by an XYZ plot axis for this cell
            args = ELLAArgs.from_script_args(script_args, enabled=overrides.pop("enabled", None), installed=self.installed)
            if overrides and args.enabled:
                args = args.with_(**overrides)
        except ELLAError as exc:
            job = self._attach(p, ELLAArgs())
            job.fail(exc)
            return
        if not args.enabled:
            return
        job = self._attach(p, args)
        try:
            self.refresh_settings()
            check_model_family(p.sd_model)
            ella_path, t5_path = self.runtime.resolve(args, self.roots())
            from .t5 import inspect_t5_folder

            inspect_t5_folder(t5_path)  # fail before sampling, not at the first encode
            tsc = self.runtime.tsc(ella_path)
            encoder = self.runtime.prompt_encoder(args, t5_path, self.syntax)
            job.plan = JobPlan(
                args,
                tsc,
                encoder,
                self.syntax,
                output_cache_bytes=self.runtime.settings.tsc_output_cache_mb * 2**20,
                interrupted=_interrupted,
                after_encode=self.runtime.park_text_encoder,
                activity=self.runtime.activity,
            )
            p.extra_generation_params.update(args.infotext(self.runtime.model_hash(ella_path)))
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            job.fail(exc)

    def _attach(self, p, args: ELLAArgs) -> ELLAJob:
        job = ELLAJob(args=args, owner=weakref.ref(p))
        setattr(p, JOB_ATTR, job)
        p.sample = _SampleGuard(job, p.sample)
        return job

    def before_sampling(self, p) -> None:
        """process_before_every_sampling: check the other extensions, encode this pass's prompts."""
        job = active_job(p)
        if job is None or job.error is not None or job.plan is None:
            return
        try:
            check_model_family(p.sd_model)
            compat.check_companions(p, job.args)  # every script's process() has run: their settings are known
            job.plan.cond_transform = compat.prompt_travel(p)
            job.plan.regions = compat.regional_prompter_layout(p, job.plan.tsc.config.num_latents)
            if job.plan.cond_transform is not None:
                log.info("ELLA: AnimateDiff prompt travel: ELLA's outputs are blended between the keyframes at every step")
            spec = self.pass_spec(p)
            job.plan.prepare(spec)
            clip_text_conds(job, p, spec)
            if not any(ref() is job for ref in self._open_jobs):
                self._open_jobs.append(weakref.ref(job))
            if job.plan.truncated:
                note(p, INFO_TRUNCATED, True,
                     "ELLA: a prompt was longer than 128 T5 tokens (ELLA's training length) and was truncated; "
                     "set 'Prompts over 128 T5 tokens' to Keep to pass it whole.")
            reason = job.plan.emphasis_ignored
            if reason:
                note(p, INFO_EMPHASIS_IGNORED, "no fast T5 tokenizer", f"ELLA: {reason}")
        except Interrupted:
            return  # the sampler sees the interrupt itself and stops before the first step
        except Exception as exc:
            compat.restore_regional_prompter()
            job.fail(exc)

    def cfg_denoiser(self, params) -> None:
        """on_cfg_denoiser: replace cond/uncond for ELLA jobs; costs one getattr for other jobs."""
        denoiser = params.denoiser
        p = getattr(denoiser, "p", None)
        job = active_job(p)
        if job is None:
            if self._open_jobs and compat.is_adetailer_pass(p):
                self._adetailer_pass_without_ella()
            return
        if job.error is not None:
            raise ELLAAbort()
        try:
            if job.plan is None:
                raise ELLAError("ELLA was not set up for this job.")
            spec = self.pass_spec(p)
            plan = job.plan.prepare(spec)
            compat.check_callback_order(p, denoiser, self.backend)
            if self.backend == A1111:
                from modules import shared

                compat.split_cond_uncond_for_animatediff(p, denoiser, shared.opts)
            from .timesteps import unet_timesteps

            t = unet_timesteps(self.backend, denoiser, params.sigma, getattr(p, "sd_model", None))
            step = int(denoiser.step)
            clip = clip_text_conds(job, p, spec)
            clip_cond, clip_uncond = clip.at(step) if clip is not None else (None, None)
            call = DenoiserCall(
                step=step,
                total_steps=int(getattr(denoiser, "total_steps", None) or params.total_sampling_steps or 1),
                timesteps=t,
                text_cond=params.text_cond,
                text_uncond=params.text_uncond,
                clip_cond=clip_cond,
                clip_uncond=clip_uncond,
            )
            cond, uncond = job.plan.apply(plan, call)
            compat.suspend_padding(denoiser, replaced=cond is not call.text_cond)
            params.text_cond, params.text_uncond = cond, uncond
        except Exception as exc:
            job.fail(exc)
            raise ELLAAbort() from None

    def _adetailer_pass_without_ella(self) -> None:
        """ADetailer runs its inpaint pass inside an ELLA job without ELLA: say so on that job's images."""
        outer = next((j for j in (ref() for ref in reversed(self._open_jobs)) if j is not None and j.error is None), None)
        p = outer.owner() if outer is not None else None
        if p is not None and INFO_ADETAILER not in p.extra_generation_params:
            log.warning("%s", compat.ADETAILER_NOTE)
            note(p, INFO_ADETAILER, "CLIP", compat.ADETAILER_NOTE)

    def postprocess(self, p) -> None:
        job = active_job(p)
        if job is None:
            return
        if job.plan is not None:
            s = job.plan.stats
            log.info(
                "ELLA: %d prompt texts encoded, %d TSC calls for %d rows (%d rows reused), %d steps ELLA, %d steps CLIP",
                s.texts_encoded, s.tsc_calls, s.tsc_rows, s.reused_rows, s.steps_ella, s.steps_clip,
            )
        self.end_job(p)

    def end_job(self, p) -> None:
        job = active_job(p)
        self._open_jobs[:] = [ref for ref in self._open_jobs if ref() is not None and ref() is not job]
        compat.restore_regional_prompter()
        clear_job(p)
        self.runtime.end_job()

    # --- WebUI objects -> library data ---

    def pass_spec(self, p) -> PassSpec:
        from modules import shared

        old = bool(getattr(shared.opts, "use_old_scheduling", False))
        if getattr(p, "is_hr_pass", False):
            from modules import sd_samplers

            steps = p.hr_second_pass_steps or p.steps
            config = sd_samplers.find_sampler_config(p.hr_sampler_name or p.sampler_name)
            hires_total = config.total_steps(steps) if config else steps
            return PassSpec(
                prompts=tuple(p.hr_prompts),
                negative_prompts=tuple(p.hr_negative_prompts),
                steps=int(p.firstpass_steps),
                hires_steps=int(hires_total),
                use_old_scheduling=old,
                name="hires pass",
            )
        steps = getattr(p, "firstpass_steps", None) or p.steps
        return PassSpec(
            prompts=tuple(p.prompts),
            negative_prompts=tuple(p.negative_prompts),
            steps=int(steps),
            use_old_scheduling=old,
        )


def note(p, key: str, value: Any, message: str) -> None:
    """Record what ELLA could not do where the user looks: the image's infotext and the UI/API comments.

    Infotexts are written after sampling, so an entry made before or during sampling reaches the
    images of this job.
    """
    if key in p.extra_generation_params:
        return
    p.extra_generation_params[key] = value
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(message)


def _interrupted() -> bool:
    from modules import shared

    st = shared.state
    return bool(st.interrupted or st.skipped or getattr(st, "stopping_generation", False))


def check_model_family(sd_model) -> None:
    """Only SD1.x models take ELLA's 64x768 conditioning; refuse others by name before sampling."""
    flags = {name: getattr(sd_model, name, None) for name in ("is_sd1", "is_sd2", "is_sdxl", "is_sd3", "is_ssd")}
    other = [name[3:].upper() for name in ("is_sdxl", "is_sd2", "is_sd3", "is_ssd") if flags[name]]
    if other or flags["is_sd1"] is False:
        info = getattr(sd_model, "sd_checkpoint_info", None)
        title = getattr(info, "title", None) or getattr(info, "name", None) or type(sd_model).__name__
        family = other[0] if other else "not SD1.x"
        raise UnsupportedModelError(
            f"ELLA works only with SD1.x checkpoints (its TSC outputs 768-wide tokens), but the loaded model "
            f"'{title}' is {family}. Load an SD1.5-family checkpoint or disable ELLA."
        )


# --- XYZ plot ---------------------------------------------------------------------------------

XYZ_AXES = (
    # (label, type, field, choices)
    ("ELLA: on/off", str, "enabled", ["On", "Off"]),
    ("ELLA: token length", str, "length", list(LENGTH_MODES.values())),
    ("ELLA: conditioning", str, "mode", list(CONDITIONING_MODES.values())),
    ("ELLA: start", float, "start", None),
    ("ELLA: end", float, "end", None),
)


def xyz_override(field_name: str):
    """An XYZ `apply`: record the cell's value on (the copied) p; `process` applies it to the args."""

    def apply(p, value, values):
        if field_name == "enabled":
            value = str(value).strip().lower() in ("on", "true", "1", "yes")
        # a new dict per cell: XYZ shallow-copies p, so mutating a shared dict would leak across cells
        setattr(p, OVERRIDES_ATTR, {**(getattr(p, OVERRIDES_ATTR, None) or {}), field_name: value})

    return apply


def register_xyz_axes() -> bool:
    """Add ELLA's axes to the built-in XYZ plot script (call from on_before_ui). False if it is absent."""
    from modules import scripts

    xyz = next(
        (d.module for d in scripts.scripts_data if d.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid")),
        None,
    )
    if xyz is None:
        return False
    have = {getattr(o, "label", None) for o in xyz.axis_options}
    for label, kind, field_name, choices in XYZ_AXES:
        if label in have:
            continue
        xyz.axis_options.append(
            xyz.AxisOption(label, kind, xyz_override(field_name), choices=(lambda c=choices: c) if choices else None)
        )
    return True
