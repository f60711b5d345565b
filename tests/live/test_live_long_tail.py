"""The long tail in a real WebUI: Neutral Prompt, Forge Couple, Cutoff, NegPiP (opt-in, like the rest of tests/live;
needs the probe extension; each test skips, with the reason, when its extension is not installed).

Each test asserts on what reached the U-Net or the attention (rows, tokens, regions, t) and on the infotext.
"""

import pytest
import torch
from test_live_api import ella, info, txt2img
from test_live_companions import (  # noqa: F401  (probe: the fixture the tests use)
    STEPS,
    close,
    ella_rows,
    positive,
    probe,
    recorded,
    reference,
    require,
)

pytestmark = pytest.mark.usefixtures("probe")


# --- Neutral Prompt -------------------------------------------------------------------------------


def test_neutral_prompt_batch_of_two_each_image_keeps_its_prompt():
    require("Neutral Prompt")
    prompts = "a red cube on a table"
    status, body = txt2img(
        prompt=prompts, negative_prompt="blurry", steps=STEPS, batch_size=2, seed=5, alwayson_scripts=ella()
    )
    assert status == 200, body
    status, single = txt2img(
        prompt=prompts, negative_prompt="blurry", steps=STEPS, batch_size=1, seed=6, alwayson_scripts=ella()
    )
    assert status == 200, single
    # image 2 of the batch (seed 6) is the single job with seed 6: it kept its cond (was: its uncond only)
    assert body["images"][1] == single["images"][0]


def test_neutral_prompt_and_perp_rows_are_ellas():
    require("Neutral Prompt")
    status, body = txt2img(prompt="a red cube AND_PERP a blue sphere", steps=STEPS, alwayson_scripts=ella())
    assert status == 200, body
    rows = ella_rows(recorded(), ["a red cube", "a blue sphere", ""])
    assert all({"a red cube", "a blue sphere"} <= set(r) for r in rows)


# --- Forge Couple: ELLA per region, at the attention layer ------------------------------------------

LINES = ["a red cube on a wooden table", "a blue glass sphere", "a green cone made of felt"]


def couple_args(enable=True):
    # enable, compatibility (disable_hr), mode, separator, direction, background, background weight, mapping,
    # common parser, common debug, default in prompt
    return {
        "Forge Couple": {"args": [enable, False, "Basic", "\n", "Horizontal", "None", 0.5, [], "{ }", False, False]}
    }


def test_forge_couple_each_region_attends_to_ellas_tokens_for_its_line():
    require("Forge Couple")
    status, body = txt2img(
        prompt="\n".join(LINES),
        negative_prompt="blurry",
        steps=STEPS,
        width=128,
        height=64,
        alwayson_scripts=ella() | couple_args(),
    )
    assert status == 200, body
    unet = recorded()
    keys = recorded("couple_keys")
    assert len(keys) == len(unet) > 0
    worst = []
    for record in keys:
        t = float(unet[record["unet_call"]]["t"][0])
        chunks = record["keys"]
        cond_chunk = [i for i, c in enumerate(record["cond_or_uncond"]) if c == 0]
        assert cond_chunk, record["cond_or_uncond"]
        # the cond chunk: the whole prompt's context, then one row per region (batch 1), 64 tokens each
        start = sum(1 if c == 1 else 1 + len(LINES) for c in record["cond_or_uncond"][: cond_chunk[0]])
        regions = chunks[start + 1 : start + 1 + len(LINES)]
        assert regions.shape[1] == 64  # no lcm(64, 77) = 4928-key padding
        for line, row in zip(LINES, regions):
            ref = reference(line, t)
            assert close(row, ref), (line, t)
            worst.append(float((row - ref).abs().max()) / float(ref.abs().max()))
    print(f"Forge Couple regions vs ELLA alone per line: max relative difference {max(worst):.2e}")


def test_forge_couple_off_leaves_ella_alone():
    require("Forge Couple")
    status, body = txt2img(prompt="a red cube", steps=STEPS, alwayson_scripts=ella() | couple_args(False))
    assert status == 200, body
    assert not recorded("couple_keys")
    assert all(positive(r) == "a red cube" for r in ella_rows(recorded(), ["a red cube", ""]))


# --- Cutoff (A1111) -------------------------------------------------------------------------------


def cutoff_args(enabled=True):
    # enabled, targets, weight, disable_neg, strong, padding, interpolation, debug
    return {"Cutoff": {"args": [enabled, "red, blue", 0.5, True, False, "", "Lerp", False]}}


def test_cutoff_in_ella_only_is_refused_by_name():
    require("Cutoff")
    status, body = txt2img(prompt="a red cube and a blue sphere", steps=STEPS, alwayson_scripts=ella() | cutoff_args())
    assert status == 422, body
    assert "Cutoff" in str(body) and "ELLA + CLIP" in str(body)


def test_cutoff_in_ella_plus_clip_changes_only_the_clip_tokens():
    require("Cutoff")
    prompt = "a red cube and a blue sphere"
    contexts = {}
    for enabled in (False, True):
        status, body = txt2img(
            prompt=prompt, steps=STEPS, alwayson_scripts=ella(mode="ella+clip") | cutoff_args(enabled)
        )
        assert status == 200, body
        contexts[enabled] = [c["context"] for c in recorded()]
        if enabled:
            assert "ELLA Cutoff: CLIP tokens only" in info(body)["infotexts"][0]
    for off, on in zip(contexts[False], contexts[True]):
        assert torch.equal(off[:, :64], on[:, :64])  # ELLA's tokens are Cutoff's business no more than T5's
        assert not torch.equal(off[:, 64:], on[:, 64:])  # Cutoff acted on the CLIP tokens


# --- NegPiP ---------------------------------------------------------------------------------------


def test_negpip_one_call_appends_clip_vectors_after_ellas_tokens():
    require("NegPiP")
    status, body = txt2img(
        prompt="a portrait of a cat, (hat:-1.0)",
        negative_prompt="blurry",
        steps=STEPS,
        alwayson_scripts=ella() | {"NegPiP": {"args": [True]}},
    )
    assert status == 200, body
    assert "ELLA NegPiP: CLIP vectors" in info(body)["infotexts"][0]
    calls = recorded()
    assert all(c["context"].shape[0] == 2 for c in calls)  # cond and uncond in one call
    for c in calls:  # ELLA's 64 tokens for the prompt without the negative word
        t = float(c["t"][0])
        assert any(
            close(c["context"][row, :64], reference("a portrait of a cat,", t))
            or close(c["context"][row, :64], reference("a portrait of a cat, ", t))
            for row in range(2)
        )


def test_negpip_with_the_negative_through_clip_is_refused():
    require("NegPiP")
    status, body = txt2img(
        prompt="a portrait of a cat, (hat:-1.0)",
        steps=STEPS,
        alwayson_scripts=ella(negative="clip") | {"NegPiP": {"args": [True]}},
    )
    assert status == 422, body
    assert "NegPiP" in str(body)
