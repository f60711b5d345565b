"""The WebUI's prompt language inside a job: ELLA's text switches where CLIP's does, XYZ axes, long prompts."""

import copy
from collections import namedtuple

import factories
import pytest
import torch
import webui_env
from webui_env import MODEL_NAME, ella, payload, run

from ella_ext.prompt_syntax import prompt_schedule, text_at_step

pytestmark = pytest.mark.usefixtures("fresh_webui_state")


def reference(webui, text, t):
    return webui_env.reference_conditioning(webui.models_dir, text, t)


def cond_rows(model):
    """(t, ELLA part, CLIP part) of the first cond row of every U-Net call in ELLA + CLIP mode."""
    return [(float(c.t[0]), c.context[0, :64], c.context[0, 64:]) for c in model.unet_calls]


@pytest.mark.parametrize("backend", ["a1111", "forge", "reforge"])
@pytest.mark.parametrize(
    "prompt, steps",
    [
        ("a [red cube:blue sphere:2] on a table", 5),
        ("a [red cube:blue sphere:0.5] on a table", 6),
        ("a [cat|dog|bird] in a field", 5),
        ("a [small ::3]house", 4),
    ],
)
def test_ella_text_switches_at_the_step_clip_switches(webui, backend, prompt, steps):
    """ELLA + CLIP puts both conditionings in one context: per call, ELLA's text must be CLIP's text."""
    webui.set_backend(backend)
    model = webui.model()
    status, _ = run(webui, payload(prompt, steps=steps) | {"alwayson_scripts": ella(mode="ella+clip")})
    assert status == 200
    schedule = prompt_schedule(prompt, steps)
    assert len({text for _, text in schedule}) > 1
    texts = [text_at_step(schedule, step) for step in range(steps)]  # the WebUI's counter starts at 0
    clip = {text: model.get_learned_conditioning([text])[0] for text in texts}
    calls = cond_rows(model)
    assert len(calls) == steps
    for (t, ella_part, clip_part), text in zip(calls, texts):
        assert torch.equal(clip_part, clip[text])  # the WebUI's own CLIP switch...
        assert torch.allclose(ella_part, reference(webui, text, t), atol=1e-4)  # ...and ELLA's, at the same step


def test_each_scheduled_text_is_encoded_once_per_job(webui):
    p = payload("a [cat|dog] on a [sofa:bed:0.5]", steps=8, batch_size=2, n_iter=2) | {"alwayson_scripts": ella()}
    status, _, stats = webui_env.run_with_stats(webui, p)
    assert status == 200
    # cat/dog x sofa/bed = 4 texts, plus the empty negative
    assert stats.texts_encoded == 5


def test_hires_pass_schedule_counts_on_from_the_first_pass(webui):
    model = webui.model()
    prompt = "a [cat:dog:6] on a sofa"  # first pass (4 steps): cat throughout; hires: cat to its step 2, then dog
    p = payload(prompt, steps=4, enable_hr=True, hr_second_pass_steps=8, denoising_strength=0.75, hr_cfg=7.0)
    status, _ = run(webui, p | {"alwayson_scripts": ella(mode="ella+clip")})
    assert status == 200
    candidates = {text: model.get_learned_conditioning([text])[0] for text in ("a cat on a sofa", "a dog on a sofa")}
    texts = []
    for t, ella_part, clip_part in cond_rows(model):
        text = next(k for k, v in candidates.items() if torch.equal(v, clip_part))  # what the WebUI gave CLIP
        assert torch.allclose(ella_part, reference(webui, text, t), atol=1e-4)
        texts.append(text)
    assert texts[:4] == ["a cat on a sofa"] * 4
    hires = texts[4:]
    assert len(hires) >= 4 and hires[:3] == ["a cat on a sofa"] * 3 and set(hires[3:]) == {"a dog on a sofa"}
    assert prompt_schedule(prompt, 4, 8) == [(2, "a cat on a sofa"), (8, "a dog on a sofa")]


def test_emphasis_reaches_the_unet_and_ignore_drops_it(webui):
    model = webui.model()
    run(webui, payload("a (red:1.6) cube on a glossy table") | {"alwayson_scripts": ella(emphasis="no norm")})
    weighted = model.unet_calls[0].context[0]
    t = float(model.unet_calls[0].t[0])
    plain = reference(webui, "a red cube on a glossy table", t)
    assert not torch.allclose(weighted, plain, atol=1e-4)
    model = webui.model()
    status, body = run(
        webui, payload("a (red:1.6) cube on a glossy table") | {"alwayson_scripts": ella(emphasis="ignore")}
    )
    assert status == 200 and "ELLA emphasis: Ignore" in body["info"]
    assert torch.allclose(model.unet_calls[0].context[0], plain, atol=1e-4)


def test_long_prompt_truncation_is_reported(webui):
    long = " ".join(factories.dpg_prompts(3))
    model = webui.model()
    status, body = run(webui, payload(long) | {"alwayson_scripts": ella()})
    assert status == 200 and "ELLA truncated: True" in body["info"]
    t = float(model.unet_calls[0].t[0])
    assert torch.allclose(
        model.unet_calls[0].context[0], webui_env.reference_conditioning(webui.models_dir, long, t), atol=1e-4
    )
    model = webui.model()
    status, body = run(webui, payload(long) | {"alwayson_scripts": ella(long_prompts="keep")})
    assert status == 200 and "ELLA truncated" not in body["info"] and "ELLA long prompts: Keep" in body["info"]
    kept = webui_env.reference_conditioning(webui.models_dir, long, t, truncate=False)
    assert torch.allclose(model.unet_calls[0].context[0], kept, atol=1e-4)
    status, body = run(webui, payload("short") | {"alwayson_scripts": ella()})
    assert "ELLA truncated" not in body["info"]


# --- XYZ plot -------------------------------------------------------------------------------------

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])


@pytest.fixture
def xyz(webui):
    import xyz_grid
    from modules import script_callbacks, scripts

    saved = list(xyz_grid.axis_options)
    scripts.scripts_data.append(ScriptClassData(xyz_grid.Script, "scripts/xyz_grid.py", ".", xyz_grid))
    try:
        script_callbacks.before_ui_callback()
        script_callbacks.before_ui_callback()  # a UI reload must not add the axes twice
        yield xyz_grid
    finally:
        scripts.scripts_data.clear()
        xyz_grid.axis_options[:] = saved


def test_xyz_axes_are_registered_once(xyz):
    labels = [o.label for o in xyz.axis_options]
    ella_labels = [label for label in labels if label.startswith("ELLA")]
    assert ella_labels == ["ELLA: on/off", "ELLA: token length", "ELLA: conditioning", "ELLA: start", "ELLA: end"]
    by_label = {o.label: o for o in xyz.axis_options}
    assert by_label["ELLA: token length"].choices() == ["Flexible", "Fixed 128"]
    assert by_label["ELLA: start"].type is float


def test_xyz_cells_apply_to_their_own_copy_of_p(webui, xyz):
    """XYZ copies p per cell and calls the axis's apply; each cell's job must use its own values."""
    from modules import processing, shared

    api = webui.api()
    runner = api.runners[False]
    base = payload("a red cube")
    script_args = api.init_script_args(
        runner, {"alwayson_scripts": {"ELLA": {"args": [{"enabled": False, "model": MODEL_NAME}]}}}
    )
    p = processing.StableDiffusionProcessingTxt2Img(
        **base, sd_model=shared.sd_model, scripts=runner, script_args=script_args
    )
    axes = {o.label: o for o in xyz.axis_options}
    cells = [("Off", "Flexible"), ("On", "Flexible"), ("On", "Fixed 128")]
    lengths, infos = [], []
    model = p.sd_model
    for on, length in cells:
        model.unet_calls.clear()
        pc = copy.copy(p)
        axes["ELLA: on/off"].apply(pc, on, [])
        axes["ELLA: token length"].apply(pc, length, [])
        processed = processing.process_images(pc)
        lengths.append(model.unet_calls[0].context.shape[1])
        infos.append(processed.info)
    assert lengths == [77, 64, 64]
    assert "ELLA" not in infos[0] and "ELLA length: Flexible" in infos[1] and "ELLA length: Fixed 128" in infos[2]
    assert not hasattr(p, "_ella_overrides")  # the template p is untouched


def test_xyz_start_end_axes(webui, xyz):
    from modules import processing, shared

    api = webui.api()
    runner = api.runners[False]
    script_args = api.init_script_args(runner, {"alwayson_scripts": ella()})
    p = processing.StableDiffusionProcessingTxt2Img(
        **payload(steps=10), sd_model=shared.sd_model, scripts=runner, script_args=script_args
    )
    axes = {o.label: o for o in xyz.axis_options}
    model = p.sd_model
    pc = copy.copy(p)
    axes["ELLA: end"].apply(pc, 0.3, [])
    processing.process_images(pc)
    assert [c.context.shape[1] for c in model.unet_calls] == [64] * 4 + [77] * 6


# --- what ELLA could not do is said on the image --------------------------------------------------


def test_ignored_emphasis_is_said_in_infotext_and_comments(webui, monkeypatch):
    """A tokenizer without offsets (A1111's tokenizers 0.13 with an unreadable tokenizer.json and no
    spiece.model conversion): the reason reaches the UI comments and the image's infotext."""
    import dataclasses

    from ella_ext import t5 as t5mod

    tokenize = t5mod.T5TextEncoder.tokenize

    def without_offsets(self, *args, **kwargs):
        self.tokenizer_note = "the T5 folder 'x' has no fast tokenizer (reason), so prompt emphasis is ignored."
        return dataclasses.replace(tokenize(self, *args, **kwargs), offsets=None)

    monkeypatch.setattr(t5mod.T5TextEncoder, "tokenize", without_offsets)
    status, body = run(webui, payload("a (glossy:1.5) teapot of emphasis") | {"alwayson_scripts": ella()})
    assert status == 200, body
    assert "ELLA emphasis ignored: no fast T5 tokenizer" in body["info"]
    assert "has no fast tokenizer (reason), so prompt emphasis is ignored" in body["comments"]
    status, body = run(webui, payload("a glossy teapot without emphasis") | {"alwayson_scripts": ella()})
    assert status == 200 and "ELLA emphasis ignored" not in body["info"]


def test_xyz_axes_exist_without_the_ui(webui, tmp_path):
    """API-only WebUIs (--nowebui) build the XYZ script's axis list before on_before_ui: ELLA adds its
    axes when scripts/ella.py loads, since the XYZ script (built in) is loaded before extensions."""
    import xyz_grid
    from modules import scripts

    saved = list(xyz_grid.axis_options)
    scripts.scripts_data.append(ScriptClassData(xyz_grid.Script, "scripts/xyz_grid.py", ".", xyz_grid))
    try:
        webui_env.load_script(webui.models_dir)  # no before_ui callback here
        assert [o.label for o in xyz_grid.axis_options if o.label.startswith("ELLA")] == [
            "ELLA: on/off",
            "ELLA: token length",
            "ELLA: conditioning",
            "ELLA: start",
            "ELLA: end",
        ]
    finally:
        scripts.scripts_data.clear()
        xyz_grid.axis_options[:] = saved
        webui.module = webui_env.load_script(webui.models_dir).module  # later tests use the callbacks' module
