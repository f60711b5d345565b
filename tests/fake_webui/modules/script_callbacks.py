"""Callback registry. As in the WebUI, each callback runs inside `except Exception`: errors are logged, not raised."""

from modules import errors

callbacks_cfg_denoiser = []
callbacks_ui_settings = []
callbacks_script_unloaded = []
callbacks_infotext_pasted = []
callbacks_before_ui = []
callbacks_app_started = []


class CFGDenoiserParams:
    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


def on_cfg_denoiser(callback, *, name=None):
    callbacks_cfg_denoiser.append(callback)


def on_ui_settings(callback, *, name=None):
    callbacks_ui_settings.append(callback)


def on_script_unloaded(callback, *, name=None):
    callbacks_script_unloaded.append(callback)


def on_infotext_pasted(callback, *, name=None):
    callbacks_infotext_pasted.append(callback)


def on_before_ui(callback, *, name=None):
    callbacks_before_ui.append(callback)


def on_app_started(callback, *, name=None):
    callbacks_app_started.append(callback)


def app_started_callback(demo, app):
    _run(callbacks_app_started, demo, app)


def before_ui_callback():
    _run(callbacks_before_ui)


def _run(callbacks, *args):
    for c in list(callbacks):
        try:
            c(*args)
        except Exception:
            errors.report(f"Error executing callback {c}", exc_info=True)


def cfg_denoiser_callback(params):
    _run(callbacks_cfg_denoiser, params)


def ui_settings_callback():
    _run(callbacks_ui_settings)


def script_unloaded_callback():
    _run(callbacks_script_unloaded)


def clear():
    for lst in (
        callbacks_cfg_denoiser,
        callbacks_ui_settings,
        callbacks_script_unloaded,
        callbacks_infotext_pasted,
        callbacks_before_ui,
        callbacks_app_started,
    ):
        lst.clear()
