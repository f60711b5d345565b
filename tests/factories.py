"""Small models the tests, benches and live suite build themselves (nothing is downloaded).

* a sentencepiece tokenizer trained at test time on DPG-Bench prompts;
* a tiny T5 (random weights) saved in each folder layout users have;
* random TSC weights saved with the released checkpoint's key names.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data" / "dpg_bench_prompts.jsonl.gz"
FIXTURES = Path(__file__).resolve().parent / "data" / "reference"
# The TSC that download and Check tests publish as the released file: real key names, about 500 KB,
# input_dim = the tiny T5's d_model.
RELEASED_TSC = dict(time_channel=16, time_embed_dim=32, width=64, layers=2, heads=8, num_latents=8, input_dim=32)


def dpg_prompts(limit: int | None = None) -> list[str]:
    out = []
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["prompt"])
            if limit is not None and len(out) >= limit:
                break
    return out


def write_tokenizer(folder: Path, *, vocab_size: int = 512, fast_json: bool = True) -> int:
    """Train a unigram sentencepiece model like T5's (pad=0, </s>=1, <unk>=2) and write T5 tokenizer files.

    Returns the vocabulary size. With fast_json the tokenizer.json is written too (as the released
    folders have it); without, only spiece.model and the configs (the loader converts).
    """
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(dpg_prompts(400)),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"extra_ids": 0, "model_max_length": 512, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    )
    if fast_json:
        from transformers import T5TokenizerFast

        tok = T5TokenizerFast.from_pretrained(str(folder))
        tmp = folder / "_tok"
        tok.save_pretrained(str(tmp))
        shutil.move(str(tmp / "tokenizer.json"), str(folder / "tokenizer.json"))
        shutil.rmtree(tmp)
    return vocab_size


def tiny_t5_config(vocab_size: int = 512, d_model: int = 32, layers: int = 2) -> dict:
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": vocab_size,
        "d_model": d_model,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": 4,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu",
        "is_encoder_decoder": True,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def random_t5_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full encoder-decoder T5 state dict with random weights (decoder included, untied copies)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**{k: v for k, v in config.items() if k != "architectures"}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5 if p.ndim == 1 else 0.2)  # layer-norm weights near 0.5, not 1: exercises them
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def encoder_state(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in full.items()
        if (k.startswith("encoder.") and k != "encoder.embed_tokens.weight") or k == "shared.weight"
    }


def _save(tensors: dict[str, torch.Tensor], path: Path, dtype=None) -> None:
    from safetensors.torch import save_file

    save_file({k: (v.to(dtype) if dtype else v).contiguous() for k, v in tensors.items()}, str(path))


def write_t5_folder(
    folder: Path, layout: str, *, seed: int = 0, dtype=None, d_model: int = 32
) -> dict[str, torch.Tensor]:
    """Write a tiny T5 in one of the layouts; returns the full fp32 state dict used.

    layouts: "ella" (QQGYLab/ELLA models--google--flan-t5-xl--text_encoder: encoder-only model.safetensors),
    "checkout" (google/flan-t5-xl: sharded encoder-decoder with index, plus decoy pickle files),
    "encoder-file" (an encoder-only safetensors under another name, spiece.model only).
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, fast_json=layout != "encoder-file")
    config = tiny_t5_config(vocab, d_model=d_model)
    full = random_t5_state(config, seed)
    if layout == "ella":
        config = dict(config, architectures=["T5EncoderModel"], is_encoder_decoder=False)
        _save(encoder_state(full), folder / "model.safetensors", dtype)
    elif layout == "checkout":
        keys = sorted(k for k in full if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))
        enc = [k for k in keys if k.startswith("encoder.")]
        rest = [k for k in keys if not k.startswith("encoder.")]
        # shard 1: shared + half the encoder; shard 2: the other half; shard 3: decoder + lm_head only
        half = len(enc) // 2
        shards = {
            "model-00001-of-00003.safetensors": ["shared.weight"] + enc[:half],
            "model-00002-of-00003.safetensors": enc[half:],
            "model-00003-of-00003.safetensors": [k for k in rest if k != "shared.weight"],
        }
        weight_map = {}
        for name, ks in shards.items():
            _save({k: full[k] for k in ks}, folder / name, dtype)
            weight_map.update(dict.fromkeys(ks, name))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04decoy pickle that must never be read")
    elif layout == "encoder-file":
        config = dict(config, architectures=["T5EncoderModel"], is_encoder_decoder=False)
        _save(encoder_state(full), folder / "flan-t5-xl-encoder-only.safetensors", dtype)
    else:
        raise ValueError(layout)
    (folder / "config.json").write_text(json.dumps(config))
    return full


def reference_t5_encoder(full: dict[str, torch.Tensor], config: dict):
    """The same weights in transformers' own T5EncoderModel (fp32), for comparisons."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(**{k: v for k, v in config.items() if k != "architectures"})
    model = T5EncoderModel(cfg)
    model.load_state_dict(
        {k: v for k, v in full.items() if k.startswith("encoder.") or k == "shared.weight"}, strict=False
    )
    model.set_input_embeddings(model.shared)
    return model.eval()


class CountingEncoder:
    """A real T5TextEncoder that records every text it tokenizes and counts encode calls."""

    def __init__(self, inner):
        self.inner, self.texts, self.encodes = inner, [], 0

    @property
    def tokenizes(self) -> int:
        return len(self.texts)

    def tokenize(self, text, **kw):
        self.texts.append(text)
        return self.inner.tokenize(text, **kw)

    def encode(self, tokens):
        self.encodes += 1
        return self.inner.encode(tokens)


def random_tsc_state(cfg, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with the real key names for a TSCConfig (AdaLN linears non-zero, so t matters)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in cfg.expected_shapes().items():
        fan_in = shape[-1] if len(shape) > 1 else 1
        scale = 0.02 if key.endswith("bias") else (1.0 / fan_in) ** 0.5
        out[key] = (torch.randn(shape, generator=g) * scale).to(dtype)
    return out


def write_tsc(path: Path, cfg, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_tsc_state(cfg, seed, dtype)
    _save(state, path)
    return state
