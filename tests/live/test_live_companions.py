"""ELLA beside other extensions in a real WebUI: what reaches the U-Net (and the control model).

Opt-in, like the rest of tests/live (see conftest.py), and it also needs the probe extension in
tests/live/probe_extension linked into the WebUI's extensions folder (it records each U-Net and
control-model call; the WebUI must run on this machine). Each test skips, with the reason, when
the extension it is about is not installed; nothing is installed from here.

Every test compares what the U-Net received, call by call, with ELLA's reference for that row's
text at the t that call received (computed here from the tiny models the suite writes).
"""

import base64
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from live_env import MODEL, MODELS, T5
from test_live_api import call, ella, info, txt2img

TOL = 2e-3  # fp16 T5 on both sides; relative to the largest value
STEPS = 3


# --- the probe and the references -------------------------------------------------------------------


def scripts_installed():
    status, scripts = call("/sdapi/v1/scripts")
    assert status == 200
    return {s.lower() for s in scripts["txt2img"]} | {s.lower() for s in scripts["img2img"]}


def require(*titles):
    names = scripts_installed()
    missing = [t for t in titles if not any(n == t.lower() or n.startswith(t.lower() + " v") for n in names)]
    if missing:
        pytest.skip(f"not installed in this WebUI: {', '.join(missing)}")


@pytest.fixture(autouse=True)
def probe():
    status, _ = call("/ella-probe/v1/reset", {})
    if status == 404:
        pytest.skip("link tests/live/probe_extension into the WebUI's extensions folder to run these")
    yield


def recorded(kind="unet"):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "calls.pt")
        status, body = call("/ella-probe/v1/dump", {"path": path})
        assert status == 200, body
        calls = torch.load(path)
    return [c for c in calls if c["module"] == kind]


_REF = {}


def reference(text, t):
    """ELLA's output for `text` at timestep t, from the tiny live models (cached per text and t)."""
    from ella_ext import load_ella
    from ella_ext.t5 import load_t5_encoder

    key = (text, round(float(t), 4))
    if key not in _REF:
        if "models" not in _REF:
            _REF["models"] = (
                load_t5_encoder(MODELS / "ELLA" / "t5" / T5, precision="auto"),
                load_ella(MODELS / "ELLA" / f"{MODEL}.safetensors"),
            )
        encoder, tsc = _REF["models"]
        features = encoder.encode(encoder.tokenize(text, truncate_at=128))
        with torch.inference_mode():
            _REF[key] = tsc(features.float(), torch.tensor([float(t)]))[0]
    return _REF[key]


def close(a, b):
    return a.shape == b.shape and float((a - b).abs().max()) <= TOL * max(1.0, float(b.abs().max()))


def ella_rows(calls, texts_per_row):
    """For each call, check each row against one of the allowed texts; returns the matched text per row."""
    matched = []
    for c in calls:
        row_texts = []
        for row in range(c["context"].shape[0]):
            t = float(c["t"][row if c["t"].numel() > 1 else 0])
            context = c["context"][row, :64]  # ELLA's tokens come first (after no marker: callers strip it)
            hit = next((text for text in texts_per_row if close(context, reference(text, t))), None)
            row_texts.append(hit)
        matched.append(row_texts)
    return matched


def positive(call_rows):
    """The one non-empty text matched in a call's rows (None if none or several): the cond row's, whichever
    position the backend gives it (A1111 puts cond rows first, Forge the uncond rows)."""
    texts = {t for t in call_rows if t}
    return texts.pop() if len(texts) == 1 and None not in call_rows else None


def gray_png(rows):
    """A grayscale PNG from rows of 0-255 values (no imaging library needed)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    header = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_bytes(name="init.png"):
    return base64.b64encode((Path(__file__).with_name(name)).read_bytes()).decode()


# --- XYZ plot ------------------------------------------------------------------------------------


def xyz_args(axis_label, values):
    status, infos = call("/sdapi/v1/script-info")
    xyz = next(s for s in infos if s["name"] in ("x/y/z plot", "xyz plot", "xyz_grid") and not s["is_img2img"])
    labels = [a["label"] for a in xyz["args"]]
    x_type = next(a for a in xyz["args"] if a["label"] == "X type")
    args = [a["value"] for a in xyz["args"]]
    args[labels.index("X type")] = x_type["choices"].index(axis_label)
    args[labels.index("X values")] = values
    args[labels.index("X values") + 1] = values.split(",")  # axes with choices read the dropdown's list
    for label in ("Y type", "Z type"):
        args[labels.index(label)] = 0
    args[labels.index("Include Sub Images")] = True
    return [[] if a is None else a for a in args]  # the dropdown values come back as None


def test_xyz_on_off_cells_carry_only_their_own_infotext():
    status, body = txt2img(
        steps=STEPS,
        script_name="x/y/z plot",
        script_args=xyz_args("ELLA: on/off", "On,Off"),
        alwayson_scripts={"ELLA": {"args": [{"enabled": False, "model": MODEL, "t5": T5}]}},
    )
    assert status == 200, body
    texts = info(body)["infotexts"]
    on, off = texts[-2], texts[-1]  # the grid first, then each cell's image
    assert f"ELLA: {MODEL} [" in on
    assert "ELLA" not in off, off
    contexts = [c["context"].shape[1] for c in recorded()]
    assert contexts == [64] * STEPS + [77] * STEPS


def test_xyz_prompt_sr_reaches_ella():
    status, body = txt2img(
        prompt="a red cube",
        steps=STEPS,
        script_name="x/y/z plot",
        script_args=xyz_args("Prompt S/R", "red,blue"),
        alwayson_scripts=ella(),
    )
    assert status == 200, body
    calls = recorded()
    assert len(calls) == 2 * STEPS
    texts = [positive(r) for r in ella_rows(calls, ["a red cube", "a blue cube", ""])]
    assert texts == ["a red cube"] * STEPS + ["a blue cube"] * STEPS


# --- ControlNet (sd-webui-controlnet on A1111, built in on Forge) -------------------------------------


def controlnet_unit(**kw):
    # the "no preprocessor" module is "none" in sd-webui-controlnet, "None" in Forge's ControlNet
    unit = {
        "enabled": True,
        "image": image_bytes(),
        "module": os.environ.get("ELLA_LIVE_CONTROLNET_MODULE", "none"),
        "model": os.environ.get("ELLA_LIVE_CONTROLNET_MODEL", "control_v11p_sd15_canny_random"),
        "weight": 1.0,
        "resize_mode": "Just Resize",
        "control_mode": "Balanced",
        "pixel_perfect": False,
    }
    unit.update(kw)
    return unit


@pytest.mark.parametrize("mode, negative", [("ella", "ella"), ("ella+clip", "ella"), ("ella", "clip")])
@pytest.mark.parametrize("control_mode", ["Balanced", "ControlNet is more important"])
def test_controlnet_sees_ella_and_keeps_its_marker(mode, negative, control_mode):
    require("controlnet")
    prompt, neg = "a red cube on a glossy table", "blurry"
    status, body = txt2img(
        prompt=prompt,
        negative_prompt=neg,
        steps=STEPS,
        alwayson_scripts=ella(mode=mode, negative=negative)
        | {"ControlNet": {"args": [controlnet_unit(control_mode=control_mode)]}},
    )
    assert status == 200, body
    unet, control = recorded("unet"), recorded("control")
    assert control, "the control model never ran"
    marked = {bool(((c["context"][:, 0].abs() - 1024).abs() < 1e-3).all()) for c in unet}
    assert len(marked) == 1, "some U-Net calls carry ControlNet's marker and some do not"
    marker = marked.pop()
    for c in unet:
        token0 = c["context"][:, 0]
        body_ = c["context"][:, 1:] if marker else c["context"]
        for row in range(body_.shape[0]):
            is_cond = bool(token0[row].mean() > 0) if marker else None
            t = float(c["t"][row if c["t"].numel() > 1 else 0])
            if body_.shape[1] == 77:  # CLIP negative
                assert negative == "clip" and is_cond in (False, None)
                continue
            text = prompt if (is_cond if marker else close(body_[row, :64], reference(prompt, t))) else neg
            assert close(body_[row, :64], reference(text, t)), (row, t)
    status, extensions = call("/sdapi/v1/extensions")
    if any(e["name"] == "sd-webui-controlnet" for e in extensions):
        assert marker is True  # A1111's sd-webui-controlnet tells cond from uncond by it, in every mode
    for c in control:  # the control model gets ELLA's context too (markerless: it reads after unmarking)
        rows = ella_rows([c], [prompt, neg])[0]
        assert all(r is not None or c["context"].shape[1] == 77 for r in rows)


# --- ADetailer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("listed", [False, True])
def test_adetailer_batch_count_two(listed):
    require("adetailer")
    names = "dynamic_prompting,dynamic_thresholding,wildcard_recursive,wildcards,lora_block_weight,negpip"
    if listed:
        names += ",ella"
    prompt = "ASTRONAUTPHOTO a portrait photo of an astronaut"
    status, body = txt2img(
        prompt=prompt,
        steps=STEPS,
        n_iter=2,
        width=128,
        height=128,
        override_settings={"ad_script_names": names},
        alwayson_scripts=ella()
        | {
            "ADetailer": {
                "args": [
                    True,
                    False,
                    {
                        "ad_model": "mediapipe_face_full",
                        "ad_prompt": "a detailed face",
                        "ad_steps": STEPS,
                        "ad_use_steps": True,
                        "ad_denoising_strength": 0.4,
                    },
                ]
            }
        },
    )
    assert status == 200, body
    assert len(body["images"]) == 2
    texts = info(body)["infotexts"]
    calls = recorded()
    main = [c for c, rows in zip(calls, ella_rows(calls, [prompt, ""])) if positive(rows) == prompt]
    assert len(main) == 2 * STEPS  # both batches used ELLA at every step
    inpaint = [c for c in calls if not any(c is m for m in main)]
    assert inpaint, "ADetailer found no face: is the photo helper extension installed?"
    if listed:
        rows = ella_rows(inpaint, ["a detailed face", ""])
        assert all(positive(r) == "a detailed face" for r in rows)
        assert not any("ELLA ADetailer" in t for t in texts)
    else:
        assert all(c["context"].shape[1] == 77 for c in inpaint)
        assert all("ELLA ADetailer: CLIP" in t for t in texts)


# --- Dynamic Prompts ------------------------------------------------------------------------------


def test_dynamic_prompts_each_image_gets_its_own_prompt():
    require("dynamic prompts")
    status, body = txt2img(
        prompt="a {red|blue|green|yellow} cube", steps=STEPS, batch_size=2, n_iter=2, seed=3, alwayson_scripts=ella()
    )
    assert status == 200, body
    prompts = info(body)["all_prompts"]
    assert len(prompts) == 4
    # Dynamic Prompts really ran (a WebUI where its settings did not register leaves the template as it is)
    assert not any("{" in p for p in prompts) and len(set(prompts)) >= 2, prompts
    calls = recorded()
    assert len(calls) == 2 * STEPS
    for batch in range(2):
        mine = prompts[batch * 2 : batch * 2 + 2]
        for rows in ella_rows(calls[batch * STEPS : (batch + 1) * STEPS], mine + [""]):
            assert [r for r in rows if r] == mine, (rows, mine)  # image order, wherever the backend puts cond rows


# --- Regional Prompter ----------------------------------------------------------------------------


def rp_args(mode):
    return {
        "Regional Prompter": {
            "args": [
                True,
                False,
                "Matrix",
                "Columns",
                "Mask",
                "Prompt",
                "1,1",
                "0.2",
                False,
                False,
                False,
                mode,
                False,
                "0",
                "0",
                "0.4",
                None,
                "0",
                "0",
                False,
            ]
        }
    }


def test_regional_prompter_latent_mode_gets_one_row_per_region():
    require("regional prompter")
    status, body = txt2img(
        prompt="a red cube BREAK a blue sphere", steps=STEPS, alwayson_scripts=ella() | rp_args("Latent")
    )
    assert status == 200, body
    rows = [text for call_rows in ella_rows(recorded(), ["a red cube", "a blue sphere", ""]) for text in call_rows]
    assert None not in rows, rows  # every row the U-Net got is ELLA's for its own region (RP may run them apart)
    assert rows.count("a red cube") == rows.count("a blue sphere") == STEPS


def cross_attention(weights, x, context):
    """An SD1.5 cross-attention layer (what RP's main_forward computes) from the probe's recorded weights."""
    heads = weights["heads"]
    q, k, v = x @ weights["to_q.weight"].T, context @ weights["to_k.weight"].T, context @ weights["to_v.weight"].T
    split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, -1).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    attn = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return out @ weights["to_out.0.weight"].T + weights["to_out.0.bias"]


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("regions", [["a red cube", "a blue sphere"], ["a red cube", "a blue sphere", "a green cone"]])
def test_regional_prompter_attention_mode_gives_each_region_its_ella_tokens(regions):
    """At RP's first cross-attention layer: each region's call gets ELLA's tokens for that region's text, and its
    output equals the layer's output for ELLA alone on that text; padding designs are measured beside it."""
    require("regional prompter")
    args = rp_args("Attention")
    args["Regional Prompter"]["args"][6] = ",".join(["1"] * len(regions))
    status, body = txt2img(
        prompt=" BREAK ".join(regions), negative_prompt="blurry", steps=STEPS, alwayson_scripts=ella() | args
    )
    assert status == 200, body
    unet, region_calls = recorded(), recorded("rp_region")
    weights = recorded("rp_weights")[0]
    # A1111 runs the negative in U-Net calls of its own (64 tokens); Forge batches it with the cond (repeated to the
    # cond's length), and RP hands it to one more region call after the cond's regions
    cond_calls = [i for i, c in enumerate(unet) if c["context"].shape[1] == 64 * len(regions)]
    assert len(cond_calls) == STEPS
    assert all(c["context"].shape[1] == 64 for i, c in enumerate(unet) if i not in cond_calls)
    worst, exact, padded = 0.0, 0.0, {"zeros": [], "last token": []}
    negatives = [r for r in region_calls if r["unet_call"] not in cond_calls]
    for index in cond_calls:
        got = [r for r in region_calls if r["unet_call"] == index]
        assert len(got) in (len(regions), len(regions) + 1)
        negatives += got[len(regions) :]
        t = float(unet[index]["t"][0])
        for text, record in zip(regions, got):
            expected = reference(text, t)
            assert all(close(record["context"][row], expected) for row in range(record["context"].shape[0])), text
            alone = cross_attention(weights, record["x"], expected[None].expand(record["x"].shape[0], -1, -1))
            worst = max(worst, relative(record["out"], alone))
            # RP's layer computed plain attention on exactly the context it handed the region
            exact = max(exact, relative(record["out"], cross_attention(weights, record["x"], record["context"])))
            fill = {"zeros": torch.zeros(13, expected.shape[1]), "last token": expected[-1:].expand(13, -1)}
            for name, tokens in fill.items():
                context = torch.cat([expected, tokens])[None].expand(record["x"].shape[0], -1, -1)
                padded[name].append(relative(cross_attention(weights, record["x"], context), alone))
    assert len({r["unet_call"] for r in negatives}) == STEPS  # the negative reached RP at every step
    assert all(close(r["context"][0], reference("blurry", float(unet[r["unet_call"]]["t"][0]))) for r in negatives)
    print(
        f"\nRP attention, {len(regions)} regions: layer output vs ELLA alone (reference T5), relative L2: "
        f"ours {worst:.2e} (vs its own context {exact:.2e}); "
        + "; ".join(f"77-token unit padded with {k}: {max(v):.2e}" for k, v in padded.items())
    )
    assert exact < 1e-5 and worst < TOL


# --- Tiled Diffusion ------------------------------------------------------------------------------


def td_args(region_control):
    bbox = [True, 0.0, 0.0, 0.5, 1.0, "a red cube", "", "Background", 0.2, -1] if region_control else []
    return {
        "Tiled Diffusion": {
            "args": [
                True,
                "MultiDiffusion",
                False,
                True,
                1024,
                1024,
                64,
                64,
                16,
                2,
                "None",
                2,
                False,
                10,
                1,
                1,
                64,
                False,
                region_control,
                False,
                False,
                *bbox,
            ]
        }
    }


def test_tiled_diffusion_tiles_get_ella():
    require("tiled diffusion")
    status, body = txt2img(steps=STEPS, width=192, height=192, alwayson_scripts=ella() | td_args(False))
    assert status == 200, body
    rows = ella_rows(recorded(), ["a red cube on a glossy table", ""])
    assert rows and all(r and all(x is not None for x in r) for r in rows)


def test_tiled_diffusion_region_control_is_refused():
    require("tiled diffusion")
    status, body = txt2img(steps=STEPS, width=192, height=192, alwayson_scripts=ella() | td_args(True))
    assert status == 422, body
    assert "Region Prompt Control" in json.dumps(body)


# --- AnimateDiff ----------------------------------------------------------------------------------


def ad_args(**kw):
    """AnimateDiff on; Dynamic Prompts (when installed) off: it re-expands AnimateDiff's per-frame prompts from the first."""
    params = {
        "enable": True,
        "video_length": 16,
        "batch_size": 16,
        "fps": 8,
        "format": ["PNG"],
        "model": os.environ.get("ELLA_LIVE_MOTION_MODULE", "mm_sd_v15_v2_random.safetensors"),
    }
    params.update(kw)
    args = {"AnimateDiff": {"args": [params]}}
    dynamic_prompts = next((n for n in scripts_installed() if n.startswith("dynamic prompts")), None)
    if dynamic_prompts:
        args[dynamic_prompts] = {"args": [False]}
    return args


def slerp(v0, v1, r):
    u0, u1 = v0 / v0.norm(), v1 / v1.norm()
    dot = (u0 * u1).sum()
    if dot.abs() > 0.9995:
        return (1 - r) * v0 + r * v1
    omega = dot.acos()
    return (((1 - r) * omega).sin() * v0 + (r * omega).sin() * v1) / omega.sin()


def test_animatediff_16_frames_get_ella_at_every_step():
    require("animatediff")
    prompt = "a red cube spinning"
    status, body = txt2img(prompt=prompt, steps=STEPS, batch_size=16, alwayson_scripts=ella() | ad_args())
    assert status == 200, body
    calls = recorded()
    ts = sorted({round(float(c["t"][0]), 3) for c in calls})
    assert len(ts) == STEPS  # ELLA's output follows t at every step (AnimateDiff alone would freeze step 0's)
    for rows in ella_rows(calls, [prompt, ""]):
        assert all(r is not None for r in rows)


def test_animatediff_prompt_travel_blends_ella():
    require("animatediff")
    status, body = txt2img(
        prompt="0: a red cube\n15: a blue sphere", steps=STEPS, batch_size=16, alwayson_scripts=ella() | ad_args()
    )
    assert status == 200, body
    for c in recorded():
        cond = c["context"][:16] if c["context"].shape[0] >= 16 else None
        if cond is None or c["context"].shape[0] != 32:
            continue
        t = float(c["t"][0])
        # AnimateDiff writes each keyframe's prompt as "<head>, <keyframe text>, <tail>"
        red, blue = reference(", a red cube, ", t), reference(", a blue sphere, ", t)
        for frame in range(16):
            assert close(cond[frame], slerp(red, blue, frame / 15)), frame


@pytest.mark.parametrize("travel", [False, True])
def test_animatediff_with_the_negative_through_clip(travel):
    """ELLA's 64-token cond and the 77-token CLIP negative go to the U-Net in separate calls; each frame's
    cond is ELLA's (blended between keyframes with travel) at that call's t, the negative is CLIP's."""
    require("animatediff")
    prompt = "0: a red cube\n15: a blue sphere" if travel else "a red cube spinning"
    status, body = txt2img(
        prompt=prompt,
        negative_prompt="blurry",
        steps=STEPS,
        batch_size=16,
        alwayson_scripts=ella(negative="clip") | ad_args(),
    )
    assert status == 200, body
    calls = recorded()
    cond = [c for c in calls if c["context"].shape[1] == 64]
    uncond = [c for c in calls if c["context"].shape[1] == 77]
    assert len(cond) == len(uncond) == STEPS and all(c["context"].shape[0] == 16 for c in calls)
    for c in cond:
        t = float(c["t"][0])
        if travel:
            red, blue = reference(", a red cube, ", t), reference(", a blue sphere, ", t)
            assert all(close(c["context"][f], slerp(red, blue, f / 15)) for f in range(16))
        else:
            assert all(close(c["context"][f], reference(prompt, t)) for f in range(16))
    first = uncond[0]["context"][0]
    assert all(torch.equal(c["context"][f], first) for c in uncond for f in range(16))  # one CLIP negative, every frame


# --- ELLA + CLIP with a separate CLIP text ----------------------------------------------------------


@pytest.mark.parametrize(
    "clip_text",
    [
        "sks style, (masterpiece:1.3), [cat:dog:2] BREAK film grain",
        "ornate, intricate, " * 30 + "gold leaf",  # over 75 tokens: two CLIP chunks, separate cond/uncond calls
    ],
)
def test_clip_text_is_the_webuis_own_conditioning_bit_for_bit(clip_text):
    status, body = txt2img(prompt=clip_text, negative_prompt="blurry", steps=STEPS)
    assert status == 200, body
    plain = recorded()
    call("/ella-probe/v1/reset", {})
    prompt = "a red cube on a glossy table"
    status, body = txt2img(
        prompt=prompt,
        negative_prompt="blurry",
        steps=STEPS,
        alwayson_scripts=ella(mode="ella+clip", clip_prompt=clip_text),
    )
    assert status == 200, body
    assert info(body)["extra_generation_params"]["ELLA CLIP prompt"] == clip_text
    calls = recorded()

    def rows(records):
        for r in records:
            for i, row in enumerate(r["context"]):
                yield round(float(r["t"][i if r["t"].numel() > 1 else 0]), 3), row

    plain_rows = list(rows(plain))
    texts = [text for call_rows in ella_rows(calls, [prompt, "blurry"]) for text in call_rows]
    ella_rows_ = list(rows(calls))
    # the backends may batch the two jobs' calls differently; Forge Classic skips the uncond at step 0 (its
    # "skip early CFG" test is <= 0.0), so count against the plain job rather than 2 x steps
    assert len(ella_rows_) == len(plain_rows) in (2 * STEPS, 2 * STEPS - 1)
    assert texts.count(prompt) == STEPS and texts.count("blurry") == len(plain_rows) - STEPS
    for (t, row), text in zip(ella_rows_, texts):
        if text == prompt:  # tokens 64: are the plain job's cond row at the same t, bit for bit
            assert any(
                t == pt and row.shape[0] == 64 + prow.shape[0] and torch.equal(row[64:], prow)
                for pt, prow in plain_rows
            )
        else:  # the negative's CLIP part is the job's own (Forge repeats a shorter uncond to batch it with a longer cond)
            assert any(t == pt and torch.equal(row[64:], prow[: row.shape[0] - 64]) for pt, prow in plain_rows)


# --- built-ins --------------------------------------------------------------------------------------


def test_pad_prompt_option_leaves_ella_unpadded():
    status, options = call("/sdapi/v1/options")
    if "pad_cond_uncond" not in options:
        pytest.skip("this WebUI has no 'Pad prompt/negative prompt' option (Forge Classic)")
    status, body = txt2img(
        negative_prompt="blurry",
        steps=STEPS,
        override_settings={"pad_cond_uncond": True},
        alwayson_scripts=ella(negative="clip"),
    )
    assert status == 200, body
    calls = recorded()
    cond = [c for c in calls if c["context"].shape[1] == 64]
    assert len(cond) == STEPS and all(c["context"].shape[1] in (64, 77) for c in calls)
    for c in cond:
        assert close(c["context"][0], reference("a red cube on a glossy table", float(c["t"][0])))


def test_prompts_from_file_each_line_gets_ella():
    status, body = txt2img(
        prompt="",
        steps=STEPS,
        script_name="prompts from file or textbox",
        script_args=[False, False, "start", "a red cube\na blue sphere"],
        alwayson_scripts=ella(),
    )
    assert status == 200, body
    # each line is put before the (empty) main prompt with a space, as the script does
    rows = [positive(r) for r in ella_rows(recorded(), ["a red cube ", "a blue sphere ", ""])]
    assert rows == ["a red cube "] * STEPS + ["a blue sphere "] * STEPS
    texts = info(body)["infotexts"]
    texts = [t for t in texts if "Steps: " in t and "Script: " not in t]
    assert len(texts) >= 2 and all(f"ELLA: {MODEL} [" in t for t in texts)


def test_inpaint_only_masked_gets_ella():
    image = image_bytes()
    mask = gray_png([[255 if 16 <= x < 48 and 16 <= y < 48 else 0 for x in range(64)] for y in range(64)])
    status, body = call(
        "/sdapi/v1/img2img",
        {
            "init_images": [image],
            "mask": base64.b64encode(mask).decode(),
            "inpaint_full_res": True,
            "inpaint_full_res_padding": 8,
            "prompt": "a red cube",
            "steps": STEPS,
            "width": 64,
            "height": 64,
            "denoising_strength": 0.75,
            "alwayson_scripts": ella(),
        },
    )
    assert status == 200, body
    rows = ella_rows(recorded(), ["a red cube", ""])
    assert rows and all(positive(r) == "a red cube" for r in rows), rows


def sd_upscale_args():
    """SD upscale's args by its labels: A1111/Forge lead with an info text, Forge Classic does not."""
    status, infos = call("/sdapi/v1/script-info")
    assert status == 200
    labels = next(s for s in infos if s["name"] == "sd upscale" and s["is_img2img"])["args"]
    by_label = {"tile overlap": 16, "upscaler": "Lanczos", "scale factor": 2.0}
    return [by_label.get(str(a["label"]).lower()) for a in labels]


def test_sd_upscale_gets_ella():
    status, body = call(
        "/sdapi/v1/img2img",
        {
            "init_images": [image_bytes()],
            "prompt": "a red cube",
            "steps": STEPS,
            "width": 64,
            "height": 64,
            "denoising_strength": 0.5,
            "script_name": "sd upscale",
            "script_args": sd_upscale_args(),
            "alwayson_scripts": ella(),
        },
    )
    assert status == 200, body
    rows = ella_rows(recorded(), ["a red cube", ""])
    assert rows and all(positive(r) == "a red cube" for r in rows), rows


def test_refiner_of_the_same_family_gets_ella():
    refiner = os.environ.get("ELLA_LIVE_REFINER")
    if not refiner:
        pytest.skip("set ELLA_LIVE_REFINER to a second SD1.5 checkpoint's title")
    status, body = txt2img(steps=4, refiner_checkpoint=refiner, refiner_switch_at=0.5, alwayson_scripts=ella())
    assert status == 200, body
    rows = ella_rows(recorded(), ["a red cube on a glossy table", ""])
    assert len(rows) == 4 and all(positive(r) == "a red cube on a glossy table" for r in rows)


FORGE_BUILTINS = {
    # Forge's built-in extensions: script name -> args that turn it on (from /sdapi/v1/script-info)
    "perturbedattentionguidance integrated": [True, 3.0, 0.0, 0.0, 1.0],
    "selfattentionguidance integrated (sd 1.x, sd 2.x, sdxl)": [True, 0.5, 2.0, 1.0],
    "freeu integrated (sd 1.x, sd 2.x, sdxl)": [True, 1.01, 1.02, 0.99, 0.95, 0.0, 1.0],
    "kohya hrfix integrated": [True, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic"],
    "never oom integrated": [True, False],
    # reForge's names for the same two (it has no PAG)
    "selfattentionguidance integrated": [True, 0.5, 2.0],
    "freeu integrated": [True, 1.01, 1.02, 0.99, 0.95],
}


@pytest.mark.parametrize("title", sorted(FORGE_BUILTINS))
def test_forge_builtins_get_ella(title):
    require(title)
    # 128x128: at 64x64 the middle block is one token (PAG/SAG do nothing, FreeU divides by zero)
    status, body = txt2img(
        steps=STEPS, width=128, height=128, alwayson_scripts=ella() | {title: {"args": FORGE_BUILTINS[title]}}
    )
    assert status == 200, body
    rows = ella_rows(recorded(), ["a red cube on a glossy table", ""])
    assert rows and all(None not in r for r in rows), rows  # extra guidance calls (SAG, PAG) get ELLA's rows too
    assert sum("a red cube on a glossy table" in r for r in rows) >= STEPS
    assert f"ELLA: {MODEL} [" in info(body)["infotexts"][0]


def test_emphasis_reaches_ella_conditioning():
    """A1111 pins tokenizers 0.13, which cannot read the tiny T5's tokenizer.json (written by the newest
    tokenizers, as recent releases write it): emphasis must still reach T5's features."""
    from ella_ext.lru_cache import LRUCache
    from ella_ext.prompt_encoding import PromptEncoder
    from ella_ext.prompt_syntax import BuiltinPromptSyntax

    prompt = "a (red:1.6) cube"
    status, body = txt2img(prompt=prompt, steps=STEPS, alwayson_scripts=ella())
    assert status == 200, body
    assert "ELLA emphasis ignored" not in info(body)["infotexts"][0]
    reference("", 0)  # loads the models
    encoder, tsc = _REF["models"]
    prompts = PromptEncoder(
        lambda: encoder,
        "live",
        LRUCache(),
        BuiltinPromptSyntax(),
        fixed_length=None,
        truncate_at=128,
        emphasis="original",
    )
    encoded = prompts.encode(prompt)
    assert encoded.weighted
    differs = 0
    for c in recorded():
        t = float(c["t"][0])
        with torch.inference_mode():
            weighted = tsc(encoded.features.float()[None], torch.tensor([t]))[0]
        rows = [row for row in range(c["context"].shape[0]) if close(c["context"][row], weighted)]
        assert len(rows) == 1, t  # the cond row is the weighted prompt's
        differs += not close(c["context"][rows[0]], reference("a red cube", t))
    assert differs >= 1
