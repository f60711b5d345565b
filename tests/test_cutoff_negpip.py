"""Cutoff and NegPiP beside ELLA: each works where it can (and the infotext says how), and is refused by name with
the fix where it would silently do nothing (fakes in tests/fake_extensions.py)."""

import fake_extensions
import pytest
import torch
from webui_env import ella, payload

pytestmark = pytest.mark.usefixtures("fresh_webui_state")


def run_with(webui, extension, extension_args, prompt, ella_args=None, **kw):
    from modules import shared
    from modules.api import Api

    api = Api([webui.module.ELLAScript, extension])
    scripts = ella(**(ella_args or {})) | {extension.TITLE: {"args": list(extension_args)}}
    return api.txt2img(payload(prompt, **kw) | {"alwayson_scripts": scripts}, sd_model=shared.sd_model)


# --- Cutoff -------------------------------------------------------------------------------------


def test_cutoff_in_ella_only_is_refused_with_the_fix(webui):
    status, body = run_with(webui, fake_extensions.FakeCutoff, (True, "red"), "a red cube and a blue sphere")
    assert status == 422
    assert "Cutoff" in body["detail"] and "'ELLA + CLIP'" in body["detail"]


def test_cutoff_in_ella_plus_clip_acts_on_the_clip_tokens_and_says_so(webui):
    from modules import shared

    prompt = "a red cube and a blue sphere"
    status, body = run_with(webui, fake_extensions.FakeCutoff, (True, "red"), prompt, {"mode": "ella+clip"})
    assert status == 200, body
    assert "ELLA Cutoff: CLIP tokens only" in body["info"]
    plain = shared.sd_model.get_learned_conditioning([prompt])[0]  # the hook is gone after the job
    cond = shared.sd_model.unet_calls[0].context[0]
    assert cond.shape == (64 + 77, 768)
    assert torch.allclose(cond[64:], plain + fake_extensions.FakeCutoff.SHIFT)


def test_cutoff_switched_off_is_not_refused(webui):
    status, body = run_with(webui, fake_extensions.FakeCutoff, (False, "red"), "a red cube")
    assert status == 200, body
    assert "ELLA Cutoff" not in body["info"]


# --- NegPiP -------------------------------------------------------------------------------------

NEGPIP_PROMPT = "a portrait of a cat, (hat:-1.0)"


def test_negpip_in_one_call_works_and_t5_never_reads_the_negative_word(webui):
    from modules import shared

    status, body = run_with(webui, fake_extensions.FakeNegPiP, (True,), NEGPIP_PROMPT, negative_prompt="blurry")
    assert status == 200, body
    assert "ELLA NegPiP: CLIP vectors" in body["info"]
    calls = shared.sd_model.unet_calls
    assert all(c.context.shape[0] == 2 for c in calls)  # cond and uncond in one call: NegPiP finds its rows
    texts = [key[-1] for key in webui.extension.runtime.feature_cache._items]  # (encoder, length, cut, text)
    assert any("portrait of a cat" in text for text in texts) and not any("hat" in text for text in texts)


@pytest.mark.parametrize(
    "case, ella_args, prompt, option, reason",
    [
        ("negative via CLIP", {"negative": "clip"}, NEGPIP_PROMPT, None, "the negative prompt goes through CLIP"),
        ("batch cond/uncond off", {}, NEGPIP_PROMPT, ("batch_cond_uncond", False), "'Batch cond/uncond' is off"),
        ("AND sub-prompts", {}, "a cat AND a dog, (hat:-1.0)", None, "AND sub-prompts"),
    ],
)
def test_negpip_with_separate_calls_is_refused_naming_why(webui, monkeypatch, case, ella_args, prompt, option, reason):
    from modules import shared

    if option:
        monkeypatch.setitem(shared.opts.data, *option)
    status, body = run_with(webui, fake_extensions.FakeNegPiP, (True,), prompt, ella_args)
    assert status == 422, (case, body)
    assert "NegPiP" in body["detail"] and reason in body["detail"]
    assert "'Negative prompt through' to ELLA" in body["detail"]


def test_negpip_without_negative_weights_is_not_refused(webui):
    status, body = run_with(webui, fake_extensions.FakeNegPiP, (True,), "a cat", {"negative": "clip"})
    assert status == 200, body
    assert "ELLA NegPiP" not in body["info"]
