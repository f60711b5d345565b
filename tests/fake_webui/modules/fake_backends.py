"""Fake-only: what distinguishes the WebUIs the fake behaves like, as flags (`shared.backend` is one of these).

Each flag is one difference read in that WebUI's source and seen on a running one (docs/webui_facts.md).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeBackend:
    name: str
    # the cfg-denoiser callback gets x and sigma expanded to [N_c + B] (cond rows, then uncond rows); else [B]
    expands_rows: bool
    # the U-Net runs through the k-diffusion wrapper's forward (which AnimateDiff replaces); else called directly
    unet_via_wrapper: bool
    # cond and uncond of unequal length are padded after the callbacks (the "Pad prompt" options)
    pads_after_callback: bool
    # the negative is skipped at CFG 1, and the hires pass has its own CFG (hr_cfg)
    skips_uncond_at_cfg_1: bool
    # process_before_every_sampling runs twice in the hires pass (the U-Net patcher is reset in between)
    repeats_hires_hook: bool
    # where the U-Net's timestep comes from: "sigma_to_t" (the wrapper), "predictor" or "model_sampling"
    timestep_source: str
    # timestep samplers (DDIM...) hand the callback t itself as "sigma"; else they convert t to sigma first
    timestep_samplers_pass_t: bool = False


A1111 = FakeBackend(
    "a1111",
    expands_rows=True,
    unet_via_wrapper=True,
    pads_after_callback=True,
    skips_uncond_at_cfg_1=False,
    repeats_hires_hook=False,
    timestep_source="sigma_to_t",
    timestep_samplers_pass_t=True,
)
FORGE = FakeBackend(
    "forge",
    expands_rows=False,
    unet_via_wrapper=False,
    pads_after_callback=False,
    skips_uncond_at_cfg_1=True,
    repeats_hires_hook=True,
    timestep_source="predictor",
)
REFORGE = FakeBackend(
    "reforge",
    expands_rows=False,
    unet_via_wrapper=False,
    pads_after_callback=False,
    skips_uncond_at_cfg_1=False,
    repeats_hires_hook=False,
    timestep_source="model_sampling",
)
# Forge Classic samples like reForge; its callback API differs (tests/test_backends.py)
FORGE_CLASSIC = FakeBackend(
    "forge-classic",
    expands_rows=False,
    unet_via_wrapper=False,
    pads_after_callback=False,
    skips_uncond_at_cfg_1=False,
    repeats_hires_hook=False,
    timestep_source="model_sampling",
)
BY_NAME = {b.name: b for b in (A1111, FORGE, REFORGE, FORGE_CLASSIC)}
