"""ELLA for the WebUI: the accordion on txt2img/img2img and the hooks that drive `ella_ext`.

Everything but the UI lives in `ella_ext` (see `ella_ext/webui.py` for the WebUI adapter).
"""

import gradio as gr

from modules import scripts

from ella_ext.args import (
    CONDITIONING_MODES,
    ELLAArgs,
    EMPHASIS_MODES,
    INFO_MODEL,
    LENGTH_MODES,
    LONG_PROMPT_POLICIES,
    NEGATIVE_MODES,
)
from ella_ext.discovery import KNOWN_ELLA, KNOWN_T5
from ella_ext.webui import ELLAExtension, register_callback, register_settings, register_xyz_axes

try:
    from modules.ui_components import InputAccordion
except ImportError:  # pragma: no cover - every supported WebUI has it
    InputAccordion = None

EXTENSION = ELLAExtension()


class ELLAScript(scripts.Script):
    sorting_priority = 15  # Forge/reForge: near ControlNet; A1111 ignores it

    def title(self):
        return "ELLA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from modules.ui_common import create_refresh_button

        EXTENSION.refresh_settings()
        defaults = ELLAArgs()
        models = EXTENSION.model_choices()
        encoders = EXTENSION.t5_choices()
        with InputAccordion(False, label="ELLA", elem_id=self.elem_id("enabled")) as enabled:
            with gr.Row():
                # "" rather than None when nothing is installed yet: the WebUI's infotext paste drops values
                # for components whose default is None (it converts to type(component.value))
                model = gr.Dropdown(label="ELLA model", choices=models, value=models[0] if models else "",
                                    allow_custom_value=True, elem_id=self.elem_id("model"))
                create_refresh_button(model, lambda: None, lambda: {"choices": EXTENSION.model_choices()},
                                      self.elem_id("model_refresh"))
                t5 = gr.Dropdown(label="T5 encoder", choices=encoders, value=encoders[0] if encoders else "",
                                 allow_custom_value=True, elem_id=self.elem_id("t5"))
                create_refresh_button(t5, lambda: None, lambda: {"choices": EXTENSION.t5_choices()},
                                      self.elem_id("t5_refresh"))
            # first run: what is missing, and one action that fetches it with its progress. A callable value is
            # evaluated at every page load, so the line is never older than the page (files added by hand or
            # through the API). Download with nothing to fetch says so; it also replaces what Check found damaged.
            models_status = gr.HTML(EXTENSION.models.status_html, elem_id=self.elem_id("models_status"))
            with gr.Row():
                download = gr.Button("Download", size="sm", elem_id=self.elem_id("download"))
                check = gr.Button("Check", size="sm", elem_id=self.elem_id("check"))
            check_report = gr.Markdown("", elem_id=self.elem_id("check_report"))
            download.click(fn=_download, inputs=[], outputs=[models_status, model, t5], show_progress=False)
            check.click(fn=_check, inputs=[model, t5], outputs=[check_report, models_status])
            with gr.Row():
                length = gr.Radio(label="Token length", choices=list(LENGTH_MODES.values()),
                                  value=LENGTH_MODES[defaults.length], elem_id=self.elem_id("length"))
                mode = gr.Radio(label="Conditioning", choices=list(CONDITIONING_MODES.values()),
                                value=CONDITIONING_MODES[defaults.mode], elem_id=self.elem_id("mode"))
                negative = gr.Radio(label="Negative prompt through", choices=list(NEGATIVE_MODES.values()),
                                    value=NEGATIVE_MODES[defaults.negative], elem_id=self.elem_id("negative"))
            with gr.Row():
                start = gr.Slider(label="ELLA start", minimum=0.0, maximum=1.0, step=0.01, value=defaults.start,
                                  elem_id=self.elem_id("start"))
                end = gr.Slider(label="ELLA end", minimum=0.0, maximum=1.0, step=0.01, value=defaults.end,
                                elem_id=self.elem_id("end"))
            # shown in ELLA + CLIP mode only; like the hires prompt, kept but unused in the other mode
            with gr.Row(visible=defaults.mode == "ella+clip") as clip_row:
                clip_prompt = gr.Textbox(label="CLIP prompt (empty: the prompt)", lines=2, value=defaults.clip_prompt,
                                         placeholder="Trigger words, embeddings, style tags: what CLIP encodes; T5 gets the prompt",
                                         elem_id=self.elem_id("clip_prompt"))
                clip_negative = gr.Textbox(label="CLIP negative prompt (empty: the negative prompt)", lines=2,
                                           value=defaults.clip_negative, elem_id=self.elem_id("clip_negative"))
            mode.change(fn=_clip_row_visibility, inputs=[mode], outputs=[clip_row], show_progress=False)
            with gr.Row():
                emphasis = gr.Radio(label="Prompt emphasis", choices=list(EMPHASIS_MODES.values()),
                                    value=EMPHASIS_MODES[defaults.emphasis], elem_id=self.elem_id("emphasis"))
                long_prompts = gr.Radio(label="Prompts over 128 T5 tokens", choices=list(LONG_PROMPT_POLICIES.values()),
                                        value=LONG_PROMPT_POLICIES[defaults.long_prompts],
                                        elem_id=self.elem_id("long_prompts"))

        components = [enabled, model, t5, length, mode, negative, start, end, emphasis, long_prompts,
                      clip_prompt, clip_negative]
        assert len(components) == len(ELLAArgs.field_names())
        self.infotext_fields = [
            (component, _infotext_field(index)) for index, component in enumerate(components)
        ]
        return components

    def process(self, p, *args):
        EXTENSION.process(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        EXTENSION.before_sampling(p)

    def postprocess(self, p, processed, *args):
        EXTENSION.postprocess(p)


def _download():
    """Download button: start (or join) the download of what is missing; stream its progress into the
    status line; at the end refresh both dropdowns and select the released files."""
    keep = gr.update()
    for status in EXTENSION.models.follow_download():
        if status["state"] == "running":
            yield EXTENSION.models.status_html(status), keep, keep
            continue
        line = EXTENSION.models.status_html(status)
        models, encoders = EXTENSION.model_choices(), EXTENSION.t5_choices()
        yield (
            line,
            gr.update(choices=models, value=KNOWN_ELLA) if KNOWN_ELLA in models else gr.update(choices=models),
            gr.update(choices=encoders, value=KNOWN_T5) if KNOWN_T5 in encoders else gr.update(choices=encoders),
        )


def _check(model, t5):
    """Check button: the report for the selected files, and the status line brought up to date (it says when
    Download would replace a released file the check found damaged)."""
    return EXTENSION.models.check(model, t5).to_markdown(), EXTENSION.models.status_html()


def _clip_row_visibility(mode_label):
    return gr.update(visible=mode_label == CONDITIONING_MODES["ella+clip"])


def _infotext_field(index):
    """Paste callback for one component: its value from pasted generation parameters."""

    def read(params):
        if index and INFO_MODEL not in params:
            return None  # no ELLA in this infotext: only the checkbox changes (to off)
        try:
            return ELLAArgs.from_infotext(params).ui_values()[index]
        except Exception:  # a malformed ELLA entry: leave the component as it is
            return None

    return read


register_callback("cfg_denoiser", EXTENSION.cfg_denoiser, name="ella", filename=__file__)
register_callback("ui_settings", register_settings, filename=__file__)
register_callback("script_unloaded", EXTENSION.runtime.unload_all, filename=__file__)
register_callback("app_started", EXTENSION.register_api, filename=__file__)
# The XYZ plot (a built-in script, loaded before extensions) builds its axis list in its ui(), which
# API-only WebUIs run before on_before_ui: add the axes now, and again (idempotent) before the UI.
register_xyz_axes()
register_callback("before_ui", register_xyz_axes, filename=__file__)
