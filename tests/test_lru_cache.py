"""The T5 feature cache: a hit costs no tokenizer or encoder call; bounds hold; keys separate settings."""

import factories
import pytest
import torch

from ella_ext.lru_cache import LRUCache
from ella_ext.prompt_encoding import PromptEncoder
from ella_ext.prompt_syntax import BuiltinPromptSyntax


@pytest.fixture(scope="module")
def encoder(t5_fp32):
    return t5_fp32


def make(encoder, cache, identity="t5|fp32", fixed=None, truncate=128):
    counting = factories.CountingEncoder(encoder)
    pe = PromptEncoder(
        lambda: counting,
        identity,
        cache,
        BuiltinPromptSyntax(),
        fixed_length=fixed,
        truncate_at=truncate,
        emphasis="original",
        storage_device=torch.device("cpu"),
    )
    return pe, counting


def test_hit_costs_no_encoder_call(encoder):
    cache = LRUCache()
    pe, counting = make(encoder, cache)
    a = pe.encode("a red cube on a table")
    assert (counting.encodes, counting.tokenizes) == (1, 1)
    b = pe.encode("a red cube on a table")
    assert (counting.encodes, counting.tokenizes) == (1, 1)
    assert torch.equal(a.features, b.features) and a.features.device.type == "cpu"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)


def test_a_new_job_with_the_same_settings_hits(encoder):
    cache = LRUCache()
    first, c1 = make(encoder, cache)
    second, c2 = make(encoder, cache)
    first.encode("a blue sphere")
    second.encode("a blue sphere")
    assert (c1.encodes, c2.encodes) == (1, 0)


@pytest.mark.parametrize("change", [dict(identity="t5|fp16"), dict(fixed=128), dict(truncate=None)])
def test_settings_that_change_features_miss(encoder, change):
    cache = LRUCache()
    base, _ = make(encoder, cache)
    base.encode("a blue sphere")
    other, counting = make(encoder, cache, **change)
    other.encode("a blue sphere")
    assert counting.encodes == 1


def test_emphasis_shares_the_cached_raw_features(encoder):
    cache = LRUCache()
    pe, counting = make(encoder, cache)
    plain = pe.encode("a red cube")
    weighted = pe.encode("a (red:1.5) cube")
    assert counting.encodes == 1  # same cleaned text: one encode
    assert weighted.weighted and not torch.equal(plain.features, weighted.features)


def test_lru_bounds_entries_and_bytes():
    cache = LRUCache(max_entries=2, max_bytes=10_000)
    t = lambda n: (torch.zeros(n), None)
    cache.put("a", t(100))
    cache.put("b", t(100))
    cache.get("a")  # a is now most recent
    cache.put("c", t(100))
    assert "a" in cache and "c" in cache and "b" not in cache
    cache.put("big", t(2000))  # 8000 bytes: evicts down to the byte limit
    assert cache.stats().nbytes <= 10_000 and "big" in cache
    cache.put("huge", t(5000))  # larger than the whole cache: not kept
    assert "huge" not in cache
    cache.configure(max_entries=0)
    assert len(cache) == 0
