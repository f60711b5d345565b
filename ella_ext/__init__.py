"""ELLA for the Stable Diffusion WebUI: the library behind the extension.

Imports without the WebUI. Heavy modules (torch, transformers) load on first use of the names
that need them, so importing `ella_ext` costs nothing at WebUI start-up.
"""

from __future__ import annotations

import importlib

from .errors import (
    ArgumentError,
    ConditioningError,
    DeviceError,
    ELLAError,
    ModelFileError,
    ModelPathError,
    TextEncoderError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {
    "load_ella": "tsc",
    "TSC": "tsc",
    "TSCConfig": "tsc",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ella_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ArgumentError",
    "ConditioningError",
    "DeviceError",
    "ELLAError",
    "ModelFileError",
    "ModelPathError",
    "TextEncoderError",
    "UnsupportedModelError",
    *_LAZY,
]
