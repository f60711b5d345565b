"""Neutral Prompt beside ELLA: every image of a batch keeps its prompt tree, and AND_PERP / AND_SALT act on
ELLA's rows (tests/fake_extensions.FakeNeutralPrompt does what the real hijacks do)."""

import pytest
import torch
import webui_env
from fake_extensions import FakeNeutralPrompt
from webui_env import ella, payload, run

pytestmark = pytest.mark.usefixtures("fresh_webui_state")


@pytest.fixture
def neutral_prompt(monkeypatch):
    return FakeNeutralPrompt().install(monkeypatch)


@pytest.mark.parametrize("backend", ["a1111", "forge"])
def test_every_image_of_a_batch_keeps_its_prompt_tree(webui, neutral_prompt, backend):
    webui.set_backend(backend)
    webui.model()
    prompts = ["a red cube on a table", "a blue sphere on the grass"]
    status, body = run(webui, payload(prompts, batch_size=2) | {"alwayson_scripts": ella()})
    assert status == 200, body
    assert neutral_prompt.combined and all(n == 2 and call == prompts for n, call in neutral_prompt.combined)


def test_without_the_batch_wide_split_image_two_would_lose_its_prompt(webui, neutral_prompt):
    """What the bug looked like: one split per image leaves the last image's tree alone, and image 1 of a batch of
    2 then gets its uncond prediction only."""
    webui.model()
    prompts = ["a red cube on a table", "a blue sphere on the grass"]
    status, good = run(webui, payload(prompts, batch_size=2) | {"alwayson_scripts": ella()})
    assert status == 200
    syntax = webui.extension.syntax

    class PerImage:
        def __getattr__(self, name):
            return getattr(syntax, name)

        def sub_prompts(self, batch):
            return [syntax.sub_prompts([p])[0] for p in batch]

    webui.extension._syntax = PerImage()
    try:
        neutral_prompt.combined.clear()
        status, bad = run(webui, payload(prompts, batch_size=2) | {"alwayson_scripts": ella()})
    finally:
        webui.extension._syntax = syntax
    assert status == 200
    assert {n for n, _ in neutral_prompt.combined} == {1}
    assert torch.equal(good["images"][0], bad["images"][0]) and not torch.equal(good["images"][1], bad["images"][1])


def test_and_perp_sub_prompts_are_ellas_rows(webui, neutral_prompt):
    model = webui.model()
    status, body = run(webui, payload("a red cube AND_PERP a blue sphere", batch_size=2) | {"alwayson_scripts": ella()})
    assert status == 200, body
    call = model.unet_calls[0]
    t = float(call.t[0])
    assert call.context.shape == (6, 64, 768)  # 2 images x 2 leaves, then 2 uncond rows
    for row, text in enumerate(["a red cube", " a blue sphere"] * 2 + ["", ""]):
        assert torch.allclose(call.context[row], webui_env.reference_conditioning(webui.models_dir, text, t), atol=1e-4)
    assert all(n == 2 for n, _ in neutral_prompt.combined)


def test_a_separate_clip_text_does_not_replace_the_prompts_trees(webui, neutral_prompt):
    webui.model()
    prompts = ["a red cube AND_SALT a table", "a blue sphere"]
    args = ella(mode="ella+clip", clip_prompt="sks style, masterpiece")
    status, body = run(webui, payload(prompts, batch_size=2) | {"alwayson_scripts": args})
    assert status == 200, body
    assert any(call == ["sks style, masterpiece"] * 2 for call in neutral_prompt.calls)  # the CLIP text was split
    assert all(n == 2 and call == prompts for n, call in neutral_prompt.combined)  # but the prompts' came last
