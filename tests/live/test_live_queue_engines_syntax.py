"""ELLA beside Agent Scheduler, a TensorRT engine and Prompt Fusion in a real WebUI (A1111).

Opt-in like the rest of tests/live, with the probe extension linked (see test_live_companions.py). Each test
skips, with the reason, when its extension is not installed. The TensorRT tests also need an engine built in
its tab for the loaded checkpoint, named by ELLA_LIVE_TRT_UNET (its *SD Unet* label, e.g. "[TRT] v1-5-tiny"),
and an NVIDIA GPU. A task queued from Agent Scheduler's UI (Enqueue) needs a browser and is not covered here;
its failure reason is covered by the fake-WebUI tests (tests/test_agent_scheduler.py).
"""

import json
import os
import time

import pytest
from live_env import MODEL, T5
from test_live_api import call, ella, txt2img
from test_live_companions import STEPS, ella_rows, positive, probe, recorded, require  # noqa: F401  (probe)

PROMPT = "a red cube on a glossy table"


pytestmark = pytest.mark.usefixtures("probe")


def each_call_is_ella(calls, texts_by_step):
    """Every U-Net call's cond row is ELLA's output for that step's text (at the t the call got)."""
    assert len(calls) == len(texts_by_step), (len(calls), len(texts_by_step))
    rows = ella_rows(calls, [*sorted(set(texts_by_step)), ""])
    assert [positive(r) for r in rows] == texts_by_step


# --- Agent Scheduler ----------------------------------------------------------------------------------


def run_queued(args, timeout=600):
    """Queue a txt2img task through Agent Scheduler's API and wait for it; returns the task."""
    body = {
        "prompt": PROMPT,
        "negative_prompt": "",
        "steps": STEPS,
        "width": 64,
        "height": 64,
        "seed": 11,
        "sampler_name": "Euler",
        "cfg_scale": 7,
        "alwayson_scripts": {"ELLA": {"args": args}},
    }
    status, queued = call("/agent-scheduler/v1/queue/txt2img", body)
    assert status == 200, queued
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, task = call(f"/agent-scheduler/v1/task/{queued['task_id']}")
        assert status == 200 and task["success"], task
        if task["data"]["status"] in ("done", "failed", "interrupted"):
            return task["data"]
        time.sleep(1)
    raise AssertionError("the queued task did not finish")


@pytest.mark.parametrize("form", ["dict", "dict in a list", "positional"])
def test_agent_scheduler_every_args_form_reaches_ella(form):
    require("agent scheduler")
    named = {"enabled": True, "model": MODEL, "t5": T5}
    args = {"dict": named, "dict in a list": [named], "positional": [True, MODEL, T5]}[form]
    task = run_queued(args)
    assert task["status"] == "done", task
    infotext = json.loads(task["result"])["geninfo"]["infotexts"][0]
    assert f"ELLA: {MODEL}" in infotext and f"ELLA T5: {T5}" in infotext
    each_call_is_ella(recorded(), [PROMPT] * STEPS)


def test_agent_scheduler_failed_task_carries_ellas_reason():
    require("agent scheduler")
    task = run_queued({"enabled": True, "model": MODEL, "t5": T5, "mode": "sometimes"})
    assert task["status"] == "failed"
    assert "ELLA" in (task["result"] or "") and "mode" in task["result"], task
    assert recorded() == []


# --- TensorRT -----------------------------------------------------------------------------------------


def trt_unet():
    require("tensorrt")
    label = os.environ.get("ELLA_LIVE_TRT_UNET")
    if not label:
        pytest.skip("set ELLA_LIVE_TRT_UNET to the SD Unet label of a TensorRT engine built for the loaded checkpoint")
    return {"override_settings": {"sd_unet": label}}


def test_tensorrt_engine_refuses_ella_only_before_any_unet_call():
    status, body = txt2img(**trt_unet(), alwayson_scripts=ella())
    assert status == 422, body
    text = json.dumps(body)
    assert "TensorRT U-Net" in text and "gives the U-Net 64 (ELLA only)" in text and "'SD Unet' to None" in text
    assert recorded() == []


def test_tensorrt_engine_takes_ella_and_clip():
    """Needs an engine whose profile reaches 154 tokens (the TensorRT tab's default preset)."""
    status, body = txt2img(**trt_unet(), alwayson_scripts=ella(mode="ella+clip"))
    if status == 422 and "TensorRT U-Net" in json.dumps(body):
        pytest.skip(f"the engine does not take 141 tokens: {body}")
    assert status == 200, body
    calls = recorded()
    assert calls and all(c["context"].shape[1] == 64 + 77 for c in calls)
    each_call_is_ella(calls, [PROMPT] * STEPS)


# --- Prompt Fusion ------------------------------------------------------------------------------------

TRAVEL = "a [red cube:blue sphere: 1, 2] on a table"


def test_prompt_fusion_syntax_is_refused_while_it_is_on():
    require("prompt fusion")
    status, body = txt2img(prompt=TRAVEL, override_settings={"prompt_fusion_enabled": True}, alwayson_scripts=ella())
    assert status == 422, body
    text = json.dumps(body)
    assert "Prompt Fusion is on" in text and "'a red cube on a table'" in text and "'a blue sphere on a table'" in text
    assert recorded() == []


def test_prompt_fusion_off_leaves_its_syntax_to_t5_as_text():
    require("prompt fusion")
    status, body = txt2img(prompt=TRAVEL, override_settings={"prompt_fusion_enabled": False}, alwayson_scripts=ella())
    assert status == 200, body
    each_call_is_ella(recorded(), [TRAVEL] * STEPS)


def test_prompt_fusion_on_keeps_the_webuis_prompt_editing():
    require("prompt fusion")
    prompt = "a [red cube:blue sphere:1] on a table"
    status, body = txt2img(prompt=prompt, override_settings={"prompt_fusion_enabled": True}, alwayson_scripts=ella())
    assert status == 200, body
    each_call_is_ella(recorded(), ["a red cube on a table"] * 2 + ["a blue sphere on a table"])
