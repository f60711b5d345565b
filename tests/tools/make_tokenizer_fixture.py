"""Writes tests/data/t5_tokenizer_newest/: spiece.model, tokenizer.json.gz and the ids it gives.

The tokenizer.json is written by the `tokenizers` of the main test environment (the newest), in
the form AUTOMATIC1111's pinned tokenizers 0.13 cannot read; `make test-compat` then checks that
ELLA still gets a fast tokenizer (and so emphasis) from such a folder. Run with the main venv:

    .venv/bin/python tests/tools/make_tokenizer_fixture.py
"""

import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import factories  # noqa: E402

OUT = HERE.parent / "data" / "t5_tokenizer_newest"
PROMPTS = factories.dpg_prompts(12)


def main():
    import tokenizers
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        factories.write_tokenizer(folder)
        tok = T5TokenizerFast.from_pretrained(str(folder))
        OUT.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "spiece.model", OUT / "spiece.model")
        with gzip.open(OUT / "tokenizer.json.gz", "wb", compresslevel=9) as f:
            f.write((folder / "tokenizer.json").read_bytes())
        expected = {
            "tokenizers": tokenizers.__version__,
            "ids": {p: tok(p)["input_ids"] for p in PROMPTS},
        }
        (OUT / "expected_ids.json").write_text(json.dumps(expected, indent=0))
    print(f"wrote {OUT} with tokenizers {tokenizers.__version__}")


if __name__ == "__main__":
    main()
