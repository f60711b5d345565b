"""ELLA for the WebUI: the script the WebUI loads. Everything else lives in `ella_ext` (see `ella_ext/webui`)."""

from modules import scripts

from ella_ext.args import ELLAArgs
from ella_ext.webui import ui
from ella_ext.webui.extension import ELLAExtension
from ella_ext.webui.settings import register_settings
from ella_ext.webui.xyz import register_xyz_axes

EXTENSION = ELLAExtension()


class ELLAScript(scripts.Script):
    sorting_priority = 15  # Forge/reForge: near ControlNet; A1111 ignores it

    def title(self):
        return "ELLA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return ui.build(self, EXTENSION)

    def after_component(self, component, **kwargs):
        ui.seen_component(self, component, kwargs.get("elem_id") or getattr(component, "elem_id", None))

    def process(self, p, *args):
        EXTENSION.process(p, args)

    def before_process_batch(self, p, *args, **kwargs):
        EXTENSION.before_process_batch(p)

    def process_batch(self, p, *args, **kwargs):
        EXTENSION.process_batch(p)

    def process_before_every_sampling(self, p, *args, **kwargs):
        EXTENSION.before_sampling(p)

    def postprocess(self, p, processed, *args):
        EXTENSION.postprocess(p)


# named parameters in ELLAArgs' order, for extensions that map named script args by process()'s signature
ELLAScript.process.__signature__ = ELLAArgs.script_signature("self", "p")


def _register(category, callback, name=None):
    EXTENSION.backend.register_callback(category, callback, name=name, filename=__file__)


_register("cfg_denoiser", EXTENSION.cfg_denoiser, name="ella")
_register("ui_settings", register_settings)
_register("script_unloaded", EXTENSION.unload_all)
_register("app_started", EXTENSION.register_api)
# The XYZ plot (a built-in script, loaded before extensions) builds its axis list in its ui(), which
# API-only WebUIs run before on_before_ui: add the axes now, and again (idempotent) before the UI.
register_xyz_axes()
_register("before_ui", register_xyz_axes)
