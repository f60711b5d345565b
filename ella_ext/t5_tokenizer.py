"""The T5 tokenizer, read so that emphasis works in every WebUI's tokenizers version.

Emphasis needs a fast tokenizer (its offsets map prompt text to tokens). It is read from tokenizer.json;
where this `tokenizers` cannot read that file (AUTOMATIC1111 pins tokenizers 0.13, which fails on files
that newer versions write), the file is rewritten into the older form, and failing that the tokenizer is
converted from spiece.model (which needs a protobuf that transformers' generated code accepts: not the 4.x
that ADetailer's mediapipe installs). Each gives the same tokens. Only where all fail is the slow
tokenizer used, and emphasis is then ignored with a note saying why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .errors import TextEncoderError, exception_summary
from .logs import log, warn_once

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

SPIECE_COMPANIONS = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def load_tokenizer(folder: Path) -> tuple[object, Optional[str]]:
    """(tokenizer, note). The note says why the tokenizer gives no offsets (emphasis ignored), where it does not."""
    import transformers

    errors = []
    fast = getattr(transformers, "T5TokenizerFast", None)
    if fast is not None:
        try:
            return fast.from_pretrained(str(folder), local_files_only=True), None
        except Exception as exc:  # transformers raises many types here; report them all
            errors.append(f"tokenizer.json: {exception_summary(exc, 200)}")
        if (folder / "tokenizer.json").is_file():
            for name, build in (
                ("tokenizer.json in the older format", _fast_from_older_json),
                ("spiece.model", _fast_from_spiece),
            ):
                try:
                    return build(fast, folder), None
                except Exception as exc:
                    errors.append(f"{name}: {exception_summary(exc, 200)}")
    slow = getattr(transformers, "T5Tokenizer", None)
    if slow is not None:
        try:
            tokenizer = slow.from_pretrained(str(folder), local_files_only=True, legacy=True)
        except Exception as exc:
            errors.append(f"T5Tokenizer: {exception_summary(exc, 200)}")
        else:
            note = (
                f"the T5 folder '{folder.name}' has no tokenizer that this WebUI's tokenizers library can read as a "
                f"fast tokenizer ({'; '.join(errors) or 'no tokenizer.json'}), so prompt emphasis is ignored. "
                "Add tokenizer.json and spiece.model from the released T5 folder."
            )
            warn_once(f"slow-tokenizer:{folder}", "ELLA: " + note)
            return tokenizer, note
    raise TextEncoderError(
        f"T5 tokenizer in '{folder}' could not be loaded ({'; '.join(errors)}). "
        "Make sure tokenizer.json or spiece.model are complete and that sentencepiece is installed."
    )


def _older_metaspace(node):
    """Rewrite, in place, Metaspace entries of a newer tokenizer.json into the form tokenizers 0.13 reads.

    Newer versions write {"prepend_scheme": "always", "split": true} where 0.13 expects
    {"add_prefix_space": true}; 0.13's Metaspace always splits, as T5's does.
    """
    if isinstance(node, dict):
        if node.get("type") == "Metaspace" and "prepend_scheme" in node:
            scheme = node.pop("prepend_scheme")
            node.pop("split", None)
            node["add_prefix_space"] = scheme != "never"
        for value in node.values():
            _older_metaspace(value)
    elif isinstance(node, list):
        for value in node:
            _older_metaspace(value)
    return node


def _fast_from_files(fast_class, folder: Path, names, tokenizer_json: Optional[dict] = None):
    """The fast tokenizer from some of the folder's tokenizer files (and a replacement tokenizer.json), in a temp folder."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ella-t5-tokenizer-") as tmp:
        for name in names:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, Path(tmp) / name)
        if tokenizer_json is not None:
            (Path(tmp) / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
        return fast_class.from_pretrained(tmp, local_files_only=True)


def _fast_from_older_json(fast_class, folder: Path):
    """The fast tokenizer from the folder's tokenizer.json rewritten for an older tokenizers (no protobuf needed)."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = _fast_from_files(fast_class, folder, SPIECE_COMPANIONS[1:], tokenizer_json=_older_metaspace(data))
    log.info("ELLA: read %s/tokenizer.json in the form this tokenizers version understands", folder)
    return tokenizer


def _fast_from_spiece(fast_class, folder: Path):
    """The fast tokenizer converted from spiece.model, ignoring the folder's tokenizer.json."""
    tokenizer = _fast_from_files(fast_class, folder, SPIECE_COMPANIONS)
    log.info(
        "ELLA: %s/tokenizer.json is not readable by this tokenizers version; built the tokenizer from spiece.model",
        folder,
    )
    return tokenizer
