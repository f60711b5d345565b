"""Prompt Fusion beside ELLA, on the fake WebUI: its syntax in a text T5 reads is refused by name (HTTP 422,
before sampling) while it is on; the WebUI's own syntax, and its syntax where CLIP reads it, run."""

import fake_extensions
import pytest
import torch
import webui_env
from webui_env import ella, payload

pytestmark = pytest.mark.usefixtures("fresh_webui_state")

TRAVEL = "a [red cube:blue sphere: 2, 8] on a table"


@pytest.fixture
def fusion(monkeypatch):
    return fake_extensions.FakePromptFusion().install(monkeypatch)


def ref(webui, text, t):
    return webui_env.reference_conditioning(webui.models_dir, text, t)


@pytest.mark.parametrize(
    "prompt, reading",
    [
        (TRAVEL, "a blend of 'a red cube on a table', 'a blue sphere on a table'"),
        ("a cube AND [fireball:seawater:dragon: , .1, .4:bezier] monster", "a blend of 'fireball monster', "),
        ("a (glossy red: 1.0, 2.0) cube", "'a [(glossy red:1.0)::2][(glossy red:2.0):2] cube'"),
    ],
)
def test_its_syntax_in_the_prompt_is_refused_before_sampling(webui, fusion, prompt, reading):
    model = webui.model()
    status, body = webui_env.run(webui, payload(prompt) | {"alwayson_scripts": ella()})
    assert status == 422, body
    errors = body["errors"]
    assert "Prompt Fusion is on" in errors and reading in errors, errors
    assert "T5 reads the WebUI's prompt" in errors and "'Enable prompt-fusion extension'" in errors
    assert model.unet_calls == []


def test_its_syntax_in_the_negative_is_refused_only_where_t5_reads_it(webui, fusion):
    model = webui.model()
    negative = "[blurry:grainy: 1, 3]"
    status, body = webui_env.run(webui, payload("a red cube", negative_prompt=negative) | {"alwayson_scripts": ella()})
    assert status == 422 and "the negative prompt '[blurry:grainy: 1, 3]'" in body["errors"]
    assert model.unet_calls == []
    # through CLIP, Prompt Fusion reads the negative itself
    status, body = webui_env.run(
        webui, payload("a red cube", negative_prompt=negative) | {"alwayson_scripts": ella(negative="clip")}
    )
    assert status == 200, body


@pytest.mark.parametrize(
    "prompt",
    [
        "a [red cube:blue sphere:2] on a table",  # the WebUI's prompt editing, which both parsers read alike
        "a [red cube:blue sphere:.5]  on a (glossy:1.2) table, [wood|stone]",  # Fusion re-spells .5 and the spaces
    ],
)
def test_the_webuis_own_syntax_runs_with_fusion_on(webui, fusion, prompt):
    model = webui.model()
    status, body = webui_env.run(webui, payload(prompt) | {"alwayson_scripts": ella()})
    assert status == 200, body
    assert len(model.unet_calls) == 4 and all(c.context.shape[1] == 64 for c in model.unet_calls)


def test_prompt_editing_still_reaches_ella_step_by_step(webui, fusion):
    model = webui.model()
    status, body = webui_env.run(webui, payload("a [red cube:blue sphere:2] on a table") | {"alwayson_scripts": ella()})
    assert status == 200, body
    for step, call in enumerate(model.unet_calls):
        text = "a red cube on a table" if step <= 2 else "a blue sphere on a table"
        assert torch.allclose(call.context[0], ref(webui, text, float(call.t[0])), atol=1e-4), step


def test_fusion_off_or_not_installed_leaves_its_syntax_as_text(webui, monkeypatch):
    fake_extensions.FakePromptFusion().install(monkeypatch, enabled=False)
    status, body = webui_env.run(webui, payload(TRAVEL) | {"alwayson_scripts": ella()})
    assert status == 200, body
    monkeypatch.undo()
    status, body = webui_env.run(webui, payload(TRAVEL) | {"alwayson_scripts": ella()})
    assert status == 200, body


def test_without_its_parser_the_interpolation_forms_are_still_found(webui, monkeypatch):
    """The option is on but Fusion's parser modules are not where ELLA looks (another version's layout)."""
    from modules import shared

    from ella_ext.companions.prompt_fusion import STEP_LIST

    monkeypatch.setitem(shared.opts.data, "prompt_fusion_enabled", True)
    status, body = webui_env.run(webui, payload(TRAVEL) | {"alwayson_scripts": ella()})
    assert status == 422 and "its interpolation ': 2, 8]'" in body["errors"]
    for text in ("[a:b:c: , .1, .4:bezier]", "(fire: 1.0, 2.0)", "[x:y:0.5,0.8]"):
        assert STEP_LIST.search(text), text
    for text in ("a [b:c:5] d", "(word:1.2), (other:0.8)", "1, 2, 3 cubes", "[a|b]"):
        assert not STEP_LIST.search(text), text
