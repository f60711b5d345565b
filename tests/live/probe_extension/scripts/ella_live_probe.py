"""Test-only WebUI extension: records what every U-Net and control-model call receives.

Install it beside sd-webui-ella only to run tests/live (symlink tests/live/probe_extension into the
WebUI's extensions folder). It adds two routes:

    POST /ella-probe/v1/reset          start recording afresh
    POST /ella-probe/v1/dump {"path"}  torch.save the recorded calls to that file (same machine)

Each record: {"module": "unet" | "control", "t": [N], "context": [N, tokens, width]}. The U-Net is
hooked before every sampling pass (A1111: sd_model.model.diffusion_model; Forge/reForge: the
U-Net patcher's model); control models are found by class name when a pass starts and at the
first U-Net call after a reset.

With Regional Prompter in Attention mode, its attention function is wrapped too: for the first
cross-attention layer it runs, each region's call is recorded as {"module": "rp_region",
"unet_call": index of the U-Net call, "context": what that region's attention got, "x": the
layer's input, "out": its output}, and the layer's weights once as {"module": "rp_weights", ...}.
With Forge Couple (Forge), the keys its attention patch hands each region are recorded ("couple_keys").
"""

import gc

import torch
from modules import script_callbacks, scripts

RECORDS = []
HOOKED = {}  # id(module) -> (handle, weakref-free name)
CONTROL_CLASSES = ("ControlNet", "ControlNetModel", "ControlModel")


def hook_control_models():
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.nn.Module) and type(obj).__name__ in CONTROL_CLASSES:
                _hook(obj, "control")
        except ReferenceError:
            continue


def _record(kind):
    def hook(module, args, kwargs):
        if kind == "unet" and not any(r["module"] == "unet" for r in RECORDS):
            hook_control_models()  # Forge loads its control models after the scripts' sampling hooks
        context = kwargs.get("context")
        if context is None and len(args) > 2 and kind == "unet":
            context = args[2]
        if context is None and kind == "control":
            context = args[3] if len(args) > 3 else None
        t = kwargs.get("timesteps")
        if t is None:
            t = kwargs.get("t")
        if t is None and len(args) > (1 if kind == "unet" else 2):
            t = args[1] if kind == "unet" else args[2]
        if isinstance(context, torch.Tensor):
            RECORDS.append(
                {
                    "module": kind,
                    "t": t.detach().float().cpu().reshape(-1)
                    if isinstance(t, torch.Tensor)
                    else torch.tensor([float("nan")]),
                    "context": context.detach().float().cpu().clone(),
                }
            )

    return hook


def _hook(module, kind):
    if module is None or id(module) in HOOKED:
        return
    HOOKED[id(module)] = module.register_forward_pre_hook(_record(kind), with_kwargs=True)


def unet_of(sd_model):
    forge = getattr(sd_model, "forge_objects", None)
    if forge is not None:
        return forge.unet.model.diffusion_model
    return sd_model.model.diffusion_model


class ProbeScript(scripts.Script):
    sorting_priority = 10_000

    def title(self):
        return "ELLA live probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p, *args, **kwargs):
        _hook(unet_of(p.sd_model), "unet")
        hook_control_models()
        hook_regional_prompter(p)
        hook_forge_couple(p)


FIRST_LAYER = {}


def hook_regional_prompter(p):
    rp = next((s for s in getattr(p.scripts, "alwayson_scripts", []) if s.title() == "Regional Prompter"), None)
    if rp is None:
        return
    namespace = type(rp).process.__globals__["hook_forwards"].__globals__
    original = namespace["main_forward"]
    if getattr(original, "probe", False):
        return

    def main_forward(module, x, context, *args, **kwargs):
        out = original(module, x, context, *args, **kwargs)
        if FIRST_LAYER.setdefault("module", module) is module:
            if not any(r["module"] == "rp_weights" for r in RECORDS):
                RECORDS.append(
                    {
                        "module": "rp_weights",
                        "heads": module.heads,
                        **{k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()},
                    }
                )
            RECORDS.append(
                {
                    "module": "rp_region",
                    "unet_call": sum(r["module"] == "unet" for r in RECORDS) - 1,
                    "context": context.detach().float().cpu().clone(),
                    "x": x.detach().float().cpu().clone(),
                    "out": out.detach().float().cpu().clone(),
                }
            )
        return out

    main_forward.probe = True
    namespace["main_forward"] = main_forward


def hook_forge_couple(p):
    """Forge Couple's attention patch (Forge) returns, per cond chunk, the keys' context for the whole prompt and
    then for each region: record them at the first cross-attention layer of each U-Net call, as
    {"module": "couple_keys", "unet_call", "keys": [chunks, tokens, width], "cond_or_uncond"}."""
    unet = getattr(getattr(p.sd_model, "forge_objects", None), "unet", None)
    options = getattr(unet, "model_options", None) or {}
    patches = options.get("transformer_options", {}).get("patches", {}).get("attn2_patch")
    for i, patch in enumerate(patches or ()):
        if getattr(patch, "probe", False):
            continue

        def recorded(q, k, v, extra_options, _patch=patch):
            qs, ks, vs = _patch(q, k, v, extra_options)
            call = sum(r["module"] == "unet" for r in RECORDS) - 1
            if not any(r["module"] == "couple_keys" and r["unet_call"] == call for r in RECORDS):
                RECORDS.append(
                    {
                        "module": "couple_keys",
                        "unet_call": call,
                        "keys": ks.detach().float().cpu().clone(),
                        "cond_or_uncond": list(extra_options.get("cond_or_uncond", [])),
                    }
                )
            return qs, ks, vs

        recorded.probe = True
        patches[i] = recorded


def routes(_demo, app):
    from fastapi import Body

    @app.post("/ella-probe/v1/reset")
    def reset():
        RECORDS.clear()
        FIRST_LAYER.clear()
        return {"ok": True}

    @app.post("/ella-probe/v1/dump")
    def dump(path: str = Body(..., embed=True)):
        torch.save(list(RECORDS), path)
        return {"calls": len(RECORDS)}


def rehook(params):
    """At every step: a refiner switch (reForge rebuilds the model) brings a U-Net not seen at the pass start."""
    from modules import shared

    try:
        _hook(unet_of(shared.sd_model), "unet")
    except AttributeError:
        pass
    p = getattr(getattr(params, "denoiser", None), "p", None)
    if p is not None:  # Forge Couple may patch after the probe's own process_before_every_sampling
        hook_forge_couple(p)


script_callbacks.on_app_started(routes)
script_callbacks.on_cfg_denoiser(rehook)
