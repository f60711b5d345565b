"""reForge (Panchovix/stable-diffusion-webui-reForge): old-Forge base with `ldm_patched`."""

from __future__ import annotations

import importlib.util
from typing import Any

from .base import forge_unet_model, unsupported
from .forge import Forge


class ReForge(Forge):
    name = "reforge"
    title = "reForge"
    memory_module = "ldm_patched.modules.model_management"

    def detect(self) -> bool:
        return importlib.util.find_spec("ldm_patched") is not None

    def unet_timesteps(self, denoiser: Any, sigma, sd_model: Any = None):
        # the nearest table index; its k-diffusion wrapper's sigma_to_t interpolates and is NOT what the U-Net sees
        sampling = getattr(forge_unet_model(denoiser, sd_model), "model_sampling", None)
        if sampling is None:
            raise unsupported(self, "forge_objects.unet.model has no model_sampling")
        return sampling.timestep(sigma)
