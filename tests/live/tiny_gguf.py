"""Write a tiny random-weight llama model as GGUF (with the `gguf` package), for the live llama.cpp check.

    python tests/live/tiny_gguf.py out.gguf

Two blocks, 64 wide, a SentencePiece-style vocabulary of the words (and their prefixes) of caption_upsampling's instruction and
examples (so the long few-shot prompt stays a few hundred tokens) plus byte tokens. The answers are nonsense
word salad, which is all the check needs: the server, its chat template and its HTTP protocol are real. The
output rows of the control and byte tokens are zero so that end-of-text is rare and the text is words.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EMBED, HEADS, LAYERS, FFN, CONTEXT = 64, 4, 2, 128, 4096


def vocabulary() -> list[str]:
    """Words of the instruction and the examples (read from the module's source: this script may run in an
    interpreter without the repository's dependencies), letters, digits and punctuation."""
    source = (ROOT / "ella_ext" / "caption_upsampling.py").read_text(encoding="utf-8")
    words = sorted(set(re.findall(r"[A-Za-z]+", source)))
    # SentencePiece merges two adjacent pieces only into a piece of the vocabulary: every prefix is one
    pieces = ["▁" + w[:n] for w in words for n in range(1, len(w) + 1)]
    pieces += list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    pieces += ["▁", ".", ",", ":", ";", "'", '"', "-", "(", ")", "!", "?", "/", "<", ">", "|", "_"]
    return list(dict.fromkeys(pieces))


def write(path: Path, seed: int = 0) -> None:
    import gguf

    rng = np.random.default_rng(seed)
    specials = ["<unk>", "<s>", "</s>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    pieces = vocabulary()
    tokens = specials + bytes_ + pieces
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (3 + 256) + [float(len(p)) for p in pieces]  # longer merges first
    vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("ella-tiny-random")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    def weight(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # numpy shapes are (out, in); the writer reverses them into GGUF's (in, out) order as llama.cpp expects
    writer.add_tensor("token_embd.weight", weight(vocab, EMBED, scale=1.0))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(EMBED, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(EMBED, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(EMBED, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(FFN, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(FFN, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(EMBED, FFN))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, np.float32))
    output = weight(vocab, EMBED, scale=1.0)
    output[: 3 + 256] = 0.0  # specials and bytes: logit 0 against the words' spread of about +-8
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_gguf.py OUT.gguf")
    write(Path(sys.argv[1]))
    print(sys.argv[1])
