"""ELLA + CLIP with a separate CLIP text: tokens 64: of every U-Net context are exactly what a plain
job makes for the CLIP text (the WebUI's own conditioning), tokens :64 are ELLA's for the prompt,
and T5 never sees the CLIP text."""

import fake_extensions
import pytest
import torch
import webui_env
from webui_env import ella, payload, run

pytestmark = pytest.mark.usefixtures("fresh_webui_state")

PROMPT = "a red cube on a glossy table"
CLIP_TEXT = "sks style, (masterpiece:1.3), [cat:dog:2]"  # emphasis and a prompt-editing schedule
LONG_CLIP_TEXT = "ornate, " * 30 + "intricate"  # two 77-token chunks in the fake CLIP


def contexts(webui, body_or_p, **alwayson):
    model = webui.model()
    status, body = run(webui, body_or_p | {"alwayson_scripts": alwayson} if alwayson else body_or_p)
    assert status == 200, body
    return model.unet_calls, body


def plain(webui, prompt, **kw):
    calls, _ = contexts(webui, payload(prompt, **kw))
    return calls


def ref(webui, text, t):
    return webui_env.reference_conditioning(webui.models_dir, text, t)


@pytest.mark.parametrize("backend", ["a1111", "forge"])
@pytest.mark.parametrize("clip_text", [CLIP_TEXT, LONG_CLIP_TEXT])
def test_clip_part_is_the_plain_jobs_conditioning_bit_for_bit(webui, backend, clip_text):
    webui.set_backend(backend)
    reference = plain(webui, clip_text, negative_prompt="blurry")
    calls, body = contexts(
        webui, payload(PROMPT, negative_prompt="blurry"), **ella(mode="ella+clip", clip_prompt=clip_text)
    )
    assert len(calls) == len(reference) >= 4
    cond_rows = 0
    for call, plain_call in zip(calls, reference):
        # same call layout as the plain job: batched cond+uncond, or (long CLIP text) a cond call then an uncond call
        assert call.context.shape[0] == plain_call.context.shape[0]
        assert call.context.shape[1] == 64 + plain_call.context.shape[1]
        assert torch.equal(call.context[:, 64:], plain_call.context)  # bit for bit, the schedule included
        if call.context.shape[0] == 2:
            texts = [PROMPT, "blurry"]
        else:  # separate calls: the cond call is the longer one (two CLIP chunks)
            texts = [PROMPT] if call.context.shape[1] == 64 + 154 else ["blurry"]
        for row, text in enumerate(texts):
            assert torch.allclose(call.context[row, :64], ref(webui, text, float(call.t[row])), atol=1e-4)
            cond_rows += text == PROMPT
    assert cond_rows == 4
    # the schedule really changed the CLIP rows mid-job ([cat:dog:2])
    if clip_text == CLIP_TEXT:
        assert not torch.equal(calls[0].context[0, 64:], calls[-1].context[0, 64:])
    assert "ELLA CLIP prompt: " in body["info"]


def test_t5_never_sees_the_clip_text(webui, monkeypatch):
    from ella_ext.prompt_encoding import PromptEncoder

    seen = []
    encode = PromptEncoder.encode
    monkeypatch.setattr(PromptEncoder, "encode", lambda self, text: seen.append(text) or encode(self, text))
    calls, _ = contexts(
        webui,
        payload(PROMPT, negative_prompt="blurry"),
        **ella(mode="ella+clip", clip_prompt="zzqx trigger", clip_negative="qqzx bad"),
    )
    assert calls and sorted(seen) == sorted([PROMPT, "blurry"])


@pytest.mark.parametrize("negative", ["ella", "clip"])
def test_clip_negative(webui, negative):
    reference = plain(webui, PROMPT, negative_prompt="lowres, watermark")
    calls, body = contexts(
        webui,
        payload(PROMPT, negative_prompt="blurry"),
        **ella(mode="ella+clip", negative=negative, clip_negative="lowres, watermark"),
    )
    if negative == "ella":  # one batched call per step: cond row, uncond row
        assert len(calls) == 4
        for call, plain_call in zip(calls, reference):
            uncond = call.context[1]
            assert torch.equal(uncond[64:], plain_call.context[1])
            assert torch.allclose(uncond[:64], ref(webui, "blurry", float(call.t[1])), atol=1e-4)
    else:  # 141 vs 77 tokens: the WebUI makes separate cond and uncond calls; the uncond is all CLIP
        uncond = [c for c in calls if c.context.shape[1] == 77]
        assert len(uncond) == 4
        for call, plain_call in zip(uncond, reference):
            assert torch.equal(call.context[0], plain_call.context[1])
    assert 'ELLA CLIP negative: "lowres, watermark"' in body["info"]


def test_batch_and_sub_prompts_each_get_the_clip_text(webui):
    prompt = "a red cube AND a blue sphere:0.7"
    reference = plain(webui, CLIP_TEXT, batch_size=2)
    without, _ = contexts(webui, payload(prompt, batch_size=2), **ella(mode="ella+clip"))
    calls, _ = contexts(webui, payload(prompt, batch_size=2), **ella(mode="ella+clip", clip_prompt=CLIP_TEXT))
    assert len(calls) == len(reference) == len(without) == 4
    for call, plain_call, own in zip(calls, reference, without):
        # A1111 rows: 4 cond rows (2 images x 2 sub-prompts), then 2 uncond rows
        assert call.context.shape[0] == 6
        for row in range(4):
            assert torch.equal(call.context[row, 64:], plain_call.context[row // 2])
        assert torch.equal(call.context[:, :64], own.context[:, :64])  # ELLA's part is the sub-prompts' own
        assert not torch.equal(call.context[0, :64], call.context[1, :64])  # two different sub-prompts
        assert torch.equal(call.context[4, 64:], plain_call.context[2])  # the negative's CLIP part: the job's own


def test_hires_pass_uses_the_clip_text_with_the_hires_schedule(webui):
    kw = dict(steps=4, enable_hr=True, hr_second_pass_steps=6, denoising_strength=0.75, hr_cfg=7.0)
    reference = plain(webui, CLIP_TEXT, **kw)
    calls, _ = contexts(webui, payload(PROMPT, **kw), **ella(mode="ella+clip", clip_prompt=CLIP_TEXT))
    assert len(calls) == len(reference) > 4
    for call, plain_call in zip(calls, reference):
        assert torch.equal(call.context[0, 64:], plain_call.context[0])


def test_ella_only_mode_keeps_but_ignores_the_clip_text(webui):
    without, body_without = contexts(webui, payload(PROMPT), **ella())
    with_text, body = contexts(webui, payload(PROMPT), **ella(clip_prompt="sks style", clip_negative="bad"))
    assert all(torch.equal(a.context, b.context) for a, b in zip(without, with_text))
    assert "ELLA CLIP" not in body["info"]


def test_controlnet_marker_stays_in_front_with_a_clip_text(webui):
    from modules import shared
    from modules.api import Api

    model = webui.model()
    api = Api([webui.module.ELLAScript, fake_extensions.FakeControlNet])
    status, body = api.txt2img(
        payload(PROMPT, negative_prompt="blurry")
        | {
            "alwayson_scripts": ella(mode="ella+clip", clip_prompt=CLIP_TEXT, clip_negative="lowres")
            | {"ControlNet": {"args": [True]}}
        },
        sd_model=shared.sd_model,
    )
    assert status == 200, body
    cn = api.runners[False].alwayson_scripts[1]
    assert cn.calls and all(c.marked for c in cn.calls)
    assert sum(f for c in cn.calls for f in c.is_cond) == sum(not f for c in cn.calls for f in c.is_cond) == 4
    assert all(c.context.shape[1] == 64 + 77 for c in model.unet_calls)


@pytest.mark.parametrize(
    "field, text, message",
    [
        ("clip_prompt", "style AND other", "'clip_prompt' contains AND"),
        ("clip_prompt", "style <lora:x:1> AND other", "'clip_prompt' contains AND"),
        ("clip_negative", "<hypernet:x:1> bad", "'clip_negative' contains the extra-network tag '<hypernet:x:1>'"),
        ("clip_prompt", 7, "'clip_prompt' must be a text"),
    ],
)
def test_bad_clip_text_is_refused_by_name(webui, field, text, message):
    status, body = run(webui, payload(PROMPT) | {"alwayson_scripts": ella(mode="ella+clip", **{field: text})})
    assert status == 422, body
    assert message in body["detail"]


def test_and_in_the_clip_negative_is_plain_text(webui):
    # the WebUI does not split negatives at AND, so neither does ELLA
    reference = plain(webui, PROMPT, negative_prompt="cats AND dogs")
    calls, _ = contexts(
        webui, payload(PROMPT), **ella(mode="ella+clip", negative="clip", clip_negative="cats AND dogs")
    )
    uncond = [c for c in calls if c.context.shape[1] == 77]
    assert [torch.equal(c.context[0], r.context[1]) for c, r in zip(uncond, reference)] == [True] * 4


# --- LoRA tags in the CLIP text ------------------------------------------------------------------------

TAGGED_PROMPT = "a red cube on a glossy table <lora:main:0.5>"
TAGGED_CLIP = "sks style, (masterpiece:1.3) <lora:ink:0.8>"


@pytest.fixture
def lora():
    """The fake WebUI's Lora network (modules.extra_networks), its record cleared."""
    from modules import extra_networks

    network = extra_networks.extra_network_registry["lora"]
    network.activations.clear()
    return network


def loaded(lora):
    """What each activation loaded (calls with no tags at all are the WebUI's 'disable' calls)."""
    return [call for call in lora.activations if call]


def test_clip_text_tags_are_activated_with_the_prompts_and_nobody_reads_them(webui, lora):
    calls, body = contexts(
        webui, payload(TAGGED_PROMPT, negative_prompt="blurry"), **ella(mode="ella+clip", clip_prompt=TAGGED_CLIP)
    )
    # one activation for the first pass, the CLIP text's tag with the prompt's, each with its multiplier
    assert lora.activations == [[("ink", 0.8, 0.8), ("main", 0.5, 0.5)]]
    assert 'Lora hashes: "ink: 0123abcd, main: 0123abcd"' in body["info"]
    # CLIP's part is what a plain job makes of the CLIP text without the tag; ELLA's part what an ELLA job makes
    # of the prompt with an untagged CLIP text: neither T5 nor CLIP saw '<lora:…>'
    lora.activations.clear()
    reference = plain(webui, "sks style, (masterpiece:1.3) ", negative_prompt="blurry")
    untagged, _ = contexts(
        webui,
        payload(TAGGED_PROMPT, negative_prompt="blurry"),
        **ella(mode="ella+clip", clip_prompt="sks style, (masterpiece:1.3) "),
    )
    assert loaded(lora) == [[("main", 0.5, 0.5)]]
    assert len(calls) == len(reference) == len(untagged) == 4
    for call, plain_call, other in zip(calls, reference, untagged):
        assert torch.equal(call.context[:, 64:], plain_call.context)
        assert torch.equal(call.context, other.context)
    t = float(calls[0].t[0])
    # T5 reads the prompt without its tag (and, as the WebUI's AND parsing does, without the space it left)
    assert torch.allclose(calls[0].context[0, :64], ref(webui, "a red cube on a glossy table", t), atol=1e-4)
    # the infotext keeps the tag in the CLIP text, and only there
    first_line = body["info"].split("\n")[0]
    assert first_line == TAGGED_PROMPT
    assert 'ELLA CLIP prompt: "sks style, (masterpiece:1.3) <lora:ink:0.8>"' in body["info"]


def test_pasting_the_infotext_back_gives_the_same_args_and_the_same_activation(webui, lora):
    from modules import infotext_utils

    from ella_ext.args import ELLAArgs

    _, body = contexts(webui, payload(TAGGED_PROMPT), **ella(mode="ella+clip", clip_prompt=TAGGED_CLIP))
    params = infotext_utils.parse_generation_parameters(body["info"])
    pasted = ELLAArgs.from_infotext(params)
    assert pasted == ELLAArgs.from_dict(
        {
            "enabled": True,
            "model": webui_env.MODEL_NAME,
            "t5": webui_env.T5_NAME,
            "mode": "ella+clip",
            "clip_prompt": TAGGED_CLIP,
        }
    )
    lora.activations.clear()
    status, again = run(webui, payload(TAGGED_PROMPT) | {"infotext": body["info"]})  # the API's paste
    assert status == 200, again
    assert lora.activations == [[("ink", 0.8, 0.8), ("main", 0.5, 0.5)]]
    assert again["info"] == body["info"]


def test_hires_pass_activates_the_clip_text_tags_with_the_hires_prompts(webui, lora):
    kw = dict(
        steps=4,
        enable_hr=True,
        hr_second_pass_steps=4,
        denoising_strength=0.75,
        hr_cfg=7.0,
        hr_prompt="a red cube, sharp <lora:detail:0.3>",
    )
    calls, body = contexts(
        webui,
        payload(TAGGED_PROMPT, **kw),
        **ella(mode="ella+clip", clip_prompt="<lora:ink:0.8><lora:ink2:0.6:0.2> sks style"),
    )
    assert loaded(lora) == [
        [("ink", 0.8, 0.8), ("ink2", 0.6, 0.2), ("main", 0.5, 0.5)],
        [("ink", 0.8, 0.8), ("ink2", 0.6, 0.2), ("detail", 0.3, 0.3)],
    ]
    assert len(calls) > 4  # the hires pass ran, with the same CLIP text


def test_a_clip_text_of_tags_only_leaves_clip_the_prompt(webui, lora):
    reference = plain(webui, "a red cube on a glossy table ")
    calls, _ = contexts(webui, payload(TAGGED_PROMPT), **ella(mode="ella+clip", clip_prompt=" <lora:ink:0.8> "))
    assert loaded(lora)[-1] == [("ink", 0.8, 0.8), ("main", 0.5, 0.5)]
    assert all(torch.equal(c.context[:, 64:], r.context) for c, r in zip(calls, reference))


@pytest.mark.parametrize(
    "alwayson",
    [
        ella(clip_prompt=TAGGED_CLIP),  # ELLA only: the CLIP text is kept, unused
        ella(enabled=False, mode="ella+clip", clip_prompt=TAGGED_CLIP),
    ],
)
def test_clip_text_tags_are_not_activated_where_the_clip_text_does_not_apply(webui, lora, alwayson):
    status, body = run(webui, payload(TAGGED_PROMPT) | {"alwayson_scripts": alwayson})
    assert status == 200, body
    assert lora.activations == [[("main", 0.5, 0.5)]]
