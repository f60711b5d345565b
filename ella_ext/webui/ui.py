"""The ELLA accordion on txt2img/img2img, built from the argument schema.

Each argument row of `ELLAArgs` becomes its component (by the row's `control`), laid out by `LAYOUT`; a
row the layout does not place gets a row of its own at the end, so a new argument needs no change here.
A group of rows that applies only under a condition (`Arg.applies_when`) is shown only then. The
components are returned in field order, which is the API's positional order.
"""

from __future__ import annotations

import html
import json
from typing import Any, Optional

from ..args import ARGS, INFO_MODEL, ELLAArgs
from ..discovery import KNOWN_ELLA, KNOWN_T5
from ..errors import ELLAError
from ..logs import log
from . import token_counter

MODEL_SETUP = "model setup"  # the first-run row: status line, Download and Check
CAPTION_UPSAMPLING = "caption upsampling"  # Expand for ELLA / Undo expand, and the `expand` checkbox
LAYOUT: tuple[Any, ...] = (
    ("model", "t5"),
    MODEL_SETUP,
    CAPTION_UPSAMPLING,
    ("length", "mode", "negative"),
    ("start", "end"),
    ("clip_prompt", "clip_negative"),
    ("emphasis", "long_prompts"),
)
ROWS = {row.name: row for row in ARGS}


def build(script, extension) -> list:
    """The accordion's components in field order (called from the script's ui())."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    extension.refresh_settings()
    placed = {name for group in LAYOUT if group not in SPECIAL_ROWS for name in group} | {"expand"}
    layout = list(LAYOUT) + [(row.name,) for row in ARGS if row.name not in placed and row.control != "accordion"]
    components: dict[str, Any] = {}
    enabled = ROWS["enabled"]
    with InputAccordion(enabled.default, label=enabled.label, elem_id=script.elem_id("enabled")) as accordion:
        components["enabled"] = accordion
        for group in layout:
            if group == MODEL_SETUP:
                _model_setup_row(script, extension, components)
                continue
            if group == CAPTION_UPSAMPLING:
                components["expand"] = _caption_upsampling_row(gr, script, extension)
                continue
            condition = _shared_condition(group)
            with gr.Row(visible=condition is None or ELLAArgs().applies(group[0])) as row_block:
                for name in group:
                    components[name] = _component(gr, script, extension, ROWS[name])
            if condition is not None:
                name, value = condition
                components[name].change(
                    fn=lambda label, v=value, r=ROWS[name]: gr.update(visible=r.parse(label) == v),
                    inputs=[components[name]],
                    outputs=[row_block],
                    show_progress=False,
                )
        token_counter.build(gr, script, extension, components)
        hints = {row.name: row.hint for row in ARGS if row.hint}
        gr.HTML(
            f'<div class="ella-hints" style="display: none" data-hints="{html.escape(json.dumps(hints))}"></div>',
            elem_id=script.elem_id("hints"),
        )
    ordered = [components[row.name] for row in ARGS]
    script.infotext_fields = [(component, _infotext_field(index)) for index, component in enumerate(ordered)]
    return ordered


SPECIAL_ROWS = (MODEL_SETUP, CAPTION_UPSAMPLING)


def _shared_condition(group):
    conditions = {ROWS[name].applies_when for name in group}
    return conditions.pop() if len(conditions) == 1 else None


def _component(gr, script, extension, row):
    elem_id = script.elem_id(row.name)
    if row.control in ("model", "t5"):
        from modules.ui_common import create_refresh_button

        choices = extension.model_choices if row.control == "model" else extension.t5_choices
        names = choices()
        # "" rather than None when nothing is installed yet: the WebUI's infotext paste drops values for
        # components whose default is None (it converts to type(component.value))
        dropdown = gr.Dropdown(
            label=row.label, choices=names, value=names[0] if names else "", allow_custom_value=True, elem_id=elem_id
        )
        create_refresh_button(
            dropdown, lambda: None, lambda: {"choices": choices()}, script.elem_id(f"{row.name}_refresh")
        )
        return dropdown
    if row.control == "radio":
        return gr.Radio(label=row.label, choices=row.kind.labels(), value=row.ui_value(row.default), elem_id=elem_id)
    if row.control == "slider":
        return gr.Slider(
            label=row.label, minimum=row.minimum, maximum=row.maximum, step=row.step, value=row.default, elem_id=elem_id
        )
    if row.control == "textbox":
        return gr.Textbox(
            label=row.label, lines=row.lines, value=row.default, placeholder=row.placeholder or None, elem_id=elem_id
        )
    if row.control == "checkbox":
        return gr.Checkbox(label=row.label, value=row.default, elem_id=elem_id)
    raise ValueError(f"ELLA argument '{row.name}' has an unknown control '{row.control}'")


def _model_setup_row(script, extension, components) -> None:
    """First run: what is missing, and one action that fetches it with its progress. A callable value is
    evaluated at every page load, so the line is never older than the page (files added by hand or through
    the API). Download with nothing to fetch says so; it also replaces what Check found damaged."""
    import gradio as gr

    setup = extension.model_setup
    status = gr.HTML(setup.status_html, elem_id=script.elem_id("models_status"))
    with gr.Row():
        download = gr.Button("Download", size="sm", elem_id=script.elem_id("download"))
        check = gr.Button("Check", size="sm", elem_id=script.elem_id("check"))
    report = gr.Markdown("", elem_id=script.elem_id("check_report"))

    def on_download():
        """Start (or join) the download of what is missing; stream its progress into the status line; at the
        end refresh both dropdowns and select the released files."""
        keep = gr.update()
        for snapshot in setup.follow_download():
            if snapshot["state"] == "running":
                yield setup.status_html(snapshot), keep, keep
                continue
            models, encoders = extension.model_choices(), extension.t5_choices()
            yield (
                setup.status_html(snapshot),
                gr.update(choices=models, value=KNOWN_ELLA) if KNOWN_ELLA in models else gr.update(choices=models),
                gr.update(choices=encoders, value=KNOWN_T5) if KNOWN_T5 in encoders else gr.update(choices=encoders),
            )

    def on_check(model, t5):
        """The report for the selected files, and the status line brought up to date (it says when Download
        would replace a released file the check found damaged)."""
        return setup.check(model, t5).to_markdown(), setup.status_html()

    download.click(
        fn=on_download, inputs=[], outputs=[status, components["model"], components["t5"]], show_progress=False
    )
    check.click(fn=on_check, inputs=[components["model"], components["t5"]], outputs=[report, status])


# --- caption upsampling ---------------------------------------------------------------------------

PROMPT_BOXES = {"prompt": "{tab}_prompt", "negative": "{tab}_neg_prompt"}  # the WebUI's elem_ids, per tab
UNDO_KEPT = 10  # expansions that Undo can step back through
BOXES_ATTR, EXPAND_ATTR = "_ella_prompt_boxes", "_ella_expand_wiring"


def seen_component(script, component, elem_id: Optional[str]) -> None:
    """Script.after_component: remember this tab's prompt boxes. The WebUI makes them before the scripts' ui(),
    so build() finds them; should a layout make them later, the button is wired when the prompt box comes."""
    tab = "img2img" if script.is_img2img else "txt2img"
    role = next((r for r, pattern in PROMPT_BOXES.items() if pattern.format(tab=tab) == elem_id), None)
    if role is None:
        return
    script.__dict__.setdefault(BOXES_ATTR, {})[role] = component
    wire = script.__dict__.get(EXPAND_ATTR)
    if wire is not None and role == "prompt":
        wire()


def _caption_upsampling_row(gr, script, extension):
    """Expand for ELLA rewrites this tab's prompt box through the settings' LLM (errors are a warning and the
    status line, never a blocked UI); Undo expand puts back the text from before, one expansion at a time (kept
    in a State: the textbox's own Ctrl+Z does not survive a value set by the server). The checkbox is the
    `expand` argument: the same rewrite at job time."""
    row = ROWS["expand"]
    with gr.Row():
        expand_button = gr.Button("Expand for ELLA", size="sm", elem_id=script.elem_id("expand_button"))
        undo_button = gr.Button("Undo expand", size="sm", visible=False, elem_id=script.elem_id("undo_expand"))
        checkbox = gr.Checkbox(label=row.label, value=row.default, elem_id=script.elem_id(row.name))
    status = gr.HTML("", elem_id=script.elem_id("expand_status"))
    history = gr.State([])
    on_expand, on_undo = expand_handlers(extension)

    def wire() -> None:
        boxes = script.__dict__.get(BOXES_ATTR) or {}
        prompt = boxes.get("prompt")
        if prompt is None or script.__dict__.get(EXPAND_ATTR) is None:
            return
        script.__dict__[EXPAND_ATTR] = None  # once
        negative = boxes.get("negative")
        inputs = [prompt, history] + ([negative] if negative is not None else [])
        expand_button.click(
            fn=on_expand, inputs=inputs, outputs=[prompt, history, status, undo_button], show_progress=False
        )
        undo_button.click(
            fn=on_undo, inputs=[history], outputs=[prompt, history, status, undo_button], show_progress=False
        )

    script.__dict__[EXPAND_ATTR] = wire
    wire()
    return checkbox


def expand_handlers(extension):
    """(on_expand(prompt, history, negative=""), on_undo(history)): each returns the updates of (prompt box,
    history, status line, Undo button)."""
    import gradio as gr

    keep = gr.update()

    def on_expand(prompt, history, negative=""):
        try:
            result = extension.expand(prompt or "", negative=negative or "", force=True)
        except ELLAError as exc:
            warning = getattr(gr, "Warning", None)  # a toast in Gradio >= 3.40; the status line says it anyway
            if warning is not None:
                warning(str(exc))
            return keep, keep, _status(str(exc), error=True), keep
        if not result.changed:
            return keep, keep, _status(" ".join(result.notices) or "The prompt is unchanged."), keep
        history = [*(history or []), result.original][-UNDO_KEPT:]
        said = " ".join(
            ("Expanded: edit the text as you like; Undo expand puts back the prompt from before.", *result.notices)
        )
        return result.prompt, history, _status(said), gr.update(visible=True)

    def on_undo(history):
        history = list(history or [])
        if not history:
            return keep, [], _status("Nothing to undo."), gr.update(visible=False)
        original = history.pop()
        return (
            original,
            history,
            _status("Restored the prompt from before the expansion."),
            gr.update(visible=bool(history)),
        )

    return on_expand, on_undo


def _status(text: str, error: bool = False) -> str:
    style = ' style="color: var(--error-text-color, #c00)"' if error else ""
    return f'<div class="ella-expand-status"{style}>{html.escape(text)}</div>'


def _infotext_field(index: int):
    """Paste callback for one component: its value from pasted generation parameters."""

    def read(params):
        if index and INFO_MODEL not in params:
            return None  # no ELLA in this infotext: only the checkbox changes (to off)
        try:
            return ELLAArgs.from_infotext(params).ui_values()[index]
        except Exception as exc:  # a malformed ELLA entry: leave the component as it is
            if index == 0:  # said once per paste, not once per component
                log.warning("ELLA: the pasted parameters' ELLA entries were not applied: %s", exc)
            return None

    return read
