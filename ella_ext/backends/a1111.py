"""AUTOMATIC1111 1.10 (and any WebUI no other backend claims)."""

from __future__ import annotations

from typing import Any

import torch

from ..memory_hooks import MemoryHooks
from .base import Backend


class A1111(Backend):
    name = "a1111"
    title = "AUTOMATIC1111"
    unet_through_inner_forward = True

    def detect(self) -> bool:
        return True

    def unet_timesteps(self, denoiser: Any, sigma, sd_model: Any = None):
        # k-diffusion samplers: the wrapper's interpolated sigma_to_t (1.6156 -> 499.5); timestep samplers
        # (DDIM, PLMS, UniPC) pass t itself as sigma
        to_t = getattr(denoiser.inner_model, "sigma_to_t", None)
        return to_t(sigma) if to_t is not None else sigma

    def memory_hooks(self) -> MemoryHooks:
        return WebUIMemory()


class WebUIMemory(MemoryHooks):
    """Memory through the WebUI's `modules.devices`; --lowvram/--medvram keep T5 off the GPU between encodes."""

    def compute_device(self):
        from modules import devices

        return torch.device(devices.device)

    def tsc_dtype(self, device):
        from modules import devices

        # fp16 on CUDA as the authors run it, unless the user runs the WebUI in full precision
        if device.type == "cuda" and getattr(devices, "dtype", torch.float16) != torch.float32:
            return torch.float16
        return torch.float32

    def empty_cache(self):
        from modules import devices

        devices.torch_gc()

    def force_offload(self):
        from modules import shared

        opts = shared.cmd_opts
        return bool(getattr(opts, "lowvram", False) or getattr(opts, "medvram", False))
