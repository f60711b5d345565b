"""ELLA per region in Regional Prompter's Attention mode: each region's text goes through T5 and the
TSC on its own, and the slice RP cuts for that region is exactly ELLA's tokens for that text."""

import fake_extensions
import fake_rp_attention
import pytest
import torch
import webui_env
from webui_env import ella, payload

pytestmark = pytest.mark.usefixtures("fresh_webui_state")

LONG = "a very long and detailed description of a blue sphere, " * 3  # two CLIP chunks in the fake CLIP


def rp(mode="Matrix", calc="Attention"):
    return {"Regional Prompter": {"args": [True, mode, calc]}}


def run_rp(webui, prompt, negative="", rp_args=None, **kw):
    from modules import shared
    from modules.api import Api

    api = Api([webui.module.ELLAScript, fake_extensions.FakeRegionalPrompter])
    status, body = api.txt2img(
        payload(prompt, negative_prompt=negative, **kw) | {"alwayson_scripts": ella() | (rp_args or rp())},
        sd_model=shared.sd_model,
    )
    return status, body, api.runners[False].alwayson_scripts[1]


def ref(webui, text, t):
    return webui_env.reference_conditioning(webui.models_dir, text, t)


def region_slices(context, spans, unit):
    """What RP hands each region's cross-attention: context[:, start*unit:end*unit] (+ the tail past whole units)."""
    tail = context.shape[1] % unit
    out = []
    for start, end in spans:
        piece = context[start * unit : end * unit]
        out.append(torch.cat([piece, context[-tail:]]) if tail else piece)
    return out


def rows(script, batch=1):
    """(t, cond row) and (t, uncond row) pairs over the recorded calls: A1111 batches cond and uncond when
    their lengths match, and otherwise calls the U-Net for each (the cond call first)."""
    cond, uncond = [], []
    cond_tokens = 64 * script.pt[-1][1]
    for call in script.calls:
        context, t = call["context"], call["t"]
        if context.shape[0] == 2 * batch:
            cond += zip(t[:batch].tolist(), context[:batch])
            uncond += zip(t[batch:].tolist(), context[batch:])
        else:
            (cond if context.shape[1] == cond_tokens else uncond).extend(zip(t.tolist(), context))
    return cond, uncond


@pytest.mark.parametrize("mode", ["Matrix", "Mask"])
def test_each_region_gets_its_own_ella_tokens(webui, mode):
    regions = ["a red cube", "a blue sphere", "a green cone"]
    status, body, script = run_rp(webui, " BREAK ".join(regions), negative="blurry", rp_args=rp(mode))
    assert status == 200, body
    assert script.pt == [[0, 1], [1, 2], [2, 3]] and script.nt == [[0, 1]]
    assert {c["unit"] for c in script.calls} == {64}  # RP cuts 64-token units while ELLA runs
    cond, uncond = rows(script)
    assert len(cond) == len(uncond) == 4
    for t, row in cond:
        assert row.shape == (3 * 64, 768)
        for text, piece in zip(regions, region_slices(row, script.pt, 64)):
            assert torch.allclose(piece, ref(webui, text, t), atol=1e-4), text
    for t, row in uncond:
        assert row.shape == (64, 768)
        assert torch.allclose(region_slices(row, script.nt, 64)[0], ref(webui, "blurry", t), atol=1e-4)
    assert fake_rp_attention.TOKENSCON == 77  # RP's own unit again after the job


def test_a_region_spanning_two_chunks_repeats_its_tokens(webui):
    """RP gives a region as many units as its CLIP text has chunks; ELLA fills each with the region's tokens
    (the same keys twice leave softmax attention as it is)."""
    status, body, script = run_rp(webui, f"a red cube BREAK {LONG}", negative=LONG)
    assert status == 200, body
    assert script.pt == [[0, 1], [1, 3]] and script.nt == [[0, 2]]
    cond, uncond = rows(script)
    assert len(cond) == len(uncond) == 4
    for (t, cond_row), (_, uncond_row) in zip(cond, uncond):
        red, long_region = region_slices(cond_row, script.pt, 64)
        assert torch.allclose(red, ref(webui, "a red cube", t), atol=1e-4)
        expected = ref(webui, LONG.strip(), t)
        assert torch.allclose(long_region, torch.cat([expected, expected]), atol=1e-4)
        assert torch.allclose(uncond_row, torch.cat([ref(webui, LONG, t)] * 2), atol=1e-4)


def test_attention_output_of_a_duplicated_region_equals_ella_alone():
    """The claim behind repeating a region's tokens, on an SD1.5-shaped cross-attention."""
    torch.manual_seed(0)
    heads, dim = 8, 320
    q, k, v = (torch.nn.Linear(d, dim, bias=False) for d in (dim, 768, 768))
    x, tokens = torch.randn(1, 256, dim), torch.randn(1, 64, 768)

    def attention(context):
        qh = q(x).view(1, -1, heads, dim // heads).transpose(1, 2)
        kh = k(context).view(1, -1, heads, dim // heads).transpose(1, 2)
        vh = v(context).view(1, -1, heads, dim // heads).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)

    alone, twice = attention(tokens), attention(torch.cat([tokens, tokens], dim=1))
    assert torch.allclose(alone, twice, atol=1e-6)
    padded = attention(torch.cat([tokens, torch.zeros(1, 13, 768)], dim=1))  # a 77-token unit padded with zeros
    assert (padded - alone).abs().max() > 1e-3  # what a padding layout would have changed


def test_hires_and_batch_keep_the_layout(webui):
    prompts = "a red cube BREAK a blue sphere"
    status, body, script = run_rp(
        webui, prompts, batch_size=2, enable_hr=True, hr_second_pass_steps=2, denoising_strength=0.5, hr_cfg=7.0
    )
    assert status == 200, body
    cond, _ = rows(script, batch=2)
    assert len(cond) > 2 * 4  # two images, first pass and hires pass
    for t, row in cond:
        red, blue = region_slices(row, script.pt, 64)
        assert torch.allclose(red, ref(webui, "a red cube", t), atol=1e-4)
        assert torch.allclose(blue, ref(webui, "a blue sphere", t), atol=1e-4)


def test_region_count_that_changes_with_prompt_editing_is_refused(webui):
    status, body, script = run_rp(webui, "a red cube BREAK [a blue sphere:a cone BREAK a torus:2]")
    assert status == 422, body
    assert "Regional Prompter laid out 2 regions" in body["errors"] and "BREAK" in body["errors"]
    assert fake_rp_attention.TOKENSCON == 77


def test_rp_unit_is_restored_for_the_next_job_even_after_a_failure(webui):
    from modules import shared

    model = webui.model()
    model.fail_at_unet_call = 1  # the job dies in the sampler, before any postprocess
    status, body, script = run_rp(webui, "a red cube BREAK a blue sphere")
    assert status != 200 and script.calls and {c["unit"] for c in script.calls} == {64}
    assert fake_rp_attention.TOKENSCON == 77  # the failed job ended without postprocess; ELLA's guard restored it
    model.fail_at_unet_call = None
    # and should a job end where ELLA sees nothing, its process() (run for every job) gives RP its unit back
    fake_rp_attention.TOKENSCON = 64
    from ella_ext.companions import COMPANIONS
    from ella_ext.companions.regional_prompter import RegionalPrompter

    rp_companion = next(c for c in COMPANIONS if isinstance(c, RegionalPrompter))
    rp_companion._patched[id(vars(fake_rp_attention))] = (vars(fake_rp_attention), 77)
    from modules.api import Api

    api = Api([webui.module.ELLAScript, fake_extensions.FakeRegionalPrompter])
    status, body = api.txt2img(
        payload("a red cube BREAK a blue sphere") | {"alwayson_scripts": rp()}, sd_model=shared.sd_model
    )
    assert status == 200, body
    rp_script = api.runners[False].alwayson_scripts[1]
    assert {c["unit"] for c in rp_script.calls} == {77}


def test_latent_mode_is_left_as_it_was(webui):
    status, body, script = run_rp(webui, "a red cube BREAK a blue sphere", rp_args=rp("Matrix", "Latent"))
    assert status == 200, body
    assert script.calls == [] and fake_rp_attention.TOKENSCON == 77
