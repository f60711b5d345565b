"""ELLA beside other extensions (fake WebUI; the live suite runs the real ones): copies of `p`,
ControlNet's marker token, A1111's pad option, refused combinations, AnimateDiff, ADetailer."""

import copy
import gc

import fake_extensions
import pytest
import torch
import webui_env
from webui_env import MODEL_NAME, ella, payload

pytestmark = pytest.mark.usefixtures("fresh_webui_state")


def api_with(webui, *extensions):
    from modules.api import Api

    return Api([webui.module.ELLAScript, *extensions])


def run_api(api, p):
    from modules import shared

    return api.txt2img(p, sd_model=shared.sd_model)


def ref(webui, text, t):
    return webui_env.reference_conditioning(webui.models_dir, text, t)


def clip(text):
    from modules import shared

    return shared.sd_model.get_learned_conditioning([text])[0]


def no_ella_job_alive():
    from ella_ext.webui.job import ELLAJob

    gc.collect()
    return not [o for o in gc.get_objects() if type(o) is ELLAJob]


def new_p(api, alwayson, **kw):
    from modules import processing, shared

    runner = api.runners[False]
    script_args = api.init_script_args(runner, {"alwayson_scripts": alwayson})
    return processing.StableDiffusionProcessingTxt2Img(
        **payload(**kw), sd_model=shared.sd_model, scripts=runner, script_args=script_args
    )


# --- a copy of p is not the original's job --------------------------------------------------------


@pytest.mark.parametrize("copy_enabled", [True, False])
def test_process_on_a_copy_leaves_the_original_alone(webui, copy_enabled):
    from ella_ext.webui.job import active_job

    api = webui.api()
    p = new_p(api, ella())
    p.setup_prompts()
    p.scripts.process(p)
    job = active_job(p)
    assert job is not None and job.plan is not None and job.error is None
    original_info = dict(p.extra_generation_params)
    assert original_info["ELLA T5"] == webui_env.T5_NAME

    q = copy.copy(p)
    q.script_args = api.init_script_args(
        api.runners[False], {"alwayson_scripts": ella() if copy_enabled else {"ELLA": {"args": [False]}}}
    )
    q.scripts.process(q)

    assert active_job(p) is job and job.plan is not None and job.error is None  # the original's job is intact
    assert p.extra_generation_params == original_info
    assert q.extra_generation_params is not p.extra_generation_params
    assert ("ELLA" in q.extra_generation_params) is copy_enabled
    assert (active_job(q) is not None) is copy_enabled and active_job(q) is not job


def test_xyz_cell_without_ella_carries_no_ella_fields(webui):
    """XYZ cells are copies of one p sharing extra_generation_params; On then Off (seen on Forge)."""
    from modules import processing

    from ella_ext.webui.xyz import xyz_override

    api = webui.api()
    template = new_p(api, {"ELLA": {"args": [{"enabled": False, "model": MODEL_NAME, "t5": webui_env.T5_NAME}]}})
    template.extra_generation_params["Other extension"] = "kept"
    infos = {}
    for value in ("On", "Off", "On"):
        cell = copy.copy(template)
        xyz_override("enabled")(cell, value, [])
        processed = processing.process_images(cell)
        infos.setdefault(value, []).append(processed.info)
    assert "ELLA: " not in infos["Off"][0] and "ELLA T5" not in infos["Off"][0]
    assert all(f"ELLA: {MODEL_NAME} [" in info for info in infos["On"])
    assert all("Other extension: kept" in info for v in infos.values() for info in v)
    assert template.extra_generation_params == {"Other extension": "kept"}


def test_adetailer_batch_count_two(webui):
    """ADetailer runs process() on copy(p) between batches: the second batch still gets ELLA."""
    from modules import shared

    model = webui.model()
    shared.opts.data["ad_script_names"] = "dynamic_prompting"
    api = api_with(webui, fake_extensions.FakeADetailer)
    prompt = "a red cube on a glossy table"
    status, body = run_api(
        api,
        payload(prompt, n_iter=2) | {"alwayson_scripts": ella() | {"ADetailer": {"args": [True, "a detailed face"]}}},
    )
    assert status == 200, body
    assert len(body["images"]) == 2
    outer = [c for c in model.unet_calls if c.context.shape[1] == 64]
    assert len(outer) == 8  # 4 steps x 2 batches, every one ELLA
    for call in outer:
        assert torch.allclose(call.context[0], ref(webui, prompt, float(call.t[0])), atol=1e-4)
    # ELLA is not in ADetailer's script list: its pass ran on CLIP, and the images say so
    inner = api.runners[False].alwayson_scripts[1].inner
    assert all(c.context.shape[1] == 77 for pass_ in inner for c in pass_.calls)
    assert all("ELLA ADetailer: CLIP" in info for info in body["infotexts"])
    assert "Script names to apply to ADetailer" in body["comments"]
    del api
    assert no_ella_job_alive()


def test_adetailer_pass_uses_ella_when_listed(webui):
    from modules import shared

    webui.model()
    shared.opts.data["ad_script_names"] = "dynamic_prompting,ella"
    api = api_with(webui, fake_extensions.FakeADetailer)
    status, body = run_api(
        api, payload(n_iter=2) | {"alwayson_scripts": ella() | {"ADetailer": {"args": [True, "a detailed face"]}}}
    )
    assert status == 200, body
    inner = api.runners[False].alwayson_scripts[1].inner
    assert inner and all(pass_.calls for pass_ in inner)
    for pass_ in inner:
        for call in pass_.calls:
            assert call.context.shape[1] == 64
            assert torch.allclose(call.context[0], ref(webui, "a detailed face", float(call.t[0])), atol=1e-4)
    assert not any("ELLA ADetailer" in info for info in body["infotexts"])
    assert all(f"ELLA: {MODEL_NAME} [" in info for info in body["infotexts"])
    del api, inner
    assert no_ella_job_alive()


# --- sd-webui-controlnet's marker token -----------------------------------------------------------


def test_marker_count():
    from ella_ext.companions.controlnet import marker_count

    clip_like = torch.randn(2, 77, 768)
    assert marker_count(clip_like) == 0
    marked = torch.cat([torch.full((2, 1, 768), 1024.0), clip_like], dim=1)
    assert marker_count(marked) == 1
    assert marker_count(torch.cat([torch.full((2, 1, 768), -1024.0), marked], dim=1)) == 2
    assert marker_count(torch.zeros(1, 77, 768)) == 0  # zeros are not a marker
    assert marker_count(None) == 0


@pytest.mark.parametrize(
    "mode, negative", [("ella", "ella"), ("ella+clip", "ella"), ("ella", "clip"), ("ella+clip", "clip")]
)
def test_controlnet_marker_survives_every_mode(webui, mode, negative):
    model = webui.model()
    api = api_with(webui, fake_extensions.FakeControlNet)
    prompt, neg = "a red cube on a glossy table", "blurry"
    status, body = run_api(
        api,
        payload(prompt, negative_prompt=neg)
        | {"alwayson_scripts": ella(mode=mode, negative=negative) | {"ControlNet": {"args": [True]}}},
    )
    assert status == 200, body
    cn = api.runners[False].alwayson_scripts[1]
    assert cn.calls and all(c.marked for c in cn.calls)  # ControlNet found its marker at every U-Net call
    assert len(cn.calls) == len(model.unet_calls)
    for cn_call, unet_call in zip(cn.calls, model.unet_calls):
        t = float(unet_call.t[0])
        for row, is_cond in enumerate(cn_call.is_cond):
            context = unet_call.context[row]
            if is_cond:
                expected = ref(webui, prompt, t)
                if mode == "ella+clip":
                    expected = torch.cat([expected, clip(prompt)])
            elif negative == "ella":
                expected = ref(webui, neg, t)
                if mode == "ella+clip":
                    expected = torch.cat([expected, clip(neg)])
            else:
                expected = clip(neg)
            assert context.shape == expected.shape, (row, is_cond)
            assert torch.allclose(context, expected, atol=1e-4)
    n_cond = sum(f for c in cn.calls for f in c.is_cond)
    n_uncond = sum(not f for c in cn.calls for f in c.is_cond)
    assert n_cond == n_uncond == 4  # every step: one cond row and one uncond row, each told apart by its marker


# --- A1111's "Pad prompt/negative prompt to be same length" ---------------------------------------


@pytest.mark.parametrize("option", ["pad_cond_uncond", "pad_cond_uncond_v0"])
def test_pad_option_does_not_touch_ella_conditioning(webui, option):
    from modules import shared

    model = webui.model()
    shared.opts.data[option] = True
    try:
        prompt = "a red cube on a glossy table"
        status, body = webui_env.run(
            webui,
            payload(prompt, negative_prompt="blurry", steps=4)
            | {"alwayson_scripts": ella(negative="clip", start=0.0, end=0.5)},
        )
        assert status == 200, body
        ella_calls = [c for c in model.unet_calls if c.context.shape[1] == 64]
        assert len(ella_calls) == 3  # steps 0-2 (step/total <= 0.5): cond through ELLA, unpadded
        for call in ella_calls:
            assert torch.allclose(call.context[0], ref(webui, prompt, float(call.t[0])), atol=1e-4)
        uncond = [c for c in model.unet_calls if c.context.shape[1] == 77]
        assert len(uncond) == 3 + 1  # the CLIP negatives of ELLA's steps, uncut, and the last step batched
        assert all(torch.allclose(c.context[-1], clip("blurry")) for c in uncond)

        # a CLIP step outside ELLA's range is padded as the user set it: a 154-token prompt, 77-token negative
        model.unet_calls.clear()
        long_prompt = "a red cube on a glossy table, " * 6
        status, _ = webui_env.run(
            webui,
            payload(long_prompt, negative_prompt="blurry", steps=4)
            | {"alwayson_scripts": ella(negative="clip", start=0.0, end=0.5)},
        )
        assert status == 200
        last = model.unet_calls[-1]
        assert last.context.shape == (2, 154, 768)  # padded (or repeated) to one length and batched
    finally:
        shared.opts.data[option] = False


# --- refused combinations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extension, args, ella_args, words",
    [
        (
            fake_extensions.FakeRegionalPrompter,
            {"Regional Prompter": {"args": [True, "Matrix", "Attention"]}},
            {"mode": "ella+clip"},
            ["Regional Prompter", "Attention mode", "'ELLA only'", "'Latent'"],
        ),
        (
            fake_extensions.FakeRegionalPrompter,
            {"Regional Prompter": {"args": [True, "Mask", "Attention"]}},
            {"negative": "clip"},
            ["Regional Prompter", "Attention mode", "through' ELLA"],
        ),
        (
            fake_extensions.FakeRegionalPrompter,
            {"Regional Prompter": {"args": [True, "Prompt", "Attention"]}},
            {},
            ["Regional Prompter", "Prompt mode", "token positions"],
        ),
        (
            fake_extensions.FakeTiledDiffusion,
            {"Tiled Diffusion": {"args": [True, True]}},
            {},
            ["Tiled Diffusion", "Region Prompt Control", "Enable Control"],
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused(webui, extension, args, ella_args, words):
    model = webui.model()
    api = api_with(webui, extension)
    status, body = run_api(api, payload(batch_size=2) | {"alwayson_scripts": ella(**ella_args) | args})
    assert status == 422, body
    for word in words:
        assert word in body["errors"], (word, body["errors"])
    assert model.unet_calls == []  # stopped before sampling
    del api  # the WebUI drops the failed job's p with the request
    assert no_ella_job_alive()
    status, body = webui_env.run(webui, payload() | {"alwayson_scripts": ella()})  # the next job works
    assert status == 200


@pytest.mark.parametrize(
    "extension, args",
    [
        (fake_extensions.FakeRegionalPrompter, {"Regional Prompter": {"args": [False, "Matrix", "Attention"]}}),
        (fake_extensions.FakeTiledDiffusion, {"Tiled Diffusion": {"args": [True, False]}}),
    ],
)
def test_the_same_extensions_without_those_settings_run(webui, extension, args):
    api = api_with(webui, extension)
    status, body = run_api(api, payload() | {"alwayson_scripts": ella() | args})
    assert status == 200, body


def test_regional_prompter_latent_mode_gets_one_ella_row_per_region(webui):
    model = webui.model()
    api = api_with(webui, fake_extensions.FakeRegionalPrompter)
    status, body = run_api(
        api,
        payload("a red cube BREAK a blue sphere")
        | {"alwayson_scripts": ella() | {"Regional Prompter": {"args": [True, "Matrix", "Latent"]}}},
    )
    assert status == 200, body
    call = model.unet_calls[0]
    t = float(call.t[0])
    assert call.context.shape == (3, 64, 768)  # two regions (cond rows) and the negative
    assert torch.allclose(call.context[0], ref(webui, "a red cube", t), atol=1e-4)
    assert torch.allclose(call.context[1], ref(webui, "a blue sphere", t), atol=1e-4)


# --- AnimateDiff ----------------------------------------------------------------------------------


@pytest.fixture
def animatediff(webui):
    fake_extensions.install_animatediff_callback(before_ella=True)
    try:
        yield api_with(webui, fake_extensions.FakeAnimateDiff)
    finally:
        fake_extensions.remove_animatediff_callback()


def test_animatediff_gets_ella_at_every_step(webui, animatediff):
    """AnimateDiff keeps its step-0 conditioning for every step; ELLA (after it) replaces it at each step."""
    model = webui.model()
    prompt = "a red cube on a glossy table"
    status, body = run_api(
        animatediff,
        payload(prompt, batch_size=4) | {"alwayson_scripts": ella() | {"AnimateDiff": {"args": [{"enable": True}]}}},
    )
    assert status == 200, body
    ts = sorted({float(c.t[0]) for c in model.unet_calls})
    assert len(ts) == 4
    for call in model.unet_calls:
        t = float(call.t[0])
        for frame in range(4):
            assert torch.allclose(call.context[frame], ref(webui, prompt, t), atol=1e-4)


def test_animatediff_prompt_travel_blends_ella_outputs(webui, animatediff):
    model = webui.model()
    status, body = run_api(
        animatediff,
        payload("0: a red cube\n3: a blue sphere", batch_size=4)
        | {"alwayson_scripts": ella() | {"AnimateDiff": {"args": [{"enable": True}]}}},
    )
    assert status == 200, body
    assert len(model.unet_calls) == 4
    for call in model.unet_calls:
        t = float(call.t[0])
        red, blue = ref(webui, "a red cube", t), ref(webui, "a blue sphere", t)
        for frame in range(4):
            r = frame / 3
            assert torch.allclose(call.context[frame], (1 - r) * red + r * blue, atol=1e-4), (t, frame)
        for frame in range(4, 8):  # the negatives
            assert torch.allclose(call.context[frame], ref(webui, "", t), atol=1e-4)


@pytest.mark.parametrize("travel", [False, True])
def test_animatediff_with_the_negative_through_clip(webui, animatediff, travel):
    """64-token ELLA cond and 77-token CLIP negative go in separate calls; AnimateDiff's forward takes each
    with batch cond/uncond off (the WebUI's setting is on, and on again after every call)."""
    from modules import shared

    model = webui.model()
    prompt = "0: a red cube\n3: a blue sphere" if travel else "a red cube"
    status, body = run_api(
        animatediff,
        payload(prompt, negative_prompt="blurry", batch_size=4)
        | {"alwayson_scripts": ella(negative="clip") | {"AnimateDiff": {"args": [{"enable": True}]}}},
    )
    assert status == 200, body
    assert shared.opts.batch_cond_uncond is True
    # every sampler call went through AnimateDiff's forward, one half at a time, with the option off
    assert fake_extensions.FakeAnimateDiff.forward_calls == [(4, False)] * 8
    cond_calls = [c for c in model.unet_calls if c.context.shape[1] == 64]
    uncond_calls = [c for c in model.unet_calls if c.context.shape[1] == 77]
    assert len(cond_calls) == len(uncond_calls) == 4
    for call in cond_calls:
        t = float(call.t[0])
        red, blue = ref(webui, "a red cube", t), ref(webui, "a blue sphere", t)
        for frame in range(4):
            r = frame / 3 if travel else 0.0
            assert torch.allclose(call.context[frame], (1 - r) * red + r * blue, atol=1e-4), (t, frame)
    for call in uncond_calls:
        assert all(torch.equal(call.context[frame], clip("blurry")) for frame in range(4))


def test_animatediff_callback_after_ella_is_refused(webui, animatediff):
    fake_extensions.install_animatediff_callback(before_ella=False)
    model = webui.model()
    status, body = run_api(
        animatediff,
        payload(batch_size=2) | {"alwayson_scripts": ella() | {"AnimateDiff": {"args": [{"enable": True}]}}},
    )
    assert status == 422, body
    assert "AnimateDiff" in body["errors"] and "callback" in body["errors"]
    assert model.unet_calls == []


def test_metadata_pins_ella_after_animatediff():
    import configparser

    config = configparser.ConfigParser()
    config.read(webui_env.ROOT / "metadata.ini")
    name = config["Extension"]["Name"]
    section = f"callbacks/{name}/ella.py/cfg_denoiser/ella"  # the name A1111 gives on_cfg_denoiser(name="ella") in scripts/ella.py
    assert section in config
    assert config[section]["After"] == "sd-webui-animatediff/animatediff.py/cfg_denoiser"
    assert (
        '_register("cfg_denoiser", EXTENSION.cfg_denoiser, name="ella")'
        in (webui_env.ROOT / "scripts" / "ella.py").read_text()
    )


def test_callbacks_are_registered_with_their_file(monkeypatch):
    """add_callback with the file (no inspect.stack(), ~80 ms each at WebUI start); on_* where it takes none."""
    from modules import script_callbacks

    from ella_ext.backends import A1111

    register_callback = A1111().register_callback

    added, public = [], []

    def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
        added.append((category, name, filename))
        callbacks.append(fun)

    monkeypatch.setattr(script_callbacks, "callback_map", {"callbacks_cfg_denoiser": []}, raising=False)
    monkeypatch.setattr(script_callbacks, "add_callback", add_callback, raising=False)
    monkeypatch.setattr(script_callbacks, "on_cfg_denoiser", lambda fn, name=None: public.append(fn))
    register_callback("cfg_denoiser", print, name="ella", filename="/x/extensions/sd-webui-ella/scripts/ella.py")
    assert added == [("cfg_denoiser", "ella", "/x/extensions/sd-webui-ella/scripts/ella.py")] and public == []
    assert script_callbacks.callback_map["callbacks_cfg_denoiser"] == [print]

    monkeypatch.setattr(script_callbacks, "add_callback", lambda callbacks, fun, *, name=None, category="unknown": None)
    register_callback("cfg_denoiser", len, name="ella", filename="f.py")
    assert public == [len]  # a WebUI whose add_callback takes no file: the public function
