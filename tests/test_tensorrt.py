"""TensorRT U-Net engines beside ELLA, on the fake WebUI: a job whose context length the active engine's
profile cannot take is refused (HTTP 422, naming the engine and the fix) before the U-Net gets it."""

from types import SimpleNamespace

import fake_extensions
import pytest
import torch
import webui_env
from webui_env import ella, payload

pytestmark = pytest.mark.usefixtures("fresh_webui_state")

PROMPT = "a red cube on a glossy table"
LONG_PROMPT = "a red cube on a glossy table, " * 6  # two CLIP chunks in the fake model: 154 tokens


@pytest.fixture
def engine(monkeypatch):
    from modules import sd_unet

    def select(tokens, **kw):
        unet = fake_extensions.FakeTrtUnet(tokens, **kw)
        monkeypatch.setattr(sd_unet, "current_unet", unet)
        return unet

    return select


def ref(webui, text, t):
    return webui_env.reference_conditioning(webui.models_dir, text, t)


def test_the_fake_engine_fails_like_tensorrt_outside_its_profile():
    unet = fake_extensions.FakeTrtUnet((77, 77, 154))
    with pytest.raises(ValueError, match="inference failed"):
        unet.forward(torch.zeros(2, 4, 8, 8), torch.zeros(2), torch.zeros(2, 64, 768))
    unet.forward(torch.zeros(2, 4, 8, 8), torch.zeros(2), torch.zeros(2, 154, 768))
    assert unet.calls == [154]


def test_ella_only_with_a_clip_built_engine_is_refused_before_sampling(webui, engine):
    model = webui.model()
    unet = engine((77, 77, 154))
    status, body = webui_env.run(webui, payload(PROMPT) | {"alwayson_scripts": ella()})
    assert status == 422, body
    errors = body["errors"]
    for words in (
        "TensorRT U-Net '[TRT] v1-5-pruned'",
        "77-154 context tokens",
        "gives the U-Net 64 (ELLA only)",
        "'SD Unet' to None",
        "'ELLA + CLIP'",
        "max prompt token count of at least 150",
    ):
        assert words in errors, (words, errors)
    assert model.unet_calls == [] and unet.calls == []
    # the same engine runs a job without ELLA (77 tokens)
    status, body = webui_env.run(webui, payload(PROMPT))
    assert status == 200 and unet.calls == [77] * 4


def test_ella_clip_fits_a_dynamic_engine(webui, engine):
    model = webui.model()
    unet = engine((77, 77, 154))
    status, body = webui_env.run(webui, payload(PROMPT) | {"alwayson_scripts": ella(mode="ella+clip")})
    assert status == 200, body
    assert unet.calls == [141] * 4  # cond and negative, 64 + 77 tokens each, in one call per step
    for call in model.unet_calls:
        t = float(call.t[0])
        assert torch.allclose(call.context[0, :64], ref(webui, PROMPT, t), atol=1e-4)


def test_ella_only_fits_an_engine_built_for_64_tokens(webui, engine):
    unet = engine((64, 77, 154))
    status, body = webui_env.run(webui, payload(PROMPT) | {"alwayson_scripts": ella()})
    assert status == 200, body
    assert unet.calls == [64] * 4


def test_ella_clip_with_a_static_77_token_engine_is_refused_before_sampling(webui, engine):
    model = webui.model()
    engine((77, 77, 77))
    status, body = webui_env.run(webui, payload(PROMPT) | {"alwayson_scripts": ella(mode="ella+clip")})
    assert status == 422, body
    assert "takes 77 context tokens" in body["errors"] and "gives the U-Net 141" in body["errors"]
    assert "max prompt token count of at least 150" in body["errors"]
    assert model.unet_calls == []


def test_ella_clip_with_a_long_prompt_is_refused_before_the_first_unet_call(webui, engine):
    """64 + 154 tokens: the minimum (141) fits, so the per-call check catches it."""
    model = webui.model()
    unet = engine((77, 77, 154))
    status, body = webui_env.run(webui, payload(LONG_PROMPT) | {"alwayson_scripts": ella(mode="ella+clip")})
    assert status == 422, body
    assert "gives the U-Net 218 (for the prompt)" in body["errors"]
    assert "max prompt token count of at least 225" in body["errors"]
    assert model.unet_calls == [] and unet.calls == []


def test_negative_through_clip_lengths_are_checked_per_half(webui, engine):
    """ELLA + CLIP, negative through CLIP: cond 141 and the CLIP negative 77 go in separate calls; both fit."""
    unet = engine((77, 77, 154))
    status, body = webui_env.run(
        webui, payload(PROMPT, negative_prompt="blurry") | {"alwayson_scripts": ella(mode="ella+clip", negative="clip")}
    )
    assert status == 200, body
    assert sorted(set(unet.calls)) == [77, 141]


def test_no_engine_or_another_kind_of_sd_unet_is_left_alone(webui, monkeypatch):
    from modules import sd_unet

    from ella_ext.companions.tensorrt import active_engine

    model = webui.model()
    assert active_engine() is None
    monkeypatch.setattr(sd_unet, "current_unet", SimpleNamespace(forward=lambda *a, **k: None))  # not TensorRT
    assert active_engine() is None
    status, body = webui_env.run(webui, payload(PROMPT) | {"alwayson_scripts": ella()})
    assert status == 200, body
    assert all(c.context.shape[1] == 64 for c in model.unet_calls)


def test_the_active_profile_is_the_one_read(engine):
    """TensorRT switches profile_idx to the hires profile before the hires pass."""
    from ella_ext.companions.tensorrt import active_engine, context_range

    unet = engine((77, 77, 154))
    unet.configs.append(
        {"config": SimpleNamespace(profile={"encoder_hidden_states": [(1, 64, 768), (1, 77, 768), (4, 231, 768)]})}
    )
    assert context_range(active_engine()) == (77, 154)
    unet.profile_idx = 1
    assert context_range(active_engine()) == (64, 231)
    unet.profile_idx = 5
    assert active_engine() is None
