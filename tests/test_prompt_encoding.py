"""What reaches the TSC for each piece of prompt syntax: which T5 rows are scaled by how much, BREAK, caching."""

import logging

import factories
import prompt_cases
import pytest
import torch

from ella_ext import prompt_encoding as pe
from ella_ext.lru_cache import LRUCache
from ella_ext.prompt_syntax import BuiltinPromptSyntax, parse_attention


@pytest.fixture(scope="module")
def t5(t5_fp32):
    return t5_fp32


def make_encoder(t5, *, emphasis="original", fixed_length=None, truncate_at=None, cache=None):
    spy = factories.CountingEncoder(t5)
    enc = pe.PromptEncoder(
        lambda: spy,
        "tiny|fp32",
        cache if cache is not None else LRUCache(),
        BuiltinPromptSyntax(),
        fixed_length=fixed_length,
        truncate_at=truncate_at,
        emphasis=emphasis,
    )
    return enc, spy


def plain(t5, text):
    tokens = t5.tokenize(text)
    return t5.encode(tokens)[0], tokens


def expected_weights(tokens, spans, text):
    """Independent mapping: a token takes the weight of the span holding its first non-space character."""
    out = []
    for (a, b), m in zip(tokens.offsets, tokens.attention_mask):
        w = 1.0
        chars = [i for i in range(a, b) if not text[i].isspace()]
        if m and chars:
            for s, e, weight in spans:
                if s <= chars[0] < e:
                    w = weight
        out.append(w)
    return out


def test_plain_prompt_is_bit_identical_to_direct_encoding(t5):
    for text in factories.dpg_prompts(5):
        enc, spy = make_encoder(t5)
        got = enc.encode(text)
        ref, tokens = plain(t5, text)
        assert torch.equal(got.features, ref) and not got.weighted
        assert got.tokens == tokens.n_real and spy.texts == [text]


def test_emphasis_scales_exactly_the_covered_tokens_no_norm(t5):
    enc, spy = make_encoder(t5, emphasis="no norm")
    got = enc.encode("a glossy (red vase:1.5) on a [wooden] table")
    clean = "a glossy red vase on a wooden table"
    assert spy.texts == [clean]  # the syntax never reaches T5
    ref, tokens = plain(t5, clean)
    weights = expected_weights(tokens, [(9, 17, 1.5), (23, 29, 1 / 1.1)], clean)
    assert 1.5 in weights and pytest.approx(1 / 1.1) in weights and weights[-1] == 1.0  # </s> untouched
    scaled = torch.tensor(weights)[:, None]
    assert torch.allclose(got.features, ref * scaled, atol=0, rtol=1e-6) and got.weighted
    unchanged = [i for i, w in enumerate(weights) if w == 1.0]
    assert torch.equal(got.features[unchanged], ref[unchanged])


def test_emphasis_original_restores_the_mean_when_sane(t5):
    text = "a glossy (red vase:1.2) on a wooden table"
    no_norm = make_encoder(t5, emphasis="no norm")[0].encode(text).features
    original = make_encoder(t5, emphasis="original")[0].encode(text).features
    ref, _ = plain(t5, "a glossy red vase on a wooden table")
    ratio = float(ref.mean()) / float(no_norm.mean())
    if pe.MEAN_RESTORE_RANGE[0] <= ratio <= pe.MEAN_RESTORE_RANGE[1]:
        assert torch.allclose(original, no_norm * ratio, rtol=1e-5, atol=1e-7)
        assert float(original.mean()) == pytest.approx(float(ref.mean()), rel=1e-4, abs=1e-7)
    else:
        assert torch.equal(original, no_norm)


def test_apply_emphasis_mean_rule():
    f = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    out = pe.apply_emphasis(f, [2.0, 1.0, 1.0], restore_mean=True)
    assert float(out.mean()) == pytest.approx(float(f.mean()))
    assert torch.allclose(out[0] / out[1], torch.tensor([2.0, 2.0]))
    # a near-zero mean would explode the rescale: weights then apply unnormalised
    g = torch.tensor([[1.0, -1.0], [1.0, -0.9]])
    assert torch.equal(
        pe.apply_emphasis(g, [3.0, 1.0], restore_mean=True), pe.apply_emphasis(g, [3.0, 1.0], restore_mean=False)
    )


def test_ignore_weights_is_the_plain_path(t5):
    enc, spy = make_encoder(t5, emphasis="ignore")
    got = enc.encode("((a glossy red)) vase [on] a (wooden:1.4) table")
    ref, _ = plain(t5, "a glossy red vase on a wooden table")
    assert torch.equal(got.features, ref) and not got.weighted


def test_escaped_brackets_are_literal_text(t5):
    enc, spy = make_encoder(t5)
    got = enc.encode("a \\(red\\) vase \\[x\\]")
    assert spy.texts == ["a (red) vase [x]"] and not got.weighted
    assert torch.equal(got.features, plain(t5, "a (red) vase [x]")[0])


def test_break_encodes_chunks_separately_and_concatenates(t5):
    enc, spy = make_encoder(t5)
    got = enc.encode("a red cube BREAK a blue (ball:1.0)")
    assert spy.texts == ["a red cube", "a blue ball"]
    a, ta = plain(t5, "a red cube")
    b, tb = plain(t5, "a blue ball")
    assert torch.equal(got.features, torch.cat([a, b]))
    assert got.tokens == ta.n_real + tb.n_real  # each chunk keeps its own </s>


def test_cache_hit_costs_no_encoder_call_and_keys_on_settings(t5):
    cache = LRUCache()
    enc, spy = make_encoder(t5, cache=cache)
    first = enc.encode("a (red:1.3) cube")
    again = enc.encode("a [red] cube")  # same clean text, other weights: T5 is not run again
    assert spy.encodes == 1 and not torch.equal(first.features, again.features)
    fixed, spy2 = make_encoder(t5, cache=cache, fixed_length=128)
    assert fixed.encode("a red cube").features.shape[0] == 128 and spy2.encodes == 1


def test_long_prompt_policy(t5):
    long = " ".join(factories.dpg_prompts(3))
    cut = make_encoder(t5, truncate_at=128)[0].encode(long)
    kept = make_encoder(t5)[0].encode(long)
    assert cut.truncated and cut.features.shape[0] == 128 and cut.tokens == 128
    assert not kept.truncated and kept.features.shape[0] > 128


def test_decorated_dpg_prompts_weight_each_token_from_its_span(t5):
    """Realistic prompts with emphasis: the rows that reach the TSC are the clean text's rows times the span weights."""
    syntax = BuiltinPromptSyntax()
    checked = 0
    for prompt in prompt_cases.decorated_prompts(60, seed=3):
        text = prompt.split(" AND ")[0]
        if "BREAK" in text:
            continue
        enc, spy = make_encoder(t5, emphasis="no norm")
        got = enc.encode(text)
        segments = parse_attention(text)
        clean = "".join(t for t, _ in segments)
        assert spy.texts == [clean]
        ref, tokens = plain(t5, clean)
        spans, pos = [], 0
        for seg, w in segments:
            if w != 1.0 and seg:
                spans.append((pos, pos + len(seg), w))
            pos += len(seg)
        weights = torch.tensor(expected_weights(tokens, spans, clean))[:, None]
        assert torch.allclose(got.features, ref * weights, rtol=1e-6, atol=0), prompt
        checked += any(w != 1.0 for w in weights.flatten().tolist())
        assert syntax.parse_attention(text) == segments
    assert checked >= 15


def test_tokenizer_without_offsets_ignores_emphasis_and_says_so(t5, caplog):
    """A slow tokenizer (no tokenizer.json and no conversion possible) gives no character offsets."""
    import dataclasses

    class NoOffsets(factories.CountingEncoder):
        def tokenize(self, text, **kw):
            return dataclasses.replace(super().tokenize(text, **kw), offsets=None)

    spy = NoOffsets(t5)
    enc = pe.PromptEncoder(
        lambda: spy, "slow", LRUCache(), BuiltinPromptSyntax(), fixed_length=None, truncate_at=None, emphasis="original"
    )
    with caplog.at_level(logging.WARNING):
        got = enc.encode("a (red:1.5) cube")
    assert not got.weighted and torch.equal(got.features, plain(t5, "a red cube")[0])
    assert "emphasis is ignored" in caplog.text
