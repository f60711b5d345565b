"""The per-job conditioning plan: which text each conditioning row uses at each step, and the
TSC outputs that replace CLIP's conditioning.

The WebUI lays out conditioning rows the same way in every backend: cond rows are image-major,
one per AND sub-prompt of each image; uncond rows are one per image. Each row follows its own
prompt schedule (prompt editing, alternation), indexed by the denoiser's own step counter.

Before a sampling pass, `JobPlan.prepare` schedules every row, encodes each distinct scheduled
text once (T5, through the feature cache) and does the TSC's timestep-independent work once for
all of them (text projection and normalisation, padded into one batch with a key mask). At each
denoiser call, `JobPlan.apply` computes the TSC only for the distinct (text, timestep) pairs it
has not seen in this job, in one batched call, and lays the results out row for row. Cond and
uncond rows share that call; a later batch with the same prompts and sampler reuses everything.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch

from .args import Conditioning, ELLAArgs, Negative
from .errors import ConditioningError, ELLAError, IncompatibleExtensionError
from .lru_cache import LRUCache
from .prompt_encoding import EncodedPrompt, PromptEncoder
from .prompt_syntax import PromptSyntax, Schedule, split_break, strip_extra_networks, text_at_step
from .tsc import TSC, PreparedText


class Interrupted(ELLAError):
    """The user interrupted the job while ELLA was encoding prompts."""


@dataclass(frozen=True)
class PassSpec:
    """What the WebUI samples in one pass, as plain data (built by the backend adapter)."""

    prompts: tuple[str, ...]  # per image, positive
    negative_prompts: tuple[str, ...]  # per image
    steps: int  # the steps the WebUI schedules prompts with (first pass: total steps of the sampler)
    hires_steps: Optional[int] = None  # hires pass: its total steps (with `steps` = the first pass's)
    use_old_scheduling: bool = False
    name: str = "first pass"


@dataclass
class TextBatch:
    """Distinct texts ready for the TSC: T5 features projected and normalised, padded into one batch."""

    texts: list[str]
    index: dict[str, int]
    lengths: list[int]
    prepared: PreparedText  # [len(texts), max length, width]


@dataclass
class PassPlan:
    spec: PassSpec
    cond_rows: list[Schedule]  # per cond row: [(end_at_step, text)]
    cond_row_image: list[int]  # image index of each cond row
    uncond_rows: list[Schedule]  # per image
    texts: list[str]  # distinct texts ELLA encodes (scheduled texts, or their regions), in prepared-batch order
    index: dict[str, int]
    lengths: list[int]
    prepared: PreparedText  # [len(texts), max length, width]
    regions: dict[str, tuple[str, ...]]  # scheduled text -> its region texts (Regional Prompter's Attention mode)

    def rows_at(self, step: int, with_uncond: bool) -> list[str]:
        rows = [text_at_step(s, step) for s in self.cond_rows]
        if with_uncond:
            rows += [text_at_step(s, step) for s in self.uncond_rows]
        return rows


@dataclass
class DenoiserCall:
    """One cfg-denoiser callback, as plain data."""

    step: int  # the denoiser's own step counter (what the WebUI schedules prompts with)
    total_steps: int
    timesteps: torch.Tensor  # U-Net timesteps: [N_c + B] (A1111), [B] (Forge/reForge) or [1]
    text_cond: Any
    text_uncond: Any  # None where the backend skips the negative half (Forge at CFG 1)
    # ELLA + CLIP with a separate CLIP text: the WebUI's own conditioning of that text, one row per image
    clip_cond: Optional[torch.Tensor] = None
    clip_uncond: Optional[torch.Tensor] = None


@dataclass
class CallResult:
    """ELLA's conditioning for one denoiser call, and which halves it replaced (the others are the call's own)."""

    cond: Any
    uncond: Any
    replaced_cond: bool
    replaced_uncond: bool


@dataclass(frozen=True)
class RegionLayout:
    """How a regional extension cuts each row's context: units per region, for the cond rows and the uncond
    rows (Regional Prompter's Attention mode: its CLIP chunk counts)."""

    cond_units: tuple[int, ...]
    uncond_units: tuple[int, ...]


@dataclass
class PlanShape:
    """What other extensions' companions ask of the plan for one sampling pass (set before each pass)."""

    # each row is its regions' outputs, unit by unit (Regional Prompter's Attention mode)
    regions: Optional[RegionLayout] = None
    # applied to ELLA's cond rows at every call, in order (e.g. AnimateDiff's keyframe blending)
    cond_transforms: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    # texts a companion conditions outside the rows (Forge Couple's regions), encoded with the pass's prompts
    side_texts: list[str] = field(default_factory=list)


@dataclass
class JobStats:
    tsc_calls: int = 0
    tsc_rows: int = 0
    reused_rows: int = 0
    texts_encoded: int = 0
    truncated_prompts: int = 0
    steps_clip: int = 0
    steps_ella: int = 0


class JobPlan:
    def __init__(
        self,
        args: ELLAArgs,
        tsc: TSC,
        prompt_encoder: PromptEncoder,
        syntax: PromptSyntax,
        *,
        output_cache_bytes: int = 32 * 2**20,
        interrupted: Callable[[], bool] = lambda: False,
        after_encode: Callable[[], None] = lambda: None,
        activity: Callable[[str], ContextManager] = lambda text: nullcontext(),
    ):
        self.args = args
        self.tsc = tsc
        self.prompt_encoder = prompt_encoder
        self.syntax = syntax
        self.interrupted = interrupted
        self.after_encode = after_encode
        self.activity = activity  # says what ELLA is doing (the WebUI's progress text)
        self.outputs = LRUCache(max_entries=None, max_bytes=output_cache_bytes)  # TSC outputs by (text, t)
        self.shape = PlanShape()
        self.stats = JobStats()
        self._passes: dict[PassSpec, PassPlan] = {}
        self._side_batches: dict[tuple[str, ...], TextBatch] = {}
        self._encoded: dict[str, EncodedPrompt] = {}

    # --- before sampling ----------------------------------------------------------------------

    def prepare(self, spec: PassSpec) -> PassPlan:
        """Schedule every row, encode each distinct text once, prepare the TSC's text inputs."""
        plan = self._passes.get(spec)
        if plan is not None:
            return plan
        if len(spec.prompts) != len(spec.negative_prompts):
            raise ConditioningError(
                f"ELLA got {len(spec.prompts)} prompts but {len(spec.negative_prompts)} negative prompts for the {spec.name}."
            )
        sub_prompts: list[str] = []
        cond_row_image: list[int] = []
        for image, parts in enumerate(self.syntax.sub_prompts([strip_extra_networks(p) for p in spec.prompts])):
            for text, _weight in parts:
                sub_prompts.append(text)
                cond_row_image.append(image)
        negatives = [strip_extra_networks(n) for n in spec.negative_prompts]
        schedules = self.syntax.schedules(
            sub_prompts + negatives, spec.steps, spec.hires_steps, spec.use_old_scheduling
        )
        cond_rows, uncond_rows = schedules[: len(sub_prompts)], schedules[len(sub_prompts) :]
        if self.args.negative == Negative.CLIP:
            uncond_rows = []
        regions = {}
        for rows, units in ((cond_rows, self._units(True)), (uncond_rows, self._units(False))):
            for schedule in rows:
                for _, text in schedule:
                    regions[text] = self._split_regions(text, units, spec.name)
        texts = list(dict.fromkeys(region for parts in regions.values() for region in parts))
        self._encode(texts + self.shape.side_texts, spec.name)
        prepared, lengths = self._prepare_text(texts)
        plan = PassPlan(
            spec=spec,
            cond_rows=cond_rows,
            cond_row_image=cond_row_image,
            uncond_rows=uncond_rows,
            texts=texts,
            index={t: i for i, t in enumerate(texts)},
            lengths=lengths,
            prepared=prepared,
            regions=regions,
        )
        self._passes[spec] = plan
        return plan

    def _encode(self, texts: Sequence[str], pass_name: str) -> None:
        """T5 features for each text not encoded in this job yet."""
        new = [text for text in dict.fromkeys(texts) if text not in self._encoded]
        if not new:
            return
        try:
            for number, text in enumerate(new, 1):
                if self.interrupted():
                    raise Interrupted("ELLA: interrupted while encoding prompts.")
                what = f"prompt {number} of {len(new)}" if len(new) > 1 else "the prompt"
                with self.activity(f"ELLA: encoding {what} with T5 for the {pass_name}"):
                    enc = self.prompt_encoder.encode(text)
                self._encoded[text] = enc
                self.stats.texts_encoded += 1
                self.stats.truncated_prompts += int(enc.truncated)
        finally:
            self.after_encode()

    def side_batch(self, texts: Sequence[str], pass_name: str) -> TextBatch:
        """Texts a companion conditions outside the rows, ready for `embeddings` (encoded here if a companion met
        them only after this pass was prepared)."""
        key = tuple(dict.fromkeys(texts))
        batch = self._side_batches.get(key)
        if batch is None:
            self._encode(key, pass_name)
            prepared, lengths = self._prepare_text(key)
            batch = TextBatch(list(key), {t: i for i, t in enumerate(key)}, lengths, prepared)
            self._side_batches[key] = batch
        return batch

    def _units(self, cond: bool) -> Optional[tuple[int, ...]]:
        regions = self.shape.regions
        if regions is None:
            return None
        return regions.cond_units if cond else regions.uncond_units

    @staticmethod
    def _split_regions(text: str, units: Optional[tuple[int, ...]], pass_name: str) -> tuple[str, ...]:
        if units is None or len(units) == 1:
            return (text,)
        parts = tuple(part.strip() for part in split_break(text))
        if len(parts) != len(units):
            raise IncompatibleExtensionError(
                f"Regional Prompter laid out {len(units)} regions, but the {pass_name} prompt '{text}' has {len(parts)} "
                "BREAK-separated parts (it counts the regions of the first image's prompt at the first step). Give every "
                "image and every prompt-editing step the same number of BREAKs."
            )
        return parts

    def _prepare_text(self, texts: Sequence[str]) -> tuple[PreparedText, list[int]]:
        feats = [self._encoded[t].features for t in texts]
        lengths = [f.shape[0] for f in feats]
        width = feats[0].shape[-1]
        longest = max(lengths)
        batch = feats[0].new_zeros((len(feats), longest, width))
        for i, f in enumerate(feats):
            batch[i, : f.shape[0]] = f
        with torch.inference_mode():
            prepared = self.tsc.prepare_text(batch, lengths=lengths)
        return prepared, lengths

    @property
    def truncated(self) -> bool:
        return any(e.truncated for e in self._encoded.values())

    @property
    def emphasis_ignored(self) -> Optional[str]:
        """Why some prompt's emphasis could not be applied (the first reason), if so."""
        return next((e.emphasis_ignored for e in self._encoded.values() if e.emphasis_ignored), None)

    # --- at every denoiser call ---------------------------------------------------------------

    def in_step_range(self, step: int, total_steps: int) -> bool:
        if self.args.start <= 0.0 and self.args.end >= 1.0:
            return True
        fraction = step / max(total_steps, 1)
        return self.args.start <= fraction <= self.args.end

    def embeddings(self, plan: PassPlan | TextBatch, texts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
        """TSC outputs [len(texts), num_latents, width] for rows (text, t); each distinct pair computed once per job."""
        t_values = [float(v) for v in timesteps.detach().float().cpu().tolist()]
        pairs = list(zip(texts, t_values))
        missing = [p for p in dict.fromkeys(pairs) if self.outputs.get(p) is None]
        computed: dict[tuple[str, float], torch.Tensor] = {}
        if missing:
            idx = [plan.index[text] for text, _ in missing]
            longest = max(plan.lengths[i] for i in idx)
            sel = plan.prepared.select(torch.tensor(idx, device=plan.prepared.normed.device))
            mask = sel.key_mask[:, :longest] if sel.key_mask is not None else None
            if mask is not None and bool(mask.all()):
                mask = None
            sel = PreparedText(sel.normed[:, :longest], mask)
            t = torch.tensor([tv for _, tv in missing], dtype=torch.float32, device=self.tsc.device)
            with torch.inference_mode():
                out = self.tsc.forward_prepared(sel, t)
            self.stats.tsc_calls += 1
            self.stats.tsc_rows += len(missing)
            for p, o in zip(missing, out):
                computed[p] = o
                self.outputs.put(p, o)
        self.stats.reused_rows += len(pairs) - len(missing)
        return torch.stack([computed[p] if p in computed else self.outputs.get(p) for p in pairs])

    def row_timesteps(self, plan: PassPlan, t: torch.Tensor, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row timesteps (cond rows, uncond rows) from the sampler's t, expanded or per image."""
        n_cond, batch = len(plan.cond_rows), len(plan.spec.prompts)
        t = t.reshape(-1)
        if t.numel() >= n_cond + batch and t.numel() in (n_cond + batch, n_cond + 2 * batch):
            return t[:n_cond], t[n_cond : n_cond + batch]  # A1111: already expanded like the rows
        if t.numel() == batch:
            image = torch.tensor(plan.cond_row_image, device=t.device)
            return t[image], t
        if t.numel() == 1:
            return t.expand(n_cond), t.expand(batch)
        raise ConditioningError(
            f"ELLA got {t.numel()} timesteps for {n_cond} cond rows and {batch} images; the sampler's batch layout is unknown."
        )

    def apply(self, plan: PassPlan, call: DenoiserCall) -> CallResult:
        """ELLA's conditioning for one denoiser call; the call's own outside the step range.

        Structure other extensions put on the conditioning (e.g. sd-webui-controlnet's marker tokens) is
        taken off before and put back after by their companions (`ella_ext.companions`).
        """
        if not self.in_step_range(call.step, call.total_steps):
            self.stats.steps_clip += 1
            return CallResult(call.text_cond, call.text_uncond, False, False)
        cond = call.text_cond
        width = self.tsc.config.width
        if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or cond.shape[-1] != width:
            shape = list(cond.shape) if hasattr(cond, "shape") else type(cond).__name__
            raise ConditioningError(
                f"ELLA replaces [rows, tokens, {width}] conditioning, but the sampler passed {shape}: the loaded model is "
                "not an SD1.x model (or another extension changed the conditioning)."
            )
        if cond.shape[0] != len(plan.cond_rows):
            raise ConditioningError(
                f"ELLA expected {len(plan.cond_rows)} cond rows (prompts x AND sub-prompts) but the sampler has "
                f"{cond.shape[0]}; another extension may have changed the prompts or batch."
            )
        use_uncond = self.args.negative == Negative.ELLA and call.text_uncond is not None
        uncond = call.text_uncond
        if use_uncond and (not isinstance(uncond, torch.Tensor) or uncond.shape[0] != len(plan.uncond_rows)):
            raise ConditioningError(
                f"ELLA expected {len(plan.uncond_rows)} negative rows, the sampler has "
                f"{getattr(uncond, 'shape', type(uncond).__name__)}."
            )
        clip_mode = self.args.mode == Conditioning.ELLA_CLIP
        replace_uncond = use_uncond or (clip_mode and call.clip_uncond is not None and isinstance(uncond, torch.Tensor))
        if clip_mode:
            cond, uncond = self._clip_part(plan, call, cond, uncond)
        t_cond, t_uncond = self.row_timesteps(plan, call.timesteps, use_uncond)
        texts = plan.rows_at(call.step, use_uncond)
        t = torch.cat([t_cond, t_uncond]) if use_uncond else t_cond
        new_cond, ella_uncond = self._ella_rows(plan, texts, t)
        new_cond = new_cond.to(device=cond.device, dtype=cond.dtype)
        for transform in self.shape.cond_transforms:
            new_cond = transform(new_cond)
        new_uncond = ella_uncond.to(device=cond.device, dtype=cond.dtype) if use_uncond else uncond
        if clip_mode:
            new_cond = torch.cat([new_cond, cond], dim=1)
            if use_uncond:
                new_uncond = torch.cat([new_uncond, uncond.to(device=cond.device, dtype=cond.dtype)], dim=1)
        self.stats.steps_ella += 1
        return CallResult(new_cond, new_uncond if replace_uncond else call.text_uncond, True, replace_uncond)

    def _ella_rows(self, plan: PassPlan, texts: Sequence[str], t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ELLA's (cond rows, uncond rows) for rows (text, t): one TSC output per row, or in Regional
        Prompter's Attention mode each region's output repeated over the region's units."""
        n = len(plan.cond_rows)
        layout = self.shape.regions
        if layout is None:
            out = self.embeddings(plan, texts, t)
            return out[:n], out[n:]
        parts = [plan.regions[text] for text in texts]
        row_of = [row for row, regions in enumerate(parts) for _ in regions]
        out = self.embeddings(plan, [r for regions in parts for r in regions], t[torch.tensor(row_of, device=t.device)])
        rows, i = [], 0
        for row, regions in enumerate(parts):
            units = layout.cond_units if row < n else layout.uncond_units
            rows.append(torch.cat([out[i + k].repeat(units[k], 1) for k in range(len(regions))]))
            i += len(regions)
        empty = out.new_zeros((0, *out.shape[1:]))
        return (torch.stack(rows[:n]) if n else empty), (torch.stack(rows[n:]) if len(rows) > n else empty)

    def _clip_part(
        self, plan: PassPlan, call: DenoiserCall, cond: torch.Tensor, uncond: Any
    ) -> tuple[torch.Tensor, Any]:
        """The CLIP rows of ELLA + CLIP: the WebUI's own, or those of the user's separate CLIP text."""
        if call.clip_cond is not None:
            rows = torch.tensor(plan.cond_row_image, device=call.clip_cond.device)
            cond = call.clip_cond[rows].to(device=cond.device, dtype=cond.dtype)
        if call.clip_uncond is not None and uncond is not None:
            uncond = call.clip_uncond.to(device=cond.device, dtype=cond.dtype)
        return cond, uncond
