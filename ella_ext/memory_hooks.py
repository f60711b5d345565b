"""How the host (the WebUI backend, or plain PyTorch) manages device memory: the interface `runtime` calls.

Its own module so that the backends, which the script creates at WebUI start-up, do not import the runtime
(and with it T5, the connector and the downloader) before the first job.
"""

from __future__ import annotations

import torch


class MemoryHooks:
    """How the host manages device memory. The default suits plain PyTorch; backends override."""

    def compute_device(self) -> torch.device:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def tsc_dtype(self, device: torch.device) -> torch.dtype:
        return torch.float16 if device.type == "cuda" else torch.float32

    def make_room(self, nbytes: int, device: torch.device) -> None:
        """Called before `nbytes` of model weights move to `device`."""

    def empty_cache(self) -> None:
        """Give memory freed by dropping tensors back to the device (after T5 moves off it or is unloaded)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def force_offload(self) -> bool:
        """True where the host runs in a low-memory mode and T5 must never wait on the GPU."""
        return False
