"""End to end through a real WebUI's HTTP API (see conftest.py for how to run it)."""

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from live_env import MODEL, T5, URL

SAMPLERS = [s.strip() for s in os.environ.get("ELLA_LIVE_SAMPLERS", "Euler,Euler a,DPM++ 2M,DDIM,UniPC").split(",")]


def call(path, payload=None, timeout=600):
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"raw": body.decode(errors="replace")}


def restoring_options(path, payload):
    """call(), then put back every option the payload's override_settings changed: A1111 restores afterwards only
    the options its config file already held, so an override would otherwise stay for every later test."""
    overrides = payload.get("override_settings") or {}
    if not overrides:
        return call(path, payload)
    status, before = call("/sdapi/v1/options")
    assert status == 200, before
    try:
        return call(path, payload)
    finally:
        status, after = call("/sdapi/v1/options")
        changed = {k: before.get(k) for k in overrides if after.get(k) != before.get(k)}
        if changed:
            status, body = call("/sdapi/v1/options", changed)
            assert status == 200, body


def txt2img(**kw):
    payload = {
        "prompt": "a red cube on a glossy table",
        "negative_prompt": "",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 11,
        "sampler_name": "Euler",
        "cfg_scale": 7,
    }
    payload.update(kw)
    return restoring_options("/sdapi/v1/txt2img", payload)


def ella(**kw):
    args = {"enabled": True, "model": MODEL, "t5": T5}
    args.update(kw)
    return {"ELLA": {"args": [args]}}


def info(body):
    return json.loads(body["info"])


def test_script_is_listed():
    status, scripts = call("/sdapi/v1/scripts")
    assert status == 200 and "ella" in scripts["txt2img"] and "ella" in scripts["img2img"]
    status, infos = call("/sdapi/v1/script-info")
    ella_info = [s for s in infos if s["name"] == "ella" and not s["is_img2img"]][0]
    assert ella_info["is_alwayson"] and [a["label"] for a in ella_info["args"]][:3] == [
        "ELLA",
        "ELLA model",
        "T5 encoder",
    ]


def test_disabled_changes_no_bit():
    s1, plain = txt2img()
    s2, off = txt2img(alwayson_scripts={"ELLA": {"args": [False]}})
    assert s1 == s2 == 200
    assert plain["images"] == off["images"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers(sampler):
    status, plain = txt2img(sampler_name=sampler)
    status2, body = txt2img(sampler_name=sampler, alwayson_scripts=ella())
    assert status == status2 == 200, body
    text = info(body)["infotexts"][0]
    assert f"ELLA: {MODEL} [" in text and f"ELLA T5: {T5}" in text
    assert body["images"] != plain["images"]


def test_batch_negative_and_batch_count():
    status, body = txt2img(batch_size=2, n_iter=2, negative_prompt="blurry, dark", alwayson_scripts=ella())
    assert status == 200 and len(body["images"]) == 4


def test_hires_fix():
    status, body = txt2img(
        enable_hr=True,
        hr_scale=2,
        hr_second_pass_steps=2,
        denoising_strength=0.5,
        hr_prompt="a detailed red cube",
        hr_additional_modules=["Use same choices"],
        hr_cfg=7,
        alwayson_scripts=ella(),
    )
    assert status == 200, body
    assert "ELLA:" in info(body)["infotexts"][0]


def test_img2img():
    with open(Path(__file__).with_name("init.png"), "rb") as f:
        image = base64.b64encode(f.read()).decode()
    status, body = call(
        "/sdapi/v1/img2img",
        {
            "init_images": [image],
            "prompt": "a red cube",
            "steps": 4,
            "width": 64,
            "height": 64,
            "denoising_strength": 0.6,
            "alwayson_scripts": ella(),
        },
    )
    assert status == 200, body
    assert "ELLA:" in info(body)["infotexts"][0]


def test_prompt_syntax_and_modes():
    status, body = txt2img(
        prompt="a [red:blue:0.5] (cube:1.3) AND a sphere BREAK on grass",
        alwayson_scripts=ella(mode="ella+clip", negative="clip", start=0.0, end=0.8),
    )
    assert status == 200, body


def test_positional_args_and_infotext_round_trip():
    status, body = txt2img(alwayson_scripts={"ELLA": {"args": [True, MODEL, T5, "Fixed 128"]}})
    assert status == 200
    text = info(body)["infotexts"][0]
    assert "ELLA length: Fixed 128" in text
    # styles=[]: Forge main's apply_infotext raises on the styles field otherwise (with or without ELLA)
    status, again = txt2img(infotext=text, styles=[])
    assert status == 200, again
    assert "ELLA length: Fixed 128" in info(again)["infotexts"][0] and f"ELLA: {MODEL} [" in info(again)["infotexts"][0]


@pytest.mark.parametrize(
    "args, message",
    [
        ([{"enabled": True, "model": MODEL, "t5": T5, "bogus": 1}], "Unknown ELLA argument"),
        ([{"enabled": True, "model": "../../secret", "t5": T5}], "outside the model folders"),
        ([{"enabled": True, "model": "missing-model", "t5": T5}], "was not found"),
    ],
)
def test_bad_requests_fail_loudly(args, message):
    status, body = txt2img(alwayson_scripts={"ELLA": {"args": args}})
    assert status == 422, body
    assert message in json.dumps(body)
    status, ok = txt2img(alwayson_scripts=ella())  # and the next job works
    assert status == 200


def test_models_route_lists_and_checks_the_installed_files():
    status, models = call("/ella/v1/models")
    assert status == 200, models
    assert MODEL in models["models"] and T5 in models["t5"] and models["missing"] == []
    status, checked = call(f"/ella/v1/models?check=true&model={MODEL}&t5={T5}")
    assert status == 200
    items = {item["name"]: item for item in checked["check"]["items"]}
    assert items["ELLA model"]["ok"] and items["ELLA weights"]["ok"] and items["T5 tokenizer"]["ok"]
    assert items["ELLA sha256"]["skipped"]  # not a released file name: shown, not compared
    if not models["downloads_allowed"]:  # a WebUI started offline refuses, naming why
        status, refused = call("/ella/v1/download", {"kinds": ["ella"]})
        assert status == 409 and models["offline_reason"] in refused["detail"]
