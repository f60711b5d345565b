"""WebUI backends: AUTOMATIC1111, Forge, reForge and Forge Classic, each one object (`base.Backend`).

A backend knows how to recognise its WebUI, the timestep its U-Net receives at a denoiser call, how ELLA
takes part in its memory management, how callbacks are registered on it, and the quirks of its sampler
that other code needs (asked as properties, never by comparing names). Adding a WebUI fork is one module
here and one entry in `BACKENDS`.

Detection only looks for packages (`importlib.util.find_spec`), so it costs nothing at start-up.
"""

from __future__ import annotations

from .a1111 import A1111
from .base import Backend
from .forge import Forge
from .forge_classic import ForgeClassic
from .reforge import ReForge

# most specific first: the first whose detect() is true is the running WebUI (Forge Classic is reForge's base
# with another callback API; reForge also has modules_forge; A1111 matches any WebUI)
BACKENDS: tuple[Backend, ...] = (ForgeClassic(), ReForge(), Forge(), A1111())


def detect() -> Backend:
    return next(backend for backend in BACKENDS if backend.detect())


def by_name(name: str) -> Backend:
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise KeyError(f"unknown WebUI backend {name!r}; known: {', '.join(b.name for b in BACKENDS)}")


__all__ = ["A1111", "BACKENDS", "Backend", "Forge", "ForgeClassic", "ReForge", "by_name", "detect"]
