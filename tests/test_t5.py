"""T5 loads from every folder layout users have, encodes like transformers, and fails clearly."""

import json
import logging
import shutil

import factories
import pytest
import torch

from ella_ext import DeviceError, TextEncoderError, logs, t5_tokenizer
from ella_ext import t5 as t5mod
from ella_ext.t5 import inspect_t5_folder, load_t5_encoder

PROMPTS = factories.dpg_prompts(5) + ["a red cube", ""]


@pytest.mark.parametrize("layout", ["ella", "checkout", "encoder-file"])
def test_each_layout_matches_transformers(t5_folders, layout):
    folder, full = t5_folders[layout]
    config = json.loads((folder / "config.json").read_text())
    reference = factories.reference_t5_encoder(full, config)
    encoder = load_t5_encoder(folder, precision="fp32")
    assert encoder.dtype == torch.float32
    for prompt in PROMPTS:
        tokens = encoder.tokenize(prompt)
        assert tokens.ids[-1] == 1  # </s> appended (add_special_tokens=True)
        out = encoder.encode(tokens)
        ref = reference(input_ids=torch.tensor([tokens.ids])).last_hidden_state
        assert out.shape == (1, len(tokens.ids), 32)
        assert torch.allclose(out, ref, atol=1e-5), (layout, prompt, (out - ref).abs().max())


def test_checkout_never_reads_the_decoder(t5_folders, monkeypatch):
    from ella_ext import t5 as t5_module

    folder, _ = t5_folders["checkout"]
    opened = []
    real_load = t5_module.load_tensors

    def spy(header, keys, **kwargs):
        keys = list(keys)
        opened.append(str(header.path))
        assert not any(k.startswith("decoder.") or k.startswith("lm_head") for k in keys)
        return real_load(header, keys, **kwargs)

    monkeypatch.setattr(t5_module, "load_tensors", spy)
    encoder = load_t5_encoder(folder, precision="fp32")
    assert opened and not any(p.endswith("model-00003-of-00003.safetensors") for p in opened), opened
    names = [n for n, _ in encoder.model.named_parameters()]
    assert names and not any("decoder" in n or "lm_head" in n for n in names)
    assert inspect_t5_folder(folder).layout == "encoder-decoder"
    assert [f.name for f in inspect_t5_folder(folder).weight_files] == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
    ]


def test_embeddings_are_tied(t5_folder):
    encoder = load_t5_encoder(t5_folder, precision="fp32")
    assert encoder.model.encoder.embed_tokens.weight is encoder.model.shared.weight


def test_fixed_length_pads_to_128_and_keeps_real_tokens(t5_folder):
    encoder = load_t5_encoder(t5_folder, precision="fp32")
    flexible = encoder.tokenize("a red cube on a table")
    fixed = encoder.tokenize("a red cube on a table", fixed_length=128)
    assert len(fixed.ids) == 128 and fixed.n_real == len(flexible.ids)
    assert fixed.ids[: len(flexible.ids)] == flexible.ids and set(fixed.ids[len(flexible.ids) :]) == {0}
    a, b = encoder.encode(flexible), encoder.encode(fixed)
    assert b.shape == (1, 128, 32)
    # T5 masks its padding, so the real tokens' features match; the padding rows are not zero
    assert torch.allclose(a[0], b[0, : a.shape[1]], atol=1e-5)
    assert b[0, a.shape[1] :].abs().sum() > 0


def test_long_prompt_truncation(t5_folder):
    encoder = load_t5_encoder(t5_folder, precision="fp32")
    long = " ".join(factories.dpg_prompts(3))
    full = encoder.tokenize(long)
    assert len(full.ids) > 128 and not full.truncated
    cut = encoder.tokenize(long, truncate_at=128)
    assert len(cut.ids) == 128 and cut.truncated and cut.ids[-1] == 1
    assert not encoder.tokenize("short", truncate_at=128).truncated


def test_offsets_map_tokens_to_text(t5_folder):
    encoder = load_t5_encoder(t5_folder, precision="fp32")
    text = "a glossy red vase"
    tokens = encoder.tokenize(text)
    assert tokens.offsets is not None and len(tokens.offsets) == len(tokens.ids)
    real = [(a, b) for (a, b), m in zip(tokens.offsets, tokens.attention_mask) if b > a]
    assert [a for a, _ in real] == sorted(a for a, _ in real) and all(0 <= a < b <= len(text) for a, b in real)
    covered = {i for a, b in real for i in range(a, b)}
    # every character belongs to a token (tokenizers 0.13 count the space before a word into it)
    assert {i for i, c in enumerate(text) if c != " "} <= covered <= set(range(len(text)))


def test_auto_precision_is_fp16_where_supported(t5_folder):
    encoder = load_t5_encoder(t5_folder, precision="auto")
    assert encoder.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in encoder.model.parameters())  # 'wo' included, as the authors cast
    out = encoder.encode(encoder.tokenize("a red cube"))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_auto_falls_back_to_fp32_and_says_so_once(t5_folder, monkeypatch, caplog):
    monkeypatch.setattr(t5mod, "half_dtype_runs_on", lambda device: False)
    monkeypatch.setattr(logs, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="ella"):
        a = load_t5_encoder(t5_folder, precision="auto")
        b = load_t5_encoder(t5_folder, precision="auto")
    assert a.dtype == b.dtype == torch.float32
    assert sum("cannot run fp16" in r.message for r in caplog.records) == 1
    with pytest.raises(DeviceError, match="fp16"):
        load_t5_encoder(t5_folder, precision="fp16")


def test_bf16_and_bad_precision(t5_folder):
    assert load_t5_encoder(t5_folder, precision="bf16").dtype == torch.bfloat16
    with pytest.raises(TextEncoderError, match="precision 'fp8'"):
        load_t5_encoder(t5_folder, precision="fp8")


def test_fp16_overflow_is_reencoded_in_fp32(tmp_path, caplog, monkeypatch):
    folder = tmp_path / "overflow"
    factories.write_t5_folder(folder, "ella")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["encoder.final_layer_norm.weight"] = torch.full_like(state["encoder.final_layer_norm.weight"], 30000.0)
    save_file(state, str(folder / "model.safetensors"))
    monkeypatch.setattr(logs, "_warned", set())
    encoder = load_t5_encoder(folder, precision="fp16")
    with caplog.at_level(logging.WARNING, logger="ella"):
        out = encoder.encode(encoder.tokenize("a red cube on a glossy table"))
    assert torch.isfinite(out).all() and out.abs().max() > 65504  # needed fp32
    assert any("re-encoding it in fp32" in r.message for r in caplog.records)
    assert all(p.dtype == torch.float16 for p in encoder.model.parameters())  # back to fp16 afterwards


# --- bad folders --------------------------------------------------------------------------------


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_and_file_instead(tmp_path, t5_folder):
    with pytest.raises(TextEncoderError, match="does not exist"):
        load_t5_encoder(tmp_path / "nope")
    with pytest.raises(TextEncoderError, match="is a file"):
        load_t5_encoder(t5_folder / "config.json")


def test_missing_config(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    (folder / "config.json").unlink()
    with pytest.raises(TextEncoderError, match="has no config.json"):
        load_t5_encoder(folder)


def test_browser_prefixed_files_get_a_rename_hint(tmp_path, t5_folder):
    folder = tmp_path / "f"
    folder.mkdir()
    prefix = "models--google--flan-t5-xl--text_encoder_"
    for f in t5_folder.iterdir():
        shutil.copy(f, folder / (prefix + f.name))
    with pytest.raises(TextEncoderError, match=f"prefix '{prefix}'.*rename"):
        load_t5_encoder(folder)


def test_missing_tokenizer(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    (folder / "tokenizer.json").unlink()
    (folder / "spiece.model").unlink()
    with pytest.raises(TextEncoderError, match="no tokenizer"):
        load_t5_encoder(folder)


def test_broken_tokenizer_file(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    (folder / "tokenizer.json").write_text("{broken")
    (folder / "spiece.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(TextEncoderError, match="tokenizer .* could not be loaded"):
        load_t5_encoder(folder)


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"model_type": "bert", "d_model": 32}), "describes a 'bert' model"),
        (json.dumps({"model_type": "t5"}), "no valid 'd_model'"),
    ],
)
def test_bad_config(tmp_path, t5_folder, config, message):
    folder = copy_folder(t5_folder, tmp_path / "f")
    (folder / "config.json").write_text(config)
    with pytest.raises(TextEncoderError, match=message):
        load_t5_encoder(folder)


def test_mismatched_config_names_the_problem(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    config["d_model"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextEncoderError, match=r"other shapes than its config.json.*shared.weight"):
        load_t5_encoder(folder)
    config["d_model"], config["num_layers"] = 32, 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextEncoderError, match=r"do not match its config.json \(missing .*block.2"):
        load_t5_encoder(folder)


def test_only_pickle_weights_refused(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(TextEncoderError, match="only pickle weights"):
        load_t5_encoder(folder)


def test_duplicate_weights_refused(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    shutil.copy(folder / "model.safetensors", folder / "copy.safetensors")
    with pytest.raises(TextEncoderError, match="in both"):
        load_t5_encoder(folder)


def test_missing_shard(tmp_path, t5_folders):
    folder = copy_folder(t5_folders["checkout"][0], tmp_path / "f")
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(TextEncoderError, match="missing weight shards 'model-00002-of-00003"):
        load_t5_encoder(folder)


def test_truncated_weights(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(TextEncoderError, match="truncated"):
        load_t5_encoder(folder)


def test_remote_code_in_config_is_never_run(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    marker = tmp_path / "pwned"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    config["trust_remote_code"] = True
    (folder / "config.json").write_text(json.dumps(config))
    encoder = load_t5_encoder(folder, precision="fp32")
    assert type(encoder.model).__name__ == "T5EncoderModel"
    assert not marker.exists()


def test_good_folder_loads_after_bad_ones(tmp_path, t5_folder):
    with pytest.raises(TextEncoderError):
        load_t5_encoder(tmp_path / "missing")
    assert load_t5_encoder(t5_folder, precision="fp32").encode(load_t5_encoder(t5_folder).tokenize("x")).shape[0] == 1


# --- a tokenizer.json this tokenizers version cannot read (A1111's tokenizers 0.13 and the newest files)


def with_newest_tokenizer(t5_folder, folder):
    """A tiny T5 folder whose spiece.model and tokenizer.json come from tests/data (written by the newest tokenizers)."""
    import gzip
    from pathlib import Path

    data = Path(__file__).resolve().parent / "data" / "t5_tokenizer_newest"
    folder = copy_folder(t5_folder, folder)
    shutil.copyfile(data / "spiece.model", folder / "spiece.model")
    (folder / "tokenizer.json").write_bytes(gzip.decompress((data / "tokenizer.json.gz").read_bytes()))
    return folder, json.loads((data / "expected_ids.json").read_text())


def test_tokenizer_json_of_the_newest_tokenizers_gives_a_fast_tokenizer(tmp_path, t5_folder):
    """Under `make test-compat` (tokenizers 0.13.3) this file does not parse; ELLA builds the same tokenizer from spiece.model."""
    folder, expected = with_newest_tokenizer(t5_folder, tmp_path / "f")
    enc = load_t5_encoder(folder, precision="fp32")
    assert enc.tokenizer.is_fast and enc.tokenizer_note is None
    assert len(expected["ids"]) == 12
    for prompt, ids in expected["ids"].items():
        assert list(enc.tokenizer(prompt)["input_ids"]) == ids, prompt
    tokens = enc.tokenize("a red cube on a table")
    assert tokens.offsets is not None and len(tokens.offsets) == len(tokens.ids)

    from ella_ext.lru_cache import LRUCache
    from ella_ext.prompt_encoding import PromptEncoder
    from ella_ext.prompt_syntax import BuiltinPromptSyntax

    prompts = PromptEncoder(
        lambda: enc,
        "newest|fp32",
        LRUCache(),
        BuiltinPromptSyntax(),
        fixed_length=None,
        truncate_at=128,
        emphasis="no norm",
    )
    plain, weighted = prompts.encode("a red cube"), prompts.encode("a (red:1.5) cube")
    assert weighted.weighted and weighted.emphasis_ignored is None
    changed = (weighted.features - plain.features).abs().amax(dim=1) > 0
    assert 1 <= int(changed.sum()) < len(changed)  # only the tokens of "red" are scaled
    assert torch.allclose(weighted.features[changed], plain.features[changed] * 1.5)


def test_unreadable_tokenizer_json_falls_back_to_spiece_model(tmp_path, t5_folder):
    folder = copy_folder(t5_folder, tmp_path / "f")
    reference = load_t5_encoder(t5_folder, precision="fp32").tokenizer
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "PreTokenizerOfTheFuture"}  # no tokenizers version reads this
    (folder / "tokenizer.json").write_text(json.dumps(data))
    enc = load_t5_encoder(folder, precision="fp32")
    assert enc.tokenizer.is_fast and enc.tokenizer_note is None
    for prompt in factories.dpg_prompts(5):
        assert enc.tokenizer(prompt)["input_ids"] == reference(prompt)["input_ids"]


def test_slow_tokenizer_says_why_emphasis_is_ignored(tmp_path, t5_folder, monkeypatch):
    import transformers

    if transformers.T5TokenizerFast is transformers.T5Tokenizer:
        pytest.skip("transformers >= 5 has no slow T5 tokenizer; make test-compat runs this under 4.30")
    from ella_ext.lru_cache import LRUCache
    from ella_ext.prompt_encoding import PromptEncoder
    from ella_ext.prompt_syntax import BuiltinPromptSyntax

    folder = copy_folder(t5_folder, tmp_path / "f")
    (folder / "tokenizer.json").write_text("{broken")

    def no_conversion(*args, **kwargs):
        raise RuntimeError("conversion needs protobuf")

    monkeypatch.setattr(t5_tokenizer, "_fast_from_spiece", no_conversion)
    enc = load_t5_encoder(folder, precision="fp32")
    assert not enc.tokenizer.is_fast
    assert "conversion needs protobuf" in enc.tokenizer_note and "emphasis is ignored" in enc.tokenizer_note
    prompts = PromptEncoder(
        lambda: enc,
        "slow|fp32",
        LRUCache(),
        BuiltinPromptSyntax(),
        fixed_length=None,
        truncate_at=128,
        emphasis="original",
    )
    weighted = prompts.encode("a (red:1.5) cube")
    assert weighted.emphasis_ignored == enc.tokenizer_note and not weighted.weighted
    assert prompts.encode("a red cube").emphasis_ignored is None  # nothing to ignore without emphasis


@pytest.mark.parametrize("way", ["older json", "spiece.model"])
def test_each_fallback_alone_gives_the_same_tokens(tmp_path, t5_folder, monkeypatch, way):
    """Under tokenizers 0.13 the file from the newest tokenizers needs a fallback; each must do on its own
    (A1111 with ADetailer has protobuf 4, where the spiece.model conversion fails)."""
    folder, expected = with_newest_tokenizer(t5_folder, tmp_path / "f")

    def unavailable(*args, **kwargs):
        raise RuntimeError("not available here")

    monkeypatch.setattr(
        t5_tokenizer, "_fast_from_spiece" if way == "older json" else "_fast_from_older_json", unavailable
    )
    enc = load_t5_encoder(folder, precision="fp32")
    assert enc.tokenizer.is_fast and enc.tokenizer_note is None
    for prompt, ids in expected["ids"].items():
        assert list(enc.tokenizer(prompt)["input_ids"]) == ids, prompt


def test_older_metaspace_rewrite():
    new = {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "WhitespaceSplit"},
                {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
            ],
        },
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True},
    }
    old = t5_tokenizer._older_metaspace(new)
    assert old["pre_tokenizer"]["pretokenizers"][1] == {
        "type": "Metaspace",
        "replacement": "▁",
        "add_prefix_space": True,
    }
    assert old["decoder"] == {"type": "Metaspace", "replacement": "▁", "add_prefix_space": False}
