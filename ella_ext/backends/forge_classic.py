"""Forge Classic (Haoming02/sd-webui-forge-classic, branch `classic`): reForge's base, older callback API.

It has reForge's `ldm_patched` model (the U-Net's t is `model_sampling.timestep(sigma)`) and memory manager,
and names itself in `modules_forge/forge_version.py` (`version = "classic"`). Its `add_callback(callbacks,
fun)` takes no name or file and finds the caller's file with `inspect.stack()` (about 80 ms a callback on 2
cores), and its `on_*` functions take no name; ELLA appends its `ScriptCallback(file, callback)` itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Optional

from .reforge import ReForge


class ForgeClassic(ReForge):
    name = "forge-classic"
    title = "Forge Classic"

    def detect(self) -> bool:
        if importlib.util.find_spec("ldm_patched") is None or importlib.util.find_spec("modules_forge") is None:
            return False
        try:
            version = importlib.import_module("modules_forge.forge_version").version
        except (ImportError, AttributeError):
            return False
        return str(version).strip().lower() == "classic"

    def register_callback(
        self, category: str, callback: Callable, *, filename: str, name: Optional[str] = None
    ) -> None:
        from modules import script_callbacks

        callbacks = getattr(script_callbacks, "callback_map", {}).get(f"callbacks_{category}")
        entry = getattr(script_callbacks, "ScriptCallback", None)
        if callbacks is not None and entry is not None and getattr(entry, "_fields", None) == ("script", "callback"):
            callbacks.append(entry(filename, callback))
            return
        super().register_callback(category, callback, filename=filename, name=name)
