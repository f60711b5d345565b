"""Forge (lllyasviel/stable-diffusion-webui-forge, the `backend/` generation)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ..memory_hooks import MemoryHooks
from .a1111 import A1111, WebUIMemory
from .base import forge_unet_model, unsupported


class Forge(A1111):
    name = "forge"
    title = "Forge"
    unet_through_inner_forward = False
    memory_module = "backend.memory_management"

    def detect(self) -> bool:
        return importlib.util.find_spec("modules_forge") is not None

    def unet_timesteps(self, denoiser: Any, sigma, sd_model: Any = None):
        # every sampler: the nearest table index (1.6156 -> 500); timestep samplers convert t to sigma first
        predictor = getattr(forge_unet_model(denoiser, sd_model), "predictor", None)
        if predictor is None:
            raise unsupported(self, "forge_objects.unet.model has no predictor")
        return predictor.timestep(sigma)

    def memory_hooks(self) -> MemoryHooks:
        return ForgeMemory(self.memory_module)


class ForgeMemory(WebUIMemory):
    """Memory through a Forge-style memory manager: it frees room for T5 and knows the low-VRAM modes."""

    def __init__(self, module_name: str):
        self.module_name = module_name

    def _mm(self):
        return importlib.import_module(self.module_name)

    def make_room(self, nbytes, device):
        if device.type != "cpu":
            self._mm().free_memory(int(nbytes * 1.2), device)

    def empty_cache(self):
        self._mm().soft_empty_cache()

    def force_offload(self):
        state = getattr(self._mm(), "vram_state", None)
        return getattr(state, "name", "") in ("LOW_VRAM", "NO_VRAM")
