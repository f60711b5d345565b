"""Stand-ins for the extensions that meet ELLA's conditioning, each doing what the real one does to
`p` and to the conditioning (docs/webui_facts.md, section "Other extensions"). Written from those
facts, not from their code; the live suite runs the real ones.
"""

from __future__ import annotations

import re
from copy import copy
from pathlib import Path
from types import SimpleNamespace

import torch
import webui_env
from fake_rp_attention import hook_forwards

webui_env.enter_fake_webui()

from modules import processing, prompt_parser, script_callbacks, scripts, shared  # noqa: E402

MARK = 1024.0


class FakeAlwaysOn(scripts.Script):
    """An always-visible script whose UI values default to `DEFAULTS` (its API args in that order)."""

    TITLE = ""
    DEFAULTS: tuple = ()

    def title(self):
        return self.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [SimpleNamespace(value=v) for v in self.DEFAULTS]


# --- sd-webui-controlnet (A1111): marker token in front of every CLIP row -------------------------


def _mark_schedules(schedules, positive):
    out = []
    for entry in schedules:
        cond = entry.cond
        mark = torch.full_like(cond[:1], MARK if positive else -MARK)
        out.append(prompt_parser.ScheduledPromptConditioning(entry.end_at_step, torch.cat([mark, cond])))
    return out


def mark_cond(c):
    batch = [
        [
            prompt_parser.ComposableScheduledPromptConditioning(_mark_schedules(comp.schedules, True), comp.weight)
            for comp in row
        ]
        for row in c.batch
    ]
    return prompt_parser.MulticondLearnedConditioning(c.shape, batch)


def mark_uncond(uc):
    return None if uc is None else [_mark_schedules(s, False) for s in uc]


class FakeControlNet(FakeAlwaysOn):
    """Wraps `p.sample` to mark conds (+1024) and unconds (-1024) at token 0, and the U-Net to read
    the marker and strip it (or, where the context is unmarked, take every row as cond)."""

    TITLE = "ControlNet"
    DEFAULTS = (False,)

    def process(self, p, enabled=False):
        self.calls = []
        if not enabled:
            return
        sample = p.sample

        def hooked_sample(*args, conditioning=None, unconditional_conditioning=None, **kwargs):
            return sample(
                *args,
                conditioning=mark_cond(conditioning),
                unconditional_conditioning=mark_uncond(unconditional_conditioning),
                **kwargs,
            )

        p.sample = hooked_sample
        model = p.sd_model
        unet = model.apply_model

        def hooked_unet(x, t, context):
            token0 = context[:, 0, :]
            marked = bool(((token0.abs() - MARK).abs() < 1e-3).all())
            is_cond = (token0.mean(dim=1) > 0).tolist() if marked else [True] * context.shape[0]
            self.calls.append(SimpleNamespace(marked=marked, is_cond=is_cond, context=context.detach().clone()))
            return unet(x, t, context[:, 1:] if marked else context)

        model.apply_model = hooked_unet
        self.model = model

    def postprocess(self, p, processed, enabled=False):
        if enabled:
            del self.model.apply_model


# --- Regional Prompter --------------------------------------------------------------------------


class FakeRegionalPrompter(FakeAlwaysOn):
    """Its process() stores active/mode/calc on the script; Latent mode turns BREAK into AND (rp.py:615).
    Attention mode counts each BREAK-separated part's CLIP chunks into `pt`/`nt` spans (rp.py:825-886,
    75 tokens a chunk; the fake CLIP makes a chunk per 150 characters) and hooks the U-Net through its
    attention module (`fake_rp_attention`), which records the unit it cuts by at every call."""

    TITLE = "Regional Prompter"
    DEFAULTS = (False, "Matrix", "Attention")

    def process(self, p, active=False, mode="Matrix", calcmode="Attention"):
        self.active, self.mode, self.calc = bool(active), mode, calcmode
        self.calls = []
        if self.active and "La" in calcmode:
            p.all_prompts = [x.replace(" BREAK ", " AND ") for x in p.all_prompts]
        if self.active and "Att" in calcmode:
            first_step = prompt_parser.get_learned_conditioning_prompt_schedules([p.all_prompts[0]], p.steps)[0][0][1]
            self.pt = self._spans(first_step)
            self.nt = self._spans(p.all_negative_prompts[0])
            hook_forwards(self, p)

    @staticmethod
    def _spans(prompt):
        spans, start = [], 0
        for part in prompt.split("BREAK"):
            end = start + 1 + len(part) // 150
            spans.append([start, end])
            start = end
        return spans

    def postprocess(self, p, processed, *args):
        if self.active and "Att" in self.calc:
            hook_forwards(self, p, remove=True)


# --- Tiled Diffusion ----------------------------------------------------------------------------


class FakeTiledDiffusion(FakeAlwaysOn):
    """Its process() makes a delegate whose enable_custom_bbox says Region Prompt Control is on."""

    TITLE = "Tiled Diffusion"
    DEFAULTS = (False, False)

    def process(self, p, enabled=False, enable_bbox_control=False):
        self.delegate = SimpleNamespace(enable_custom_bbox=bool(enable_bbox_control)) if enabled else None


# --- AnimateDiff --------------------------------------------------------------------------------


class KeyframeBlend:
    """AnimateDiff's prompt travel: each frame's row blends the two nearest keyframes' rows."""

    def __init__(self, prompt_map):
        self.prompt_map = prompt_map
        self.calls = 0

    def weights(self, frame):
        keys = sorted(self.prompt_map)
        prev = max((k for k in keys if k <= frame), default=keys[0])
        nxt = min((k for k in keys if k > frame), default=keys[-1])
        if nxt == prev:
            return prev, nxt, 0.0
        return prev, nxt, (frame - prev) / (nxt - prev)

    def multi_cond(self, cond, closed_loop=False):
        self.calls += 1
        rows = []
        for frame in range(cond.shape[0]):
            a, b, r = self.weights(frame)
            rows.append((1 - r) * cond[a] + r * cond[b])
        return torch.stack(rows)


class FakeAnimateDiff(FakeAlwaysOn):
    """One args dict; before_process expands "N: text" travel lines into one prompt per frame
    (animatediff_prompt.py); its cfg-denoiser callback, at step 0, hooks the inner model's forward and
    keeps that step's (blended) conditioning, which it hands on at every later step
    (animatediff_infv2v.py). The hooked forward takes frame windows and, with "batch cond/uncond" on,
    the uncond rows at frame + video_length, as the real one does."""

    TITLE = "AnimateDiff"
    DEFAULTS = ({"enable": False},)

    def before_process(self, p, params=None):
        params = params or {}
        FakeAnimateDiff.active = params if params.get("enable") else None
        if not params.get("enable"):
            return
        params.setdefault("video_length", p.batch_size)
        params.setdefault("batch_size", p.batch_size)
        lines = p.prompt.strip().split("\n")
        travel = {int(m.group(1)): m.group(2) for m in (re.match(r"^(\d+): (.+)$", l) for l in lines) if m}
        params["prompt_scheduler"] = KeyframeBlend(travel) if travel else SimpleNamespace(prompt_map=None)
        if travel:
            frames, current = [], ""
            for frame in range(p.batch_size):
                current = travel.get(frame, current)
                frames.append(current)
            p.prompt = frames * p.n_iter

    active = None
    frozen = None

    @staticmethod
    def on_cfg_denoiser(params):
        ad = FakeAnimateDiff.active
        if ad is None:
            return
        denoiser = params.denoiser
        if denoiser.step == 0 and getattr(denoiser.inner_model, "original_forward", None) is None:
            scheduler = ad["prompt_scheduler"]
            cond = params.text_cond
            FakeAnimateDiff.frozen = scheduler.multi_cond(cond) if scheduler.prompt_map else cond
            inner = denoiser.inner_model
            inner.original_forward = inner.forward
            video_length = ad["video_length"]
            FakeAnimateDiff.forward_calls = []

            def mm_sd_forward(x_in, sigma_in, cond):
                frames = list(range(video_length))
                rows = frames + [f + video_length for f in frames] if shared.opts.batch_cond_uncond else frames
                FakeAnimateDiff.forward_calls.append((x_in.shape[0], shared.opts.batch_cond_uncond))
                out = inner.original_forward(
                    x_in[rows], sigma_in[rows], cond={k: [v[0][rows]] for k, v in cond.items()}
                )
                x_out = torch.zeros_like(x_in)
                x_out[rows] = out
                return x_out

            inner.forward = mm_sd_forward
        params.text_cond = FakeAnimateDiff.frozen


# --- ADetailer ----------------------------------------------------------------------------------


class FakeADetailer(FakeAlwaysOn):
    """After each batch: an inpaint pass per image on a new img2img `p` (`_ad_inner`) that runs only
    the always-on scripts whose file names are in opts.ad_script_names, with the script args
    copied; before the next batch, the scripts' process() on copy(p) (!adetailer.py:923-927)."""

    TITLE = "ADetailer"
    DEFAULTS = (False, "")

    def postprocess_batch(self, p, enabled=False, ad_prompt="", images=None, **kwargs):
        if not enabled or getattr(p, "_ad_disabled", False):
            return
        self.inner = []
        names = {n.strip() for n in str(getattr(shared.opts, "ad_script_names", "")).split(",")}
        runner = copy(p.scripts)
        runner.alwayson_scripts = [s for s in p.scripts.alwayson_scripts if Path(s.filename or "").stem in names]
        for i in range(images.shape[0]):
            inner = processing.StableDiffusionProcessingImg2Img(
                prompt=ad_prompt or p.prompts[i],
                negative_prompt=p.negative_prompts[i],
                steps=p.steps,
                cfg_scale=p.cfg_scale,
                sampler_name=p.sampler_name,
                seed=p.seeds[i],
                sd_model=p.sd_model,
                init_latent=images[i : i + 1],
                denoising_strength=0.4,
                scripts=runner,
                script_args=list(p.script_args),
            )
            inner.extra_generation_params = dict(p.extra_generation_params)
            inner._ad_inner = True
            inner._ad_disabled = True
            calls_before = len(p.sd_model.unet_calls)
            processing.process_images(inner)
            self.inner.append(SimpleNamespace(p=inner, calls=p.sd_model.unet_calls[calls_before:]))
        if p.iteration < p.n_iter - 1:
            copy_p = copy(p)
            p.scripts.before_process(copy_p)
            p.scripts.process(copy_p)


def install_animatediff_callback(before_ella: bool) -> None:
    """Register the fake AnimateDiff's callback before (the pinned order) or after ELLA's."""
    callbacks = script_callbacks.callbacks_cfg_denoiser
    if FakeAnimateDiff.on_cfg_denoiser in callbacks:
        callbacks.remove(FakeAnimateDiff.on_cfg_denoiser)
    if before_ella:
        callbacks.insert(0, FakeAnimateDiff.on_cfg_denoiser)
    else:
        callbacks.append(FakeAnimateDiff.on_cfg_denoiser)


def remove_animatediff_callback() -> None:
    callbacks = script_callbacks.callbacks_cfg_denoiser
    if FakeAnimateDiff.on_cfg_denoiser in callbacks:
        callbacks.remove(FakeAnimateDiff.on_cfg_denoiser)
    FakeAnimateDiff.active = None


# --- Agent Scheduler (job queue) ------------------------------------------------------------------


def agent_scheduler_args_to_list(script, named_args):
    """How its queue API turns a script's `args` into the positional list the WebUI's API replays: a list
    as it is; a dict by the names of `script.process`'s parameters after `self, p` (missing names: None),
    plus the value under the name of its `*args` parameter, if it has one (task_helpers.py)."""
    import inspect

    if isinstance(named_args, list):
        return named_args
    spec = inspect.getfullargspec(script.process)
    names = spec.args[2:]
    args = [named_args.get(name) for name in names]
    if spec.varargs is not None:
        args.extend(named_args.get(spec.varargs, []))
    return args


class FakeAgentScheduler:
    """Its modules `agent_scheduler.task_runner` (`TaskRunner.instance`, `current_task_id`, the
    `task_finished` callbacks) and `agent_scheduler.db` (`task_manager`). A UI-queued task runs through the
    WebUI's gradio wrapper, which turns an exception into an HTML error line; Agent Scheduler keeps only the
    wrapper's second output (the generation info, '' after an error) as the result of a FAILED task, then
    runs its callbacks with `status` and `task` (task_runner.py)."""

    FAILED, DONE = "failed", "done"

    def __init__(self):
        self.script_callbacks = {"task_finished": []}
        self.current_task_id = None
        self.updates = []  # (task id, status, result) of every task_manager.update_task
        self.console = []  # the wrapper's error lines

    def on_task_finished(self, callback):
        self.script_callbacks["task_finished"].append(callback)

    def update_task(self, task):
        self.updates.append((task.id, task.status, task.result))

    def install(self, monkeypatch):
        import sys
        from types import ModuleType

        task_runner, db = ModuleType("agent_scheduler.task_runner"), ModuleType("agent_scheduler.db")
        task_runner.TaskRunner = SimpleNamespace(instance=self)
        db.task_manager = self
        monkeypatch.setitem(sys.modules, "agent_scheduler.task_runner", task_runner)
        monkeypatch.setitem(sys.modules, "agent_scheduler.db", db)
        return self

    def run_ui_task(self, task_id, job):
        """`job()` runs the queued generation; returns the task as Agent Scheduler stored it."""
        task = SimpleNamespace(id=task_id, status="running", result=None)
        self.current_task_id = task_id
        try:
            info = job()
            outputs = (None, info, "")
        except Exception as e:  # the gradio wrapper
            self.console.append(f"{type(e).__name__}: {e}")
            outputs = (None, "", f"<div class='error'>{type(e).__name__}: {e}</div>")
        finally:
            self.current_task_id = None
        res = outputs[1]
        task.status = self.DONE if res else self.FAILED
        task.result = res if res else None
        self.update_task(task)
        for callback in self.script_callbacks["task_finished"]:
            callback(task_id, is_img2img=False, is_ui=True, status=task.status, task=task)
        return task


# --- TensorRT U-Net engines (Stable-Diffusion-WebUI-TensorRT) --------------------------------------


class FakeTrtUnet:
    """A TensorRT engine as `sd_unet.current_unet`: `configs` (one per profile: `config.profile` with the
    (min, opt, max) shapes of each input), `profile_idx` (the profile its process() picked for the pass) and
    `option.label`. Its forward runs the engine, which fails with "ERROR: inference failed." for a context
    outside the profile (utilities.py: the shape error is only logged, then execution fails)."""

    def __init__(self, tokens, name="v1-5-pruned", batch=(2, 2, 8)):
        low, opt, high = tokens
        profile = {"encoder_hidden_states": [(batch[0], low, 768), (batch[1], opt, 768), (batch[2], high, 768)]}
        self.configs = [
            {"config": SimpleNamespace(profile=profile, static_shapes=low == high), "filepath": f"{name}.trt"}
        ]
        self.profile_idx = 0
        self.model_name = name
        self.option = SimpleNamespace(label=f"[TRT] {name}")
        self.calls = []  # context tokens of every call it ran

    def forward(self, x, timesteps, context, *args, **kwargs):
        low, high = self.configs[self.profile_idx]["config"].profile["encoder_hidden_states"][0::2]
        if not low[1] <= context.shape[1] <= high[1]:
            raise ValueError("ERROR: inference failed.")
        self.calls.append(int(context.shape[1]))
        return x


# --- Prompt Fusion ----------------------------------------------------------------------------------


class FakePromptFusion:
    """Its option `prompt_fusion_enabled` (on by default) and the two modules of its parser ELLA asks:
    `lib_prompt_fusion.prompt_parser.parse_prompt(text).extend_tensor(builder, ...)` lists in
    `lib_prompt_fusion.interpolation_tensor.InterpolationTensorBuilder().get_prompt_database()` the prompts
    it CLIP-encodes: one per alternative of an interpolation `[a:b: 2, 8]`; an attention interpolation
    `(word: 1, 2)` becomes one prompt of per-step weights; the WebUI's own syntax is passed on, re-spelled
    (spaces collapsed, `.5` as `0.5`)."""

    INTERPOLATION = re.compile(r"\[([^\[\]]*?):\s*([-+\d.\s]*(?:,[-+\d.\s]*)+)(?::\s*\w+)?\s*\]")
    ATTENTION = re.compile(r"\(([^():]*):\s*([\d.]+)\s*,\s*([\d.]+)\s*\)")

    class Builder:
        def __init__(self):
            self.database = [""]

        def get_prompt_database(self):
            return self.database

    class Expression:
        def __init__(self, text):
            self.text = text

        def extend_tensor(self, builder, step_range, total_steps, context, is_hires, use_old_scheduling):
            text = " ".join(self.text.split())
            text = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", text)
            text = FakePromptFusion.ATTENTION.sub(
                lambda m: (
                    f"[({m.group(1)}:{m.group(2)})::{total_steps // 2}][({m.group(1)}:{m.group(3)}):{total_steps // 2}]"
                ),
                text,
            )
            prompts = [text]
            while True:
                match = FakePromptFusion.INTERPOLATION.search(prompts[0])
                if match is None:
                    break
                alternatives = match.group(1).split(":")
                prompts = [p[: match.start()] + alt.strip() + p[match.end() :] for p in prompts for alt in alternatives]
            builder.database = [" ".join(p.split()) for p in prompts]

    def install(self, monkeypatch, enabled=True):
        import sys
        from types import ModuleType

        parser, tensor = (
            ModuleType("lib_prompt_fusion.prompt_parser"),
            ModuleType("lib_prompt_fusion.interpolation_tensor"),
        )
        parser.parse_prompt = FakePromptFusion.Expression
        tensor.InterpolationTensorBuilder = FakePromptFusion.Builder
        monkeypatch.setitem(sys.modules, "lib_prompt_fusion.prompt_parser", parser)
        monkeypatch.setitem(sys.modules, "lib_prompt_fusion.interpolation_tensor", tensor)
        monkeypatch.setitem(shared.opts.data, "prompt_fusion_enabled", enabled)
        return self

    @staticmethod
    def prompts(text, steps=20):
        builder = FakePromptFusion.Builder()
        FakePromptFusion.Expression(text).extend_tensor(builder, (0, steps), steps, {}, False, False)
        return builder.get_prompt_database()


# --- Neutral Prompt -----------------------------------------------------------------------------


class FakeNeutralPrompt:
    """On by default once installed. Its hijack of `get_multicond_prompt_list` turns AND_PERP / AND_SALT into
    plain AND sub-prompts and stores the batch's prompt trees of *that call* (a global); its hijack of the
    denoiser's `combine_denoised` zips the stored trees with the batch, so an image without a tree keeps only
    its uncond prediction (prompt_parser_hijack.py, cfg_denoiser_hijack.py)."""

    OPERATORS = re.compile(r"\bAND_(PERP|SALT|TOPK)\b")

    def __init__(self):
        self.prompt_exprs = []  # the trees of the last call, one per prompt of that call
        self.calls = []  # every call's prompts
        self.combined = []  # per denoiser call: (images that got a tree, the prompts of the call they came from)

    def install(self, monkeypatch):
        from modules import sd_samplers

        original = prompt_parser.get_multicond_prompt_list

        def get_multicond_prompt_list(prompts):
            prompts = list(prompts)
            self.calls.append(prompts)
            self.prompt_exprs = [self.OPERATORS.findall(p) or ["AND"] for p in prompts]
            return original([self.OPERATORS.sub("AND", p) for p in prompts])

        combine = sd_samplers.CFGDenoiser.combine_denoised

        def combine_denoised(denoiser, x, cond_out, conds_list, unc_out, cond_scale):
            full = combine(denoiser, x, cond_out, conds_list, unc_out, cond_scale)
            out = unc_out.clone() if unc_out is not None else torch.zeros_like(full)
            for i, _tree in zip(range(len(conds_list)), self.prompt_exprs):
                out[i] = full[i]
            self.combined.append((min(len(conds_list), len(self.prompt_exprs)), self.calls[-1]))
            return out

        monkeypatch.setattr(prompt_parser, "get_multicond_prompt_list", get_multicond_prompt_list)
        monkeypatch.setattr(sd_samplers.CFGDenoiser, "combine_denoised", combine_denoised)
        return self


# --- Forge Couple (Forge) -----------------------------------------------------------------------


def forge_couple_library():
    """Forge Couple's `lib_couple.mapping`: `text2cond` CLIP-encodes one line (mapping.py:15-25) and the mapping
    functions look it up as a module global for every line (mapping.py:44-45)."""
    import sys
    import types

    if "lib_couple.mapping" in sys.modules:
        return sys.modules["lib_couple.mapping"]
    package = types.ModuleType("lib_couple")
    package.__path__ = []
    mapping = types.ModuleType("lib_couple.mapping")

    def text2cond(sd_model, texts):
        cond = sd_model.get_learned_conditioning(texts)
        return [[torch.stack(cond) if isinstance(cond, list) else cond]]

    def basic_mapping(sd_model, couples, width, height):
        """One horizontal tile per line, the first line's tile at the left (mapping.py basic_mapping)."""
        fc_args, tile = {}, (width - 1) // len(couples) + 1
        for i, line in enumerate(couples):
            fc_args[f"cond_{i + 1}"] = mapping.text2cond(sd_model, prompt_parser.SdConditioning([line]))
            mask = torch.zeros((height, width))
            mask[:, i * tile : (i + 1) * tile] = 1.0
            fc_args[f"mask_{i + 1}"] = mask.unsqueeze(0)
        return fc_args

    mapping.text2cond = text2cond
    mapping.basic_mapping = basic_mapping
    package.mapping = mapping
    sys.modules["lib_couple"], sys.modules["lib_couple.mapping"] = package, mapping
    return mapping


class FakeForgeCouple(FakeAlwaysOn):
    """Per batch it splits the first image's prompt into lines (forge_couple.py:160-235, after extra networks);
    before every sampling (not ADetailer's inner passes, not hires with its compatibility switch) it encodes
    each line through `text2cond`, captures the tensors on the WebUI's device and dtype
    (attention_couple.py:35-39) and patches the U-Net; the whole prompt's cond gets weight 0. The fake patch
    records, at each U-Net call, what each captured region tensor holds."""

    TITLE = "Forge Couple"
    DEFAULTS = (False, False)

    def process_batch(self, p, enable=False, disable_hr=False, **kwargs):
        self.couples, self.valid, self.is_hr = None, False, False
        self.calls = []
        if enable:
            self.couples = [line.strip() for line in p.prompts[0].split("\n")]
            self.valid = True

    def before_hr(self, p, *args):
        self.is_hr = True

    def process_before_every_sampling(self, p, enable=False, disable_hr=False, **kwargs):
        if not enable or not self.couples or not self.valid or getattr(p, "_ad_inner", False):
            return
        if disable_hr and self.is_hr:
            return
        from modules import devices

        fc_args = forge_couple_library().basic_mapping(p.sd_model, self.couples, p.width, p.height)
        conds = [
            fc_args[f"cond_{i + 1}"][0][0].to(device=devices.device, dtype=devices.dtype)
            for i in range(len(self.couples))
        ]
        model, unet = p.sd_model, type(p.sd_model).apply_model.__get__(p.sd_model)
        calls, hires = self.calls, self.is_hr

        def patched(x, t, context):
            calls.append({"t": t.detach().clone(), "regions": [c.detach().clone() for c in conds], "hires": hires})
            return unet(x, t, context)

        model.apply_model = patched

    def postprocess(self, p, processed, *args):
        p.sd_model.__dict__.pop("apply_model", None)


# --- Cutoff (A1111) and NegPiP ------------------------------------------------------------------


class FakeCutoff(FakeAlwaysOn):
    """Its process() makes a hook (`last_hooker`) on the CLIP model that rewrites CLIP's output for prompts with
    its target words (cutoff.py:225-267; sdhook.py). The fake shifts those outputs by CUTOFF_SHIFT."""

    TITLE = "Cutoff"
    DEFAULTS = (False, "")
    SHIFT = 0.5

    def process(self, p, enabled=False, targets=""):
        self.last_hooker = None
        words = [w.strip() for w in str(targets).split(",") if w.strip()]
        if not enabled or not words:
            return
        model = p.sd_model
        encode = type(model).get_learned_conditioning.__get__(model)

        def hooked(texts):
            return [
                c + self.SHIFT if any(w in str(text) for w in words) else c for c, text in zip(encode(texts), texts)
            ]

        model.get_learned_conditioning = hooked
        self.last_hooker = hooked

    def postprocess(self, p, processed, *args):
        p.sd_model.__dict__.pop("get_learned_conditioning", None)


class FakeNegPiP(FakeAlwaysOn):
    """Per batch, when a prompt has a negative weight `(word:-w)`, it takes those parts out of `p.prompts` and
    sets `active` (negpip.py:128-305); it then finds the cond rows in its attention hook (not faked here)."""

    TITLE = "NegPiP"
    DEFAULTS = (False,)
    NEGATIVE = re.compile(r"\(([^:()]+):\s*-[\d.]+\)")

    def process_batch(self, p, active=False, **kwargs):
        self.active = False
        if not active or not any(self.NEGATIVE.search(prompt) for prompt in p.prompts):
            return
        self.removed = [m for prompt in p.prompts for m in self.NEGATIVE.findall(prompt)]
        p.prompts = [self.NEGATIVE.sub("", prompt) for prompt in p.prompts]
        self.active = True
