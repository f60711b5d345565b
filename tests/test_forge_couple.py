"""ELLA per region in Forge Couple: each line of the prompt goes through T5 and the TSC at every step's t, and the
tensor Forge Couple's attention patch captured for that region holds exactly those tokens at each U-Net call
(tests/fake_extensions.FakeForgeCouple captures and records them as the real patch does)."""

import fake_extensions
import pytest
import torch
import webui_env
from webui_env import ella, payload

pytestmark = pytest.mark.usefixtures("fresh_webui_state")

LINES = ["a red cube on a wooden table", "a blue glass sphere", "a green cone made of felt"]


@pytest.fixture
def forge(webui):
    webui.set_backend("forge")
    webui.model()
    mapping = fake_extensions.forge_couple_library()
    original = mapping.text2cond
    yield webui
    assert mapping.text2cond is original  # ELLA gave Forge Couple its own encoder back


def run_couple(webui, prompt="\n".join(LINES), couple=(True, False), ella_first=True, ella_args=None, **kw):
    from modules import shared
    from modules.api import Api

    order = [webui.module.ELLAScript, fake_extensions.FakeForgeCouple]
    api = Api(order if ella_first else order[::-1])
    scripts = {"Forge Couple": {"args": list(couple)}}
    if ella_args is not False:
        scripts |= ella(**(ella_args or {}))
    status, body = api.txt2img(
        payload(prompt, negative_prompt="blurry", **kw) | {"alwayson_scripts": scripts}, sd_model=shared.sd_model
    )
    couple_script = next(s for s in api.runners[False].alwayson_scripts if s.title() == "Forge Couple")
    return status, body, couple_script


def ref(webui, text, t):
    return webui_env.reference_conditioning(webui.models_dir, text, t)


@pytest.mark.parametrize("ella_first", [True, False], ids=["ella-first", "couple-first"])
def test_each_region_holds_ellas_tokens_for_its_line_at_every_step(forge, ella_first):
    status, body, couple = run_couple(forge, ella_first=ella_first)
    assert status == 200, body
    assert len(couple.calls) == 4  # cond and uncond batched: one U-Net call per step
    seen_t = set()
    for call in couple.calls:
        t = float(call["t"][0])
        seen_t.add(t)
        assert [r.shape for r in call["regions"]] == [(1, 64, 768)] * 3  # no lcm(64, 77) padding any more
        for line, region in zip(LINES, call["regions"]):
            assert torch.allclose(region[0], ref(forge, line, t), atol=1e-4), (line, t)
    assert len(seen_t) == 4  # refilled at each step's own t, not once per pass


def test_ella_plus_clip_regions_are_ellas_tokens_then_the_lines_clip_tokens(forge):
    status, body, couple = run_couple(forge, ella_args={"mode": "ella+clip"})
    assert status == 200, body
    from modules import shared

    for call in couple.calls:
        t = float(call["t"][0])
        for line, region in zip(LINES, call["regions"]):
            assert region.shape == (1, 64 + 77, 768)
            assert torch.allclose(region[0, :64], ref(forge, line, t), atol=1e-4)
            clip = shared.sd_model.get_learned_conditioning([line])[0]
            assert torch.allclose(region[0, 64:], clip)


def test_hires_pass_regions_follow_the_hires_steps(forge):
    status, body, couple = run_couple(forge, enable_hr=True, hr_second_pass_steps=2, denoising_strength=0.5)
    assert status == 200, body
    hires = [c for c in couple.calls if c["hires"]]
    assert hires and len(hires) < len(couple.calls)
    for call in hires:
        t = float(call["t"][0])
        for line, region in zip(LINES, call["regions"]):
            assert torch.allclose(region[0], ref(forge, line, t), atol=1e-4)


def test_every_batch_of_a_job_gets_ella_regions(forge):
    status, body, couple = run_couple(forge, n_iter=2)
    assert status == 200, body
    call = couple.calls[-1]  # the recorder of the last batch
    t = float(call["t"][0])
    assert torch.allclose(call["regions"][1][0], ref(forge, LINES[1], t), atol=1e-4)


def test_without_ella_forge_couple_keeps_clips_regions(forge):
    from modules import shared

    status, body, couple = run_couple(forge, ella_args=False)
    assert status == 200, body
    for line, region in zip(LINES, couple.calls[0]["regions"]):
        assert region.shape == (1, 77, 768)
        assert torch.allclose(region[0], shared.sd_model.get_learned_conditioning([line])[0])


def test_a_step_range_is_refused_by_name(forge):
    status, body, _ = run_couple(forge, ella_args={"start": 0.25})
    assert status == 422
    assert "Forge Couple" in body["detail"] and "start to 0" in body["detail"]


def test_forge_couple_switched_off_changes_nothing(forge):
    from modules import shared

    status, body, couple = run_couple(forge, couple=(False, False))
    assert status == 200, body
    assert couple.calls == [] and all(c.context.shape[1] == 64 for c in shared.sd_model.unet_calls)
