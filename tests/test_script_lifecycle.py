"""The ELLA script inside the fake WebUI: injection, passes, backends, API, infotext, failures."""

import pytest
import torch
import webui_env
from webui_env import MODEL_NAME, T5_NAME, ella, payload, run

pytestmark = pytest.mark.usefixtures("fresh_webui_state")


# --- unchecked costs nothing ----------------------------------------------------------------------


def test_disabled_is_bit_identical_to_no_extension(webui):
    from modules import processing, shared

    status, with_ext = run(webui, payload(batch_size=2, n_iter=2, negative_prompt="blurry"))
    assert status == 200
    calls_with = [c.context for c in shared.sd_model.unet_calls]
    webui.model()
    p = processing.StableDiffusionProcessingTxt2Img(**payload(batch_size=2, n_iter=2, negative_prompt="blurry"))
    plain = processing.process_images(p)
    assert all(torch.equal(a, b) for a, b in zip(with_ext["images"], plain.images))
    assert all(c.shape[1] == 77 for c in calls_with)
    assert "ELLA" not in with_ext["info"]
    assert webui.extension.runtime.loaded_tsc is None  # nothing was even loaded


# --- injection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, sampler",
    [
        ("a1111", "Euler"),
        ("a1111", "DDIM"),
        ("forge", "Euler"),
        ("forge", "DDIM"),
        ("reforge", "Euler"),
        ("reforge", "DDIM"),
        ("forge-classic", "Euler"),
        ("forge-classic", "DDIM"),
    ],
)
def test_unet_gets_tsc_output_for_its_own_timestep(webui, backend, sampler):
    webui.set_backend(backend)
    model = webui.model()
    prompt = "a red cube on a glossy table"
    status, body = run(webui, payload(prompt, sampler_name=sampler) | {"alwayson_scripts": ella()})
    assert status == 200, body
    assert len(model.unet_calls) == 4  # cond and uncond batched together: same 64-token length
    for call in model.unet_calls:
        assert call.context.shape == (2, 64, 768)
        t = float(call.t[0])
        assert float(call.t[1]) == t
        expected_cond = webui_env.reference_conditioning(webui.models_dir, prompt, t)
        expected_uncond = webui_env.reference_conditioning(webui.models_dir, "", t)
        assert torch.allclose(call.context[0], expected_cond, atol=1e-4), (backend, sampler, t)
        assert torch.allclose(call.context[1], expected_uncond, atol=1e-4)
    ts = [float(c.t[0]) for c in model.unet_calls]
    if backend == "a1111" and sampler == "Euler":
        assert any(t != int(t) for t in ts)  # A1111's k-diffusion U-Net gets interpolated, fractional t
    else:
        assert all(t == int(t) for t in ts)
    assert f"ELLA: {MODEL_NAME} [" in body["info"] and f"ELLA T5: {T5_NAME}" in body["info"]


def test_batch_rows_align_with_prompts_and_negatives(webui):
    model = webui.model()
    prompts = ["a red cube", "a blue sphere", "a green cone"]
    negatives = ["blurry", "", "dark"]
    status, _ = run(webui, payload(prompts, negative_prompt=negatives, batch_size=3) | {"alwayson_scripts": ella()})
    assert status == 200
    call = model.unet_calls[0]
    t = float(call.t[0])
    assert call.context.shape == (6, 64, 768)
    for row, text in enumerate(prompts + negatives):
        assert torch.allclose(call.context[row], webui_env.reference_conditioning(webui.models_dir, text, t), atol=1e-4)


def test_extra_networks_and_styles_follow_the_webui(webui):
    model = webui.model()
    status, _ = run(
        webui, payload("a cat <lora:film:0.8> on a sofa", styles=["oil painting"]) | {"alwayson_scripts": ella()}
    )
    assert status == 200
    call = model.unet_calls[0]
    expected = webui_env.reference_conditioning(webui.models_dir, "a cat  on a sofa, oil painting", float(call.t[0]))
    assert torch.allclose(call.context[0], expected, atol=1e-4)


def test_and_prompt_gets_one_row_per_sub_prompt(webui):
    model = webui.model()
    status, _ = run(webui, payload("a red cube AND a blue sphere:0.5", batch_size=2) | {"alwayson_scripts": ella()})
    assert status == 200
    call = model.unet_calls[0]
    t = float(call.t[0])
    assert call.context.shape == (6, 64, 768)  # 2 images x 2 sub-prompts, then 2 uncond rows
    for row, text in enumerate(["a red cube", " a blue sphere"] * 2 + ["", ""]):
        assert torch.allclose(call.context[row], webui_env.reference_conditioning(webui.models_dir, text, t), atol=1e-4)


def test_batch_count_reuses_the_first_batch(webui):
    model = webui.model()
    status, body, stats = webui_env.run_with_stats(webui, payload(n_iter=3) | {"alwayson_scripts": ella()})
    assert status == 200 and len(body["images"]) == 3
    assert stats.tsc_calls == 4  # one batched call per step, first batch only
    assert stats.tsc_rows == 8  # cond + uncond per step
    assert stats.reused_rows == 2 * 12 - 8
    assert stats.texts_encoded == 2
    assert torch.equal(model.unet_calls[0].context, model.unet_calls[4].context)


def test_hires_pass_uses_hires_prompts(webui):
    from modules import shared

    for backend in ("a1111", "forge"):
        webui.set_backend(backend)
        model = webui.model()
        p = payload("a cat", enable_hr=True, hr_second_pass_steps=2, hr_prompt="a detailed cat", hr_cfg=7.0)
        status, body = run(webui, p | {"alwayson_scripts": ella()})
        assert status == 200, body
        first, hires = model.unet_calls[:4], model.unet_calls[4:]
        assert len(hires) >= 1
        t = float(hires[0].t[0])
        assert torch.allclose(
            hires[0].context[0], webui_env.reference_conditioning(webui.models_dir, "a detailed cat", t), atol=1e-4
        )
        assert torch.allclose(
            first[0].context[0],
            webui_env.reference_conditioning(webui.models_dir, "a cat", float(first[0].t[0])),
            atol=1e-4,
        )
    assert shared.backend.name == "forge"


def test_forge_cfg_one_has_no_uncond(webui):
    webui.set_backend("forge")
    model = webui.model()
    status, _ = run(webui, payload(cfg_scale=1.0) | {"alwayson_scripts": ella()})
    assert status == 200
    assert all(c.context.shape == (1, 64, 768) for c in model.unet_calls)


def test_img2img(webui):
    model = webui.model()
    status, body = run(
        webui,
        payload(denoising_strength=0.5, init_latent=torch.zeros(1, 4, 8, 8)) | {"alwayson_scripts": ella()},
        img2img=True,
    )
    assert status == 200
    assert len(model.unet_calls) == 2 and all(c.context.shape[1] == 64 for c in model.unet_calls)
    assert "ELLA:" in body["info"]


def test_ella_plus_clip_and_clip_negative(webui):
    model = webui.model()
    status, _ = run(webui, payload(negative_prompt="blurry") | {"alwayson_scripts": ella(mode="ella+clip")})
    assert status == 200
    call = model.unet_calls[0]
    assert call.context.shape == (2, 64 + 77, 768)
    clip_cond = model.get_learned_conditioning(["a red cube on a glossy table"])[0]
    assert torch.equal(call.context[0, 64:], clip_cond)
    model = webui.model()
    status, _ = run(webui, payload(negative_prompt="blurry") | {"alwayson_scripts": ella(negative="clip")})
    assert status == 200
    cond_call, uncond_call = model.unet_calls[0], model.unet_calls[1]  # lengths differ: separate U-Net calls
    assert cond_call.context.shape == (1, 64, 768) and uncond_call.context.shape == (1, 77, 768)
    assert torch.equal(uncond_call.context[0], model.get_learned_conditioning(["blurry"])[0])


def test_step_range_leaves_clip_outside(webui):
    model = webui.model()
    status, body = run(webui, payload(steps=10) | {"alwayson_scripts": ella(start=0.0, end=0.5)})
    assert status == 200
    lengths = [c.context.shape[1] for c in model.unet_calls]
    assert lengths == [64] * 6 + [77] * 4  # steps 0..5 (fraction <= 0.5) ELLA, the rest CLIP
    assert "ELLA steps: 0-0.5" in body["info"]


# --- failing loudly -------------------------------------------------------------------------------


def test_sdxl_is_refused_by_name_before_sampling(webui):
    model = webui.model("sdxl")
    status, body = run(webui, payload() | {"alwayson_scripts": ella()})
    assert status == 422
    assert "fake-sdxl.safetensors" in body["errors"] and "SDXL" in body["errors"]
    assert model.unet_calls == []  # no image was made


def test_missing_model_fails_the_job_with_the_message(webui):
    model = webui.model()
    status, body = run(webui, payload() | {"alwayson_scripts": ella(model="not-there")})
    assert status == 422 and body["error"] == "ModelPathError"
    assert "'not-there' was not found" in body["errors"] and MODEL_NAME in body["errors"]
    assert model.unet_calls == []


@pytest.mark.parametrize(
    "args, message",
    [
        ([{"enabled": True, "model": MODEL_NAME, "t5": T5_NAME, "bogus": 1}], "Unknown ELLA argument"),
        ([{"enabled": True, "model": MODEL_NAME, "t5": T5_NAME, "start": "early"}], "'start' must be a number"),
        (["yes"], "'enabled' must be true or false"),
    ],
)
def test_bad_api_args_are_422_with_a_message(webui, args, message):
    model = webui.model()
    status, body = run(webui, payload() | {"alwayson_scripts": {"ELLA": {"args": args}}})
    assert status == 422 and message in body["errors"] and "Traceback" not in body["errors"]
    assert model.unet_calls == []


def test_positional_api_args(webui):
    model = webui.model()
    args = [True, MODEL_NAME, T5_NAME, "Fixed 128", "ELLA only", "ELLA"]
    status, body = run(webui, payload() | {"alwayson_scripts": {"ELLA": {"args": args}}})
    assert status == 200 and "ELLA length: Fixed 128" in body["info"]
    call = model.unet_calls[0]
    expected = webui_env.reference_conditioning(
        webui.models_dir, "a red cube on a glossy table", float(call.t[0]), fixed=True
    )
    assert torch.allclose(call.context[0], expected, atol=1e-4)


def test_api_defaults_pick_the_installed_models(webui):
    status, body = run(webui, payload() | {"alwayson_scripts": {"ELLA": {"args": [True]}}})
    assert status == 200 and f"ELLA: {MODEL_NAME}" in body["info"]


def test_exception_mid_job_then_next_jobs_are_clean(webui):
    model = webui.model()
    model.fail_at_unet_call = 2
    status, body = run(webui, payload() | {"alwayson_scripts": ella()})
    assert status == 500 and "simulated U-Net failure" in body["errors"]
    # next job without ELLA equals a job on a fresh WebUI; a job with ELLA works
    model = webui.model()
    status, plain = run(webui, payload())
    assert status == 200 and all(c.context.shape[1] == 77 for c in model.unet_calls)
    fresh = webui.model()
    from modules import processing

    reference = processing.process_images(processing.StableDiffusionProcessingTxt2Img(**payload()))
    assert torch.equal(plain["images"][0], reference.images[0])
    assert len(fresh.unet_calls) == 4
    status, _ = run(webui, payload() | {"alwayson_scripts": ella()})
    assert status == 200


def test_interrupt_mid_job(webui):
    from modules import shared

    model = webui.model()
    original = model.apply_model

    def interrupting(x, t, context):
        if len(model.unet_calls) == 1:
            shared.state.interrupted = True
        return original(x, t, context)

    model.apply_model = interrupting
    status, body = run(webui, payload(n_iter=2) | {"alwayson_scripts": ella()})
    assert status == 200 and len(model.unet_calls) == 2  # stopped after the interrupt
    model = webui.model()
    status, _ = run(webui, payload() | {"alwayson_scripts": ella()})
    assert status == 200 and len(model.unet_calls) == 4


def test_callback_ignores_other_processing_objects(webui):
    """A p that did not enable ELLA (e.g. ADetailer's own pass, or a copy) is never touched."""
    import copy

    from modules import processing, script_callbacks

    model = webui.model()
    api = webui.api()
    status, _ = api.txt2img(payload() | {"alwayson_scripts": ella()}, sd_model=model)
    leftover = copy.copy(api.last_p)  # a copy of a finished ELLA job's p
    assert not hasattr(leftover, "_ella_job")
    import weakref

    from ella_ext.args import ELLAArgs
    from ella_ext.webui.job import ELLAJob

    owner = processing.StableDiffusionProcessingTxt2Img(**payload())
    for stale in (ELLAJob(ELLAArgs(enabled=True), weakref.ref(owner)), "junk"):
        inner = processing.StableDiffusionProcessingTxt2Img(**payload())
        inner._ella_job = stale  # another p's job (a shallow copy carries it along) or junk
        params = script_callbacks.CFGDenoiserParams(
            None,
            None,
            torch.ones(1),
            0,
            4,
            torch.zeros(1, 77, 768),
            torch.zeros(1, 77, 768),
            type("D", (), {"p": inner})(),
        )
        webui.extension.cfg_denoiser(params)
        assert params.text_cond.shape == (1, 77, 768)


def test_infotext_paste_restores_the_accordion(webui):
    from modules import infotext_utils

    clip_prompt = 'sks style, (masterpiece:1.2), "quoted"\nsecond line'
    status, body = run(
        webui,
        payload()
        | {
            "alwayson_scripts": ella(
                length="fixed",
                mode="ella+clip",
                start=0.1,
                end=0.9,
                emphasis="ignore",
                clip_prompt=clip_prompt,
                clip_negative="blurry",
            )
        },
    )
    assert status == 200
    script = webui.api().runners[False].alwayson_scripts[0]
    params = infotext_utils.parse_generation_parameters(body["info"])
    values = list(infotext_utils.paste(script, params).values())
    assert values == [
        True,
        MODEL_NAME,
        T5_NAME,
        "Fixed 128",
        "ELLA + CLIP",
        "ELLA",
        0.1,
        0.9,
        "Ignore",
        "Truncate to 128",
        clip_prompt,
        "blurry",
        False,
    ]
    # an infotext without ELLA turns the accordion off and leaves the rest alone
    off = list(infotext_utils.paste(script, {"Steps": "20"}).values())
    assert off == [False] + [None] * 12


def test_infotext_field_of_the_api_reproduces_the_job(webui):
    status, body = run(webui, payload() | {"alwayson_scripts": ella(length="fixed")})
    model = webui.model()
    status2, body2 = run(webui, payload() | {"infotext": body["info"]})
    assert status2 == 200 and "ELLA length: Fixed 128" in body2["info"]
    assert all(c.context.shape[1] == 64 for c in model.unet_calls)


def test_settings_are_registered(webui):
    from modules import shared

    keys = set(shared.opts.data_labels)
    assert {
        "ella_model_dirs",
        "ella_t5_dirs",
        "ella_t5_precision",
        "ella_t5_residency",
        "ella_feature_cache_entries",
        "ella_feature_cache_mb",
        "ella_hub_download",
    } <= keys
    assert all(info.section == ("ella", "ELLA") for k, info in shared.opts.data_labels.items() if k.startswith("ella_"))


def test_ui_lists_models_and_refreshes(webui, tmp_path):
    from modules import ui_common

    script = webui.module.ELLAScript()
    script.is_img2img = False
    components = script.ui(False)
    assert [c.label for c in components[1:3]] == ["ELLA model", "T5 encoder"]
    assert components[1].choices == [MODEL_NAME] and components[1].value == MODEL_NAME
    assert components[2].choices == [T5_NAME]
    extra = webui.models_dir / "ELLA" / "another.safetensors"
    extra.write_bytes((webui.models_dir / "ELLA" / f"{MODEL_NAME}.safetensors").read_bytes())
    try:
        ui_common.refresh_buttons[-2].refresh()
        assert components[1].choices == ["another", MODEL_NAME]
    finally:
        extra.unlink()
    assert all(c.elem_id and c.label for c in components)


def test_ui_built_before_any_model_was_installed(webui, tmp_path):
    """Found on real A1111/Forge: a None dropdown default made the WebUI drop pasted model names."""
    from modules import paths, shared

    saved = paths.models_path
    paths.models_path = str(tmp_path)  # no models/ELLA yet when the UI is built
    try:
        api = webui.api()
    finally:
        paths.models_path = saved
    runner = api.runners[False]
    script = runner.alwayson_scripts[0]
    model_box, t5_box = runner.inputs[script.args_from + 1 : script.args_from + 3]
    assert model_box.value == "" and t5_box.value == "" and model_box.choices == []
    # the models were installed after start: a job that names none uses the first ones found
    status, body = api.txt2img(payload() | {"alwayson_scripts": {"ELLA": {"args": [True]}}}, sd_model=shared.sd_model)
    assert status == 200, body
    assert f"ELLA: {MODEL_NAME} [" in body["info"] and f"ELLA T5: {T5_NAME}" in body["info"]
    # pasting that infotext restores the names even though the UI defaults are empty
    status, again = api.txt2img(
        payload() | {"infotext": body["info"].replace(f"ELLA: {MODEL_NAME}", "ELLA: other-model")},
        sd_model=shared.sd_model,
    )
    assert status == 422 and "'other-model' was not found" in again["errors"]
    status, again = api.txt2img(payload() | {"infotext": body["info"]}, sd_model=shared.sd_model)
    assert status == 200 and f"ELLA: {MODEL_NAME} [" in again["info"]
