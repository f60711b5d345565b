"""What every WebUI backend answers; the defaults are AUTOMATIC1111's, which the forks inherit from."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import ConditioningError


class Backend:
    name = ""  # short id, e.g. "a1111"
    title = ""  # as users know it, for messages
    # The CFG denoiser runs the U-Net through `denoiser.inner_model(x, sigma, cond=...)`, the forward that
    # extensions such as AnimateDiff replace per sampler (A1111). Forge-based backends call the U-Net from
    # their own sampling function instead.
    unet_through_inner_forward = False

    def detect(self) -> bool:
        """Whether this is the running WebUI (cheap: no imports)."""
        raise NotImplementedError

    def unet_timesteps(self, denoiser: Any, sigma, sd_model: Any = None):
        """The timesteps the U-Net receives at this denoiser call (same length as `sigma`)."""
        raise NotImplementedError

    def memory_hooks(self):
        """How ELLA's runtime takes part in this WebUI's memory management (a `runtime.MemoryHooks`)."""
        raise NotImplementedError

    def register_callback(
        self, category: str, callback: Callable, *, filename: str, name: Optional[str] = None
    ) -> None:
        """`script_callbacks.on_<category>(callback)`, naming the calling file instead of finding it.

        The public `on_*` functions find the caller's file with `inspect.stack()`, which reads source
        context for every frame: about 80 ms a callback in a real WebUI start on 2 cores. `add_callback`
        takes the file directly; its name also follows the extension's folder, which `metadata.ini`'s
        callback order refers to.
        """
        from modules import script_callbacks

        callbacks = getattr(script_callbacks, "callback_map", {}).get(f"callbacks_{category}")
        add = getattr(script_callbacks, "add_callback", None)
        if callbacks is not None and add is not None:
            try:
                add(callbacks, callback, name=name, category=category, filename=filename)
                return
            except TypeError:  # a WebUI whose add_callback takes no filename
                pass
        register = getattr(script_callbacks, f"on_{category}")
        try:
            register(callback, name=name)
        except TypeError:  # a WebUI whose on_* take no name (the callback order then follows the load order)
            register(callback)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend>"


def forge_unet_model(denoiser: Any, sd_model: Any) -> Any:
    """The U-Net patcher's model on Forge-based backends: `sd_model.forge_objects.unet.model`."""
    model = sd_model if sd_model is not None else getattr(getattr(denoiser, "inner_model", None), "inner_model", None)
    return getattr(getattr(getattr(model, "forge_objects", None), "unet", None), "model", None)


def unsupported(backend: Backend, what: str) -> ConditioningError:
    return ConditioningError(
        f"ELLA cannot find the U-Net's timestep mapping on this {backend.title} model ({what}); this WebUI "
        "version is not supported."
    )
