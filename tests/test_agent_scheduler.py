"""Agent Scheduler (job queue) beside ELLA, on the fake WebUI: every form of its queue API's script args
reaches ELLA, and a UI-queued task that ELLA stops records ELLA's reason."""

import inspect

import fake_extensions
import pytest
import torch
import webui_env
from webui_env import MODEL_NAME, T5_NAME, payload

pytestmark = pytest.mark.usefixtures("fresh_webui_state")

PROMPT = "a red cube on a glossy table"


def ella_script(webui):
    return webui.api().runners[False].alwayson_scripts[0]


def queued(webui, args):
    """The request Agent Scheduler's queue API replays for `"alwayson_scripts": {"ELLA": {"args": args}}`."""
    arg_list = fake_extensions.agent_scheduler_args_to_list(ella_script(webui), args)
    return payload(PROMPT) | {"alwayson_scripts": {"ELLA": {"args": arg_list}}}


def test_process_takes_ellas_arguments_by_name_in_their_positional_order(webui):
    from ella_ext.args import ELLAArgs

    spec = inspect.getfullargspec(ella_script(webui).process)
    assert spec.args == ["self", "p", *ELLAArgs.field_names()]
    assert spec.varargs is None and set(spec.defaults) == {None}
    assert ELLAArgs.field_names()[:3] == ["enabled", "model", "t5"]


@pytest.mark.parametrize("form", ["dict", "dict in a list", "positional"])
def test_every_queue_api_form_reaches_ella(webui, form):
    model = webui.model()
    named = {"enabled": True, "model": MODEL_NAME, "t5": T5_NAME, "mode": "ella+clip", "start": 0.25}
    args = {
        "dict": named,
        "dict in a list": [named],
        "positional": [True, MODEL_NAME, T5_NAME, "Flexible", "ELLA + CLIP", "ELLA", 0.25],
    }[form]
    if form == "dict":
        # the names are mapped onto ELLA's positional slots; the ones left out are None (their defaults)
        from ella_ext.args import ELLAArgs

        names = ELLAArgs.field_names()
        assert fake_extensions.agent_scheduler_args_to_list(ella_script(webui), args) == [named.get(n) for n in names]
        assert names[:7] == ["enabled", "model", "t5", "length", "mode", "negative", "start"]
    status, body = webui_env.run(webui, queued(webui, args))
    assert status == 200, body
    info = body["infotexts"][0]
    assert f"ELLA: {MODEL_NAME} [" in info and "ELLA mode: ELLA + CLIP" in info and "ELLA steps: 0.25-1" in info
    ella_calls = [c for c in model.unet_calls if c.context.shape[1] == 64 + 77]
    assert len(ella_calls) == 3  # steps 1-3 of 4 (start 0.25): ELLA's 64 tokens and CLIP's 77
    for call in ella_calls:
        ref = webui_env.reference_conditioning(webui.models_dir, PROMPT, float(call.t[0]))
        assert torch.allclose(call.context[0, :64], ref, atol=1e-4)


def test_dict_form_without_enabled_leaves_ella_off(webui):
    model = webui.model()
    status, body = webui_env.run(webui, queued(webui, {"model": MODEL_NAME}))
    assert status == 200, body
    assert "ELLA" not in body["infotexts"][0]
    assert all(c.context.shape[1] == 77 for c in model.unet_calls)


def test_bad_value_in_the_dict_form_is_a_422_naming_it(webui):
    status, body = webui_env.run(webui, queued(webui, {"enabled": True, "model": MODEL_NAME, "mode": "sometimes"}))
    assert status == 422
    assert "mode" in body["errors"] and "sometimes" in body["errors"]


def test_unknown_key_in_a_dict_in_a_list_is_a_422_naming_it(webui):
    status, body = webui_env.run(webui, queued(webui, [{"enabled": True, "model": MODEL_NAME, "lenght": "fixed"}]))
    assert status == 422
    assert "'lenght'" in body["errors"] and "length" in body["errors"]


def new_p(webui, script_args_for_ella):
    from modules import processing, shared

    runner = webui.api().runners[False]
    args = webui.api().init_script_args(runner, {"alwayson_scripts": {"ELLA": {"args": script_args_for_ella}}})
    return processing.StableDiffusionProcessingTxt2Img(
        **payload(PROMPT), sd_model=shared.sd_model, scripts=runner, script_args=args
    )


def test_ui_queued_task_that_ella_stops_records_ellas_reason(webui, monkeypatch):
    """A UI task replayed after the installed extensions changed: ELLA's slice is shifted by one."""
    from modules import processing

    scheduler = fake_extensions.FakeAgentScheduler().install(monkeypatch)
    model = webui.model()
    shifted = [True, MODEL_NAME, T5_NAME, "ELLA only", "Flexible"]  # a mode where the length goes
    task = scheduler.run_ui_task("task-1", lambda: processing.process_images(new_p(webui, shifted)).info)
    assert task.status == "failed"
    assert "ELLA 'length'" in task.result and "ELLA only" in task.result  # ELLA's reason, not an empty result
    assert scheduler.updates[-1] == ("task-1", "failed", task.result)  # and stored through its task manager
    assert model.unet_calls == []
    assert scheduler.console and task.result in scheduler.console[0]

    # the next task succeeds and keeps Agent Scheduler's own result
    ok = scheduler.run_ui_task("task-2", lambda: processing.process_images(new_p(webui, shifted[:3])).info)
    assert ok.status == "done" and f"ELLA: {MODEL_NAME} [" in ok.result
    assert scheduler.updates[-1] == ("task-2", "done", ok.result)
    assert len(scheduler.script_callbacks["task_finished"]) == 1  # ELLA registered its callback once


def test_failure_outside_a_queued_task_is_not_recorded_on_one(webui, monkeypatch):
    from modules import processing

    scheduler = fake_extensions.FakeAgentScheduler().install(monkeypatch)
    with pytest.raises(Exception, match="ELLA 'length'"):
        processing.process_images(new_p(webui, [True, MODEL_NAME, T5_NAME, "ELLA only"]))  # not from the queue
    task = scheduler.run_ui_task("task-3", lambda: processing.process_images(new_p(webui, [False])).info)
    assert task.status == "done" and task.result
    assert scheduler.script_callbacks["task_finished"] == []


def test_failed_task_with_a_result_of_its_own_is_left_alone(webui, monkeypatch):
    """API-queued tasks: Agent Scheduler stores the exception's text itself."""
    from ella_ext.companions.agent_scheduler import AgentScheduler

    scheduler = fake_extensions.FakeAgentScheduler().install(monkeypatch)
    companion = AgentScheduler()
    scheduler.current_task_id = "task-4"
    companion.job_failed(None, "ELLA: the reason")
    task = type("Task", (), {"id": "task-4", "status": "failed", "result": "ArgumentError: kept"})()
    for callback in scheduler.script_callbacks["task_finished"]:
        callback("task-4", status="failed", task=task)
    assert task.result == "ArgumentError: kept" and scheduler.updates == []


def test_a_companion_failing_to_pass_the_reason_on_does_not_hide_it(webui, monkeypatch):
    from ella_ext import companions
    from ella_ext.companions.base import Companion

    class Broken(Companion):
        name = "Broken"

        def job_failed(self, p, reason):
            raise RuntimeError("cannot record")

    monkeypatch.setattr(companions, "COMPANIONS", (Broken(), *companions.COMPANIONS))
    status, body = webui_env.run(webui, queued(webui, {"enabled": True, "model": MODEL_NAME, "mode": "sometimes"}))
    assert status == 422 and "mode" in body["errors"]
