"""What ELLA does about each extension and WebUI feature that meets its conditioning.

One place answers "ELLA + X": what ELLA keeps of X's structure, what it adapts, and which
combinations it refuses (with the other extension's name and the fix). The rules, by extension:

* sd-webui-controlnet (A1111): prefixes every CLIP cond row with a marker token (all +1024 for
  cond, all -1024 for uncond) and reads it at every U-Net call. ELLA keeps any such leading marker
  tokens in front of its own tokens, in every mode (`split_markers`).
* A1111 "Pad prompt/negative prompt to be same length": would append an empty CLIP chunk to ELLA's
  64 tokens (or cut the CLIP negative to 64) when the negative goes through CLIP. ELLA turns the
  padding off for the denoiser calls whose conditioning it replaced (`suspend_padding`); calls
  outside ELLA's step range are padded as the user set.
* Regional Prompter, Attention mode (Matrix, Mask): cuts the context into units of 77 tokens (one
  CLIP chunk), region k taking the units its CLIP text fills (its `pt`/`nt` spans). ELLA encodes
  each region's text on its own (T5 and TSC), fills each of the region's units with that region's
  64 tokens, and has RP cut units of 64 tokens for the job (`regional_prompter_layout`). Every
  region's cross-attention then sees exactly ELLA's tokens for its text (a region spanning two
  units sees them twice, which leaves softmax attention unchanged); no padding token is needed.
  Needs ELLA only with the negative through ELLA. Prompt mode finds regions through CLIP token
  positions of words, which ELLA's tokens do not have: refused. Latent mode works as it is.
* Tiled Diffusion, Region Prompt Control: encodes each region's prompt with CLIP. Refused; tiles
  without regions work.
* AnimateDiff: its sampler forward assumes cond and uncond rows in one call when the WebUI's
  "batch cond/uncond" option is on, but a 64-token ELLA cond and a 77-token CLIP negative go in
  separate calls. For those calls only, ELLA runs its forward with the option off
  (`split_cond_uncond_for_animatediff`), which is AnimateDiff's own path for separate calls. Its callback
  freezes the step-0 conditioning for the whole run, so ELLA's callback runs after it
  (metadata.ini pins it; `check_callback_order` stops a run where the order is wrong). Prompt
  travel blends ELLA's own per-frame outputs with AnimateDiff's own blending function at every step.
* ADetailer: runs the scripts' `process()` on `copy(p)` (handled by the copy-of-p rule in the
  adapter); its inpaint pass uses ELLA only when "ella" is in its "Script names to apply to
  ADetailer" setting, and otherwise the image's infotext says the pass used CLIP (`ADETAILER_NOTE`).

Nothing here imports the WebUI: `p` and its scripts are read duck-typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from .args import ELLAArgs
from .errors import IncompatibleExtensionError


# --- conditioning structure that other extensions add ---------------------------------------------

MAX_MARKER_TOKENS = 4


def marker_count(cond: Any) -> int:
    """How many leading tokens of `cond` [rows, tokens, width] are marker tokens.

    A marker token is constant across its width and non-zero in every row (sd-webui-controlnet's
    +-1024 tokens). No text encoder output is constant over 768 features, so CLIP and ELLA tokens
    never count.
    """
    if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or cond.shape[0] == 0:
        return 0
    n = 0
    while n < min(MAX_MARKER_TOKENS, cond.shape[1] - 1):
        token = cond[:, n, :]
        first = token[:, :1]
        if not bool(((token == first).all() and (first != 0).all()).item()):
            break
        n += 1
    return n


def split_markers(cond: Any) -> tuple[Optional[torch.Tensor], Any]:
    """(marker tokens [rows, k, width] or None, the rest of `cond`)."""
    n = marker_count(cond)
    if n == 0:
        return None, cond
    return cond[:, :n], cond[:, n:]


def with_markers(markers: Optional[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
    if markers is None:
        return cond
    return torch.cat([markers.to(device=cond.device, dtype=cond.dtype), cond], dim=1)


# --- A1111's pad-cond/uncond options -----------------------------------------------------------

PADDING_METHODS = ("pad_cond_uncond", "pad_cond_uncond_v0")


def _no_padding(cond, uncond):
    return cond, uncond


def suspend_padding(denoiser: Any, replaced: bool) -> None:
    """Keep A1111 from padding conditioning that ELLA made (per denoiser, i.e. per job and pass).

    A1111 pads cond and uncond to one length right after the cfg-denoiser callbacks, through these
    two methods of its denoiser. An instance attribute shadows each for the calls ELLA replaced;
    it is removed again for the calls ELLA leaves to CLIP, which the user's setting then pads.
    """
    if denoiser is None:
        return
    for name in PADDING_METHODS:
        if replaced:
            if callable(getattr(type(denoiser), name, None)):
                denoiser.__dict__[name] = _no_padding
        else:
            denoiser.__dict__.pop(name, None)


# --- other extensions' scripts on this job -----------------------------------------------------

@dataclass(frozen=True)
class ScriptOnJob:
    title: str
    instance: Any
    args: tuple


def scripts_on_job(p: Any) -> Iterator[ScriptOnJob]:
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


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _regional_prompter(p: Any) -> Optional[Any]:
    rp = find_script(p, "Regional Prompter")
    if rp is None or not getattr(rp.instance, "active", False):
        return None  # its process() sets active/mode/calc/pt/nt for this job
    return rp.instance


def _rp_attention_globals(rp: Any) -> Optional[dict]:
    """The namespace of RP's attention module, whose TOKENSCON its hooked cross-attention reads."""
    process = getattr(type(rp), "process", None)
    hook = getattr(process, "__globals__", {}).get("hook_forwards")
    namespace = getattr(hook, "__globals__", None)
    return namespace if isinstance(namespace, dict) and isinstance(namespace.get("TOKENSCON"), int) else None


def regional_prompter_problem(p: Any, args: ELLAArgs) -> Optional[str]:
    rp = _regional_prompter(p)
    if rp is None:
        return None
    mode, calc = str(getattr(rp, "mode", "")), str(getattr(rp, "calc", ""))
    if "Pro" in mode:
        return (
            "Regional Prompter's Prompt mode finds each region through the CLIP token positions of its words, which "
            "ELLA's tokens do not have. Use a Matrix or Mask region (Attention or Latent), or disable ELLA."
        )
    if "Att" not in calc:
        return None
    if args.mode != "ella" or args.negative != "ella":
        return (
            "Regional Prompter's Attention mode with ELLA needs ELLA's Conditioning 'ELLA only' and 'Negative prompt "
            "through' ELLA (each region then gets its own ELLA tokens). Change those, or set Regional Prompter's "
            "Generation mode to 'Latent'."
        )
    if _rp_attention_globals(rp) is None or not isinstance(getattr(rp, "pt", None), list):
        return (
            "This version of Regional Prompter does not expose how its Attention mode cuts the conditioning, so ELLA "
            "cannot give each region its own tokens. Update Regional Prompter, or set its Generation mode to 'Latent'."
        )
    return None


@dataclass(frozen=True)
class RegionLayout:
    """How Regional Prompter's Attention mode cuts each row's context: units per region (its CLIP chunk
    counts), for the cond rows and the uncond rows."""

    cond_units: tuple[int, ...]
    uncond_units: tuple[int, ...]


_RP_UNIT_PATCHES: dict[int, tuple[dict, int]] = {}  # id(namespace) -> (namespace, RP's own unit)


def regional_prompter_layout(p: Any, unit_tokens: int) -> Optional[RegionLayout]:
    """The region layout for an ELLA job in RP's Attention mode, with RP set to cut `unit_tokens`-token
    units until `restore_regional_prompter` (called at every job's start and end). Call it after
    `check_companions`, which refuses the RP settings this cannot serve."""
    rp = _regional_prompter(p)
    namespace = _rp_attention_globals(rp) if rp is not None and "Att" in str(getattr(rp, "calc", "")) else None
    if namespace is None:
        return None
    _RP_UNIT_PATCHES.setdefault(id(namespace), (namespace, namespace["TOKENSCON"]))
    namespace["TOKENSCON"] = unit_tokens

    def units(spans):
        return tuple(int(end) - int(start) for start, end in spans)

    return RegionLayout(cond_units=units(rp.pt), uncond_units=units(getattr(rp, "nt", None) or [[0, 1]]))


def restore_regional_prompter() -> None:
    while _RP_UNIT_PATCHES:
        _, (namespace, unit) = _RP_UNIT_PATCHES.popitem()
        namespace["TOKENSCON"] = unit


def tiled_diffusion_problem(p: Any, args: ELLAArgs) -> Optional[str]:
    td = find_script(p, "Tiled Diffusion")
    delegate = getattr(td.instance, "delegate", None) if td is not None else None
    if delegate is None or not getattr(delegate, "enable_custom_bbox", False):
        return None
    return (
        "Tiled Diffusion's Region Prompt Control encodes each region's prompt with CLIP, so ELLA would not reach "
        "the regions. Turn off 'Enable Control' under Region Prompt Control (tiling alone works with ELLA), "
        "or disable ELLA."
    )


def animatediff_params(p: Any) -> Any:
    ad = find_script(p, "AnimateDiff")
    if ad is None or not ad.args:
        return None
    params = ad.args[0]
    return params if _field(params, "enable", False) else None


COMPANION_CHECKS: tuple[Callable[[Any, ELLAArgs], Optional[str]], ...] = (
    regional_prompter_problem,
    tiled_diffusion_problem,
)


def check_companions(p: Any, args: ELLAArgs) -> None:
    """Refuse, before sampling, the combinations with other extensions that cannot work.

    Called after every script's `process()`, when the other extensions have read their own
    arguments for this job.
    """
    for check in COMPANION_CHECKS:
        problem = check(p, args)
        if problem:
            raise IncompatibleExtensionError(problem)


# --- AnimateDiff at each denoiser call ----------------------------------------------------------

def check_callback_order(p: Any, denoiser: Any, backend: str) -> None:
    """Stop where AnimateDiff's cfg-denoiser callback would run after ELLA's (A1111's extension).

    Its callback keeps the conditioning it sees at step 0 for every later step, so after it ELLA
    must replace the conditioning again at every step; before it, ELLA's step-0 output would be
    used at every timestep.
    """
    if backend != "a1111" or int(getattr(denoiser, "step", 0) or 0) != 0 or animatediff_params(p) is None:
        return
    inner = getattr(denoiser, "inner_model", None)
    if inner is not None and getattr(inner, "original_forward", None) is None:
        raise IncompatibleExtensionError(
            "AnimateDiff had not set up the sampler when ELLA's step callback ran: either its motion module did not "
            "load (see AnimateDiff's message in the console), or its callback runs after ELLA's, which would freeze "
            "ELLA's first-step conditioning for every step. Keep the extension folder names 'sd-webui-animatediff' "
            "and 'sd-webui-ella' (ELLA's metadata.ini orders the callbacks by them) and reset any custom callback "
            "order in Settings."
        )


class _SeparateCallsForward:
    """AnimateDiff's sampler forward, run with "batch cond/uncond" off for calls that hold one half.

    With the option on, its forward indexes the uncond half at `frame + video_length`, which a call
    holding only the cond rows (or only the uncond rows) does not have. The option is a global read
    inside that forward, so it is switched off only for the duration of such a call.
    """

    def __init__(self, forward: Callable, options: Any, video_length: int):
        self.forward = forward
        self.options = options
        self.video_length = video_length

    def __call__(self, x_in, sigma_in, cond):
        data = getattr(self.options, "data", None)
        if x_in.shape[0] >= 2 * self.video_length or not isinstance(data, dict) or not data.get("batch_cond_uncond", False):
            return self.forward(x_in, sigma_in, cond=cond)
        data["batch_cond_uncond"] = False
        try:
            return self.forward(x_in, sigma_in, cond=cond)
        finally:
            data["batch_cond_uncond"] = True


def split_cond_uncond_for_animatediff(p: Any, denoiser: Any, options: Any) -> None:
    """Let AnimateDiff's hooked forward take ELLA's separate cond and CLIP-uncond calls (A1111).

    AnimateDiff hooks each sampler at its step 0, in its callback, which runs before ELLA's.
    """
    if int(getattr(denoiser, "step", 0) or 0) != 0:
        return
    params = animatediff_params(p)
    inner = getattr(denoiser, "inner_model", None)
    forward = getattr(inner, "__dict__", {}).get("forward") if inner is not None else None
    if params is None or forward is None or isinstance(forward, _SeparateCallsForward):
        return  # no AnimateDiff, it has not hooked this sampler, or already adapted
    video_length = int(_field(params, "video_length", 0) or 0)
    inner.forward = _SeparateCallsForward(forward, options, video_length)


def prompt_travel(p: Any) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """AnimateDiff's own keyframe blending for this job's cond rows (one per frame), if travel is on."""
    params = animatediff_params(p)
    scheduler = _field(params, "prompt_scheduler") if params is not None else None
    if scheduler is None or getattr(scheduler, "prompt_map", None) is None:
        return None
    video_length = int(_field(params, "video_length", 0) or 0)
    batch_size = int(_field(params, "batch_size", 0) or 0)
    closed_loop = video_length > batch_size and _field(params, "closed_loop", "") in ("R+P", "A")
    return lambda cond: scheduler.multi_cond(cond, closed_loop)


# --- ADetailer's inpaint pass ------------------------------------------------------------------

ADETAILER_NOTE = (
    "ELLA: ADetailer's inpaint pass used CLIP, not ELLA. To use ELLA there, add 'ella' to Settings -> ADetailer -> "
    "'Script names to apply to ADetailer'."
)


def is_adetailer_pass(p: Any) -> bool:
    return bool(getattr(p, "_ad_inner", False))
