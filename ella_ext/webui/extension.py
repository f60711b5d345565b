"""`ELLAExtension`: the script's lifecycle in the WebUI; `scripts/ella.py` forwards its hooks here.

process()                      args from the UI/API/XYZ, models found and loaded, the job's plan, infotext
before_process_batch,          the CLIP text's LoRA tags join the prompt's, for the WebUI's activation
  process_batch
process_before_every_sampling  companions check and shape the plan; this pass's prompts encoded
on_cfg_denoiser                at every denoiser call: ELLA's conditioning for the U-Net's own timestep
postprocess                    the job's state cleared, T5 parked as the settings say
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .. import backends, companions
from ..args import INFO_EMPHASIS_IGNORED, INFO_ORIGINAL_PROMPT, INFO_TRUNCATED, ELLAArgs
from ..discovery import KNOWN_ELLA, KNOWN_T5, ModelRoots, list_ella_models, list_t5_encoders
from ..errors import ELLAError, UnsupportedModelError
from ..logs import log, show_on_console
from ..prompt_syntax import PromptSyntax
from .clip_text import add_tags_to_batch, add_tags_to_hires, clip_text_conds
from .job import ELLAAbort, active_job, attach, clear_job, note, own_infotext
from .progress import ProgressText, interrupted
from .prompt_parser import prompt_syntax
from .settings import api_credentials, model_roots, read_settings
from .xyz import OVERRIDES_ATTR

if TYPE_CHECKING:  # imported where used: the script creates the extension at WebUI start-up, before any job
    from ..caption_upsampling import UpsamplerConfig, UpsampleResult
    from ..plan import PassSpec

EXPANSIONS_KEPT = 64


class ELLAExtension:
    def __init__(
        self,
        runtime=None,
        backend: Optional[backends.Backend] = None,
        syntax: Optional[PromptSyntax] = None,
        roots: Optional[Callable[[], ModelRoots]] = None,
    ):
        show_on_console()  # the WebUIs' default logging shows no INFO lines; ELLA's progress lines are INFO
        self.backend = backend or backends.detect()
        self._runtime = runtime
        self._syntax = syntax
        self._roots = roots or model_roots
        self._model_setup = None
        self._token_counter = None
        self._open_jobs: list[weakref.ref] = []  # ELLA jobs between their first sampling and postprocess
        # (prompt, negative, config) -> UpsampleResult of the `expand` argument: the cells of an XYZ plot, a
        # batch count and the next Generate use the same expansion of the same prompt
        self._expansions: dict[tuple, UpsampleResult] = {}

    # made at first use, not at WebUI start-up: each imports the modules a job needs (T5, connector, hub)

    @property
    def runtime(self):
        if self._runtime is None:
            from ..downloads import hub_download
            from ..runtime import ELLARuntime

            self._runtime = ELLARuntime(
                hooks=self.backend.memory_hooks(), hub_download=hub_download, report=ProgressText()
            )
        return self._runtime

    @runtime.setter
    def runtime(self, runtime) -> None:
        self._runtime = runtime

    @property
    def model_setup(self):
        """The first-run row and the /ella/v1 API."""
        if self._model_setup is None:
            from ..model_setup import ModelSetup

            self._model_setup = ModelSetup(self.roots)
        return self._model_setup

    @model_setup.setter
    def model_setup(self, setup) -> None:
        self._model_setup = setup

    @property
    def token_counter(self):
        if self._token_counter is None:
            from ..token_count import TokenCounter

            self._token_counter = TokenCounter(self.roots, lambda: self.syntax, lambda: self.default_models()["t5"])
        return self._token_counter

    def unload_all(self) -> None:
        """script_unloaded: free ELLA's models (nothing to do when no job ran)."""
        if self._runtime is not None:
            self._runtime.unload_all()

    @property
    def syntax(self) -> PromptSyntax:
        if self._syntax is None:
            self._syntax = prompt_syntax()
        return self._syntax

    def roots(self) -> ModelRoots:
        return self._roots()

    # --- models offered in the UI ---

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

    def default_models(self) -> dict[str, str]:
        """The first ELLA model and T5 encoder offered: what a job uses where its args name none."""
        models, encoders = self.model_choices(), self.t5_choices()
        return {"model": models[0] if models else "", "t5": encoders[0] if encoders else ""}

    def refresh_settings(self) -> None:
        try:
            self.runtime.configure(read_settings())
        except ELLAError as exc:
            log.error("%s", exc)

    def register_api(self, _demo, app) -> None:
        """app_started: ELLA's /ella/v1 routes (models, download, check, tokens, expand) on the WebUI's FastAPI app."""
        from ..api import register_routes

        register_routes(
            app, self.model_setup, credentials=api_credentials(), tokens=self.token_counter, expand=self.expand
        )

    # --- caption upsampling ---

    def upsampler(self) -> UpsamplerConfig:
        """The LLM endpoint of the settings as they are now (read at every use: no restart after a change)."""
        self.refresh_settings()
        from ..caption_upsampling import config_from_settings

        return config_from_settings(self.runtime.settings)

    def expand(self, prompt: str, *, negative: str = "", force: bool = False) -> UpsampleResult:
        """The prompt rewritten by the settings' LLM (the accordion's button, the API, the `expand` argument)."""
        from ..caption_upsampling import expand_prompt

        return expand_prompt(prompt, self.upsampler(), negative=negative, force=force)

    def expand_job_prompts(self, p) -> None:
        """The `expand` argument: every distinct prompt of the job (and its hires prompts) rewritten before the
        batches are cut from them, so T5, CLIP and the infotext all see the expanded text, as if the user had
        pressed the button. The originals go to the infotext. An LLM failure raises: the job stops."""
        from ..caption_upsampling import expand_prompt

        config = self.upsampler()
        negative = (getattr(p, "all_negative_prompts", None) or [""])[0]
        texts = list(dict.fromkeys([*p.all_prompts, *(getattr(p, "all_hr_prompts", None) or [])]))
        results: dict[str, UpsampleResult] = {}
        for index, text in enumerate(texts):
            key = (text, negative, config)
            if key not in self._expansions:
                with self.runtime.activity(
                    f"ELLA: expanding the prompt ({index + 1}/{len(texts)})"
                    if len(texts) > 1
                    else "ELLA: expanding the prompt"
                ):
                    self._expansions[key] = expand_prompt(text, config, negative=negative)
                while len(self._expansions) > EXPANSIONS_KEPT:
                    self._expansions.pop(next(iter(self._expansions)))
            results[text] = self._expansions[key]
        for result in dict.fromkeys(results.values()):
            for notice in result.notices:
                log.info("ELLA caption upsampling: %s", notice)
        originals = [results[text] for text in p.all_prompts]
        if not any(result.changed for result in originals):
            return
        p.all_prompts = [result.prompt for result in originals]
        if getattr(p, "all_hr_prompts", None):
            p.all_hr_prompts = [results[text].prompt for text in p.all_hr_prompts]
        if getattr(p, "main_prompt", None) in results:  # A1111 1.10+: the grid's and params.txt's prompt
            p.main_prompt = results[p.main_prompt].prompt
        shown = [result.original for result in originals]
        p.extra_generation_params[INFO_ORIGINAL_PROMPT] = shown[0] if len(set(shown)) == 1 else shown

    # --- lifecycle ---

    def process(self, p, script_args: Sequence[Any]) -> None:
        from ..plan import JobPlan

        companions.restore()  # a job that changed another extension for ELLA may have ended without postprocess
        clear_job(p)
        own_infotext(p)
        try:
            overrides = dict(getattr(p, OVERRIDES_ATTR, None) or {})  # set by an XYZ plot axis for this cell
            args = ELLAArgs.from_script_args(
                script_args, enabled=overrides.pop("enabled", None), installed=self.default_models
            )
            if overrides and args.enabled:
                args = args.with_(**overrides)
        except ELLAError as exc:
            attach(p, ELLAArgs()).fail(exc)
            return
        if not args.enabled:
            return
        job = attach(p, args)
        try:
            self.refresh_settings()
            check_model_family(p.sd_model)
            ella_path, t5_path = self.runtime.locate_or_download(args, self.roots())
            from ..t5 import inspect_t5_folder

            inspect_t5_folder(t5_path)  # fail before sampling, not at the first encode
            if args.expand:  # after the cheap checks: a job that cannot run asks the LLM nothing
                self.expand_job_prompts(p)
            tsc = self.runtime.tsc(ella_path)
            encoder = self.runtime.prompt_encoder(args, t5_path, self.syntax)
            job.plan = JobPlan(
                args,
                tsc,
                encoder,
                self.syntax,
                output_cache_bytes=self.runtime.settings.tsc_output_cache_mb * 2**20,
                interrupted=interrupted,
                after_encode=self.runtime.park_text_encoder,
                activity=self.runtime.activity,
            )
            p.extra_generation_params.update(args.infotext(self.runtime.model_hash(ella_path)))
            job.on_sample = functools.partial(self._sample_starts, job)
        except Exception as exc:
            job.fail(exc)

    def _sample_starts(self, job) -> None:
        p = job.owner()
        if p is not None and job.plan is not None and job.error is None:
            companions.before_sample(self._view(p, job))

    def _view(self, p, job, denoiser=None) -> companions.JobView:
        return companions.JobView(p, job.args, job.plan, self.backend, denoiser, functools.partial(note, p))

    def before_process_batch(self, p) -> None:
        """before_process_batch: the CLIP text's LoRA tags join the batch's prompts, for the WebUI to activate."""
        job = active_job(p)
        if job is not None and job.error is None:
            add_tags_to_batch(p, job.args)

    def process_batch(self, p) -> None:
        """process_batch: the CLIP text's LoRA tags join the hires pass's tags."""
        job = active_job(p)
        if job is not None and job.error is None:
            add_tags_to_hires(p, job.args)

    def before_sampling(self, p) -> None:
        """process_before_every_sampling: the companions check the job and shape its plan; this pass's prompts
        are encoded."""
        from ..plan import Interrupted, PlanShape

        job = active_job(p)
        if job is None or job.error is not None or job.plan is None:
            return
        try:
            check_model_family(p.sd_model)
            view = self._view(p, job)
            companions.check(view)  # every script's process() has run: their settings are known
            job.plan.shape = PlanShape()
            companions.shape_plan(view)
            spec = self.pass_spec(p)
            clip_text_conds(job, p, spec)  # before prepare(): its sub-prompt split must be the pass's last one
            job.plan.prepare(spec)
            if not any(ref() is job for ref in self._open_jobs):
                self._open_jobs.append(weakref.ref(job))
            if job.plan.truncated:
                note(
                    p,
                    INFO_TRUNCATED,
                    True,
                    "ELLA: a prompt was longer than 128 T5 tokens (ELLA's training length) and was truncated; "
                    "set 'Prompts over 128 T5 tokens' to Keep to pass it whole.",
                )
            reason = job.plan.emphasis_ignored
            if reason:
                note(p, INFO_EMPHASIS_IGNORED, "no fast T5 tokenizer", f"ELLA: {reason}")
        except Interrupted:
            return  # the sampler sees the interrupt itself and stops before the first step
        except Exception as exc:
            companions.restore()
            job.fail(exc)

    def cfg_denoiser(self, params) -> None:
        """on_cfg_denoiser: replace cond/uncond for ELLA jobs; costs one getattr for other jobs."""
        denoiser = params.denoiser
        p = getattr(denoiser, "p", None)
        job = active_job(p)
        if job is None:
            if self._open_jobs:
                companions.outside_job(p, self._note_on_open_job)
            return
        if job.error is not None:
            raise ELLAAbort()
        from ..plan import DenoiserCall  # the module is loaded once a job has its plan: this is a lookup

        try:
            if job.plan is None:
                raise ELLAError("ELLA was not set up for this job.")
            spec = self.pass_spec(p)
            plan = job.plan.prepare(spec)
            step = int(denoiser.step)
            clip = clip_text_conds(job, p, spec)
            clip_cond, clip_uncond = clip.at(step) if clip is not None else (None, None)
            call = DenoiserCall(
                step=step,
                total_steps=int(getattr(denoiser, "total_steps", None) or params.total_sampling_steps or 1),
                timesteps=self.backend.unet_timesteps(denoiser, params.sigma, getattr(p, "sd_model", None)),
                text_cond=params.text_cond,
                text_uncond=params.text_uncond,
                clip_cond=clip_cond,
                clip_uncond=clip_uncond,
            )
            view = self._view(p, job, denoiser)
            finishes = companions.adapt_call(view, call)
            result = companions.finish_call(finishes, job.plan.apply(plan, call))
            params.text_cond, params.text_uncond = result.cond, result.uncond
        except Exception as exc:
            job.fail(exc)
            raise ELLAAbort() from None

    def _note_on_open_job(self, key: str, value: Any, message: str) -> None:
        """Another extension's pass ran inside an ELLA job without ELLA: say so on that job's images."""
        outer = next(
            (j for j in (ref() for ref in reversed(self._open_jobs)) if j is not None and j.error is None), None
        )
        p = outer.owner() if outer is not None else None
        if p is not None and key not in p.extra_generation_params:
            log.warning("%s", message)
            note(p, key, value, message)

    def postprocess(self, p) -> None:
        job = active_job(p)
        if job is None:
            return
        if job.plan is not None:
            s = job.plan.stats
            log.info(
                "ELLA: %d prompt texts encoded (%d truncated), %d TSC calls for %d rows (%d rows reused), %d steps ELLA, "
                "%d steps CLIP",
                s.texts_encoded,
                s.truncated_prompts,
                s.tsc_calls,
                s.tsc_rows,
                s.reused_rows,
                s.steps_ella,
                s.steps_clip,
            )
        self.end_job(p)

    def end_job(self, p) -> None:
        job = active_job(p)
        self._open_jobs[:] = [ref for ref in self._open_jobs if ref() is not None and ref() is not job]
        companions.restore()
        clear_job(p)
        self.runtime.end_job()

    # --- WebUI objects -> library data ---

    def pass_spec(self, p) -> PassSpec:
        from modules import shared

        from ..plan import PassSpec

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
