"""The frozen flan-t5-xl encoder that turns prompts into ELLA's text features.

Loads the encoder from a local folder in any of the layouts users have:

* the ``models--google--flan-t5-xl--text_encoder`` folder shipped in the QQGYLab/ELLA repo
  (encoder-only ``model.safetensors`` with config and tokenizer files);
* a plain ``google/flan-t5-xl`` checkout (full encoder-decoder, possibly sharded with
  ``model.safetensors.index.json``): only the encoder's tensors are read, the decoder never
  enters memory;
* any folder holding an encoder-only ``*.safetensors`` file with ``config.json`` and the
  tokenizer files (``tokenizer.json`` and/or ``spiece.model``) beside it.

The model is built on the meta device and the tensors are read one at a time in the target
dtype, so loading never holds a second copy of the weights. Only safetensors are read; remote
code named in a config is never run (the T5 classes are used directly, never `Auto*`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import DeviceError, TextEncoderError
from .logs import warn_once
from .safetensors_file import PICKLE_SUFFIXES, SafetensorsHeader, load_tensors, read_header
from .settings import T5Precision
from .t5_tokenizer import TOKENIZER_FILES, load_tokenizer

INDEX_FILE = "model.safetensors.index.json"
PRECISIONS = tuple(p.value for p in T5Precision)


@dataclass(frozen=True)
class T5Folder:
    """A validated T5 folder: where its config, tokenizer and encoder weights are."""

    path: Path
    config: dict
    weight_files: tuple[Path, ...]
    layout: str  # "encoder-only" or "encoder-decoder"

    @property
    def identity(self) -> str:
        """Changes whenever the weights on disk change (for cache keys)."""
        parts = [str(self.path.resolve())]
        for f in self.weight_files:
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)


def _few(items, n: int = 4) -> str:
    items = list(items)
    return ", ".join(repr(i) for i in items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def inspect_t5_folder(path: str | os.PathLike) -> T5Folder:
    """Check that `path` is a usable T5 folder; raise TextEncoderError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise TextEncoderError(
            f"T5 encoder folder '{path}' does not exist. Put flan-t5-xl's encoder there (see README)."
        )
    if not path.is_dir():
        raise TextEncoderError(
            f"T5 encoder '{path}' is a file; give the folder that holds config.json, the tokenizer files and the weights."
        )
    names = {p.name for p in path.iterdir()}
    renamed = sorted(
        n
        for n in names
        if n.endswith("_config.json") and n != "tokenizer_config.json" and not n.endswith("_tokenizer_config.json")
    )
    if "config.json" not in names:
        hint = ""
        if renamed:
            prefix = renamed[0][: -len("config.json")]
            hint = (
                f" Its files carry the prefix '{prefix}' that a browser download adds; remove that prefix from every "
                "file name (e.g. rename "
                f"'{renamed[0]}' to 'config.json')."
            )
        raise TextEncoderError(f"T5 encoder folder '{path}' has no config.json.{hint}")
    if not any(n in names for n in TOKENIZER_FILES):
        raise TextEncoderError(
            f"T5 encoder folder '{path}' has no tokenizer: add tokenizer.json or spiece.model "
            "(with tokenizer_config.json and special_tokens_map.json) from the same model."
        )
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TextEncoderError(f"T5 config '{config_path}' is not valid JSON: {exc}. Download it again.") from None
    if not isinstance(config, dict):
        raise TextEncoderError(f"T5 config '{config_path}' is not a JSON object.")
    model_type = config.get("model_type", "t5")
    if model_type != "t5":
        raise TextEncoderError(
            f"T5 config '{config_path}' describes a '{model_type}' model; ELLA needs a T5 encoder (google/flan-t5-xl)."
        )
    for key in ("d_model", "num_heads", "d_kv", "d_ff", "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise TextEncoderError(f"T5 config '{config_path}' has no valid '{key}'; it is not a T5 config.")

    if INDEX_FILE in names:
        try:
            index = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            shards = sorted({v for k, v in weight_map.items() if _is_encoder_key(k)})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise TextEncoderError(f"T5 weight index '{path / INDEX_FILE}' is malformed. Download it again.") from None
        missing = [s for s in shards if s not in names]
        if missing:
            raise TextEncoderError(
                f"T5 folder '{path}' is missing weight shards {_few(missing)} named in {INDEX_FILE}."
            )
        weight_files = tuple(path / s for s in shards)
    else:
        weight_files = tuple(sorted(path / n for n in names if n.endswith(".safetensors")))
    if not weight_files:
        pickles = sorted(n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise TextEncoderError(
                f"T5 folder '{path}' has only pickle weights ({_few(pickles)}); ELLA loads only .safetensors because "
                "pickle files can run arbitrary code. Download the model*.safetensors files of the same model."
            )
        raise TextEncoderError(f"T5 folder '{path}' has no .safetensors weights.")
    decoder = bool(config.get("is_encoder_decoder", True)) and any(
        "decoder" in a.lower() or "conditionalgeneration" in a.lower() for a in config.get("architectures") or []
    )
    return T5Folder(
        path=path, config=config, weight_files=weight_files, layout="encoder-decoder" if decoder else "encoder-only"
    )


def _is_encoder_key(key: str) -> bool:
    return key.startswith("encoder.") or key == "shared.weight"


def half_dtype_runs_on(device) -> bool:
    """Whether this torch build runs the ops T5 needs in fp16 on `device` (old CPU builds and MPS may not)."""
    import torch

    try:
        x = torch.randn(2, 8, device=device).half()
        w = torch.randn(8, 8, device=device).half()
        y = torch.nn.functional.linear(x, w)
        torch.softmax(y, dim=-1)
        torch.tanh(y)
        y.float().pow(2).mean(-1)
        torch.nn.functional.embedding(torch.tensor([0, 1], device=device), w)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def resolve_precision(precision: str, device) -> object:
    """Map the user's T5 precision setting to a torch dtype on `device`.

    "auto" is fp16, the way the authors ran T5 (their results depend on it), falling back to fp32
    where the device cannot run half; the fallback is announced once.
    """
    import torch

    device = torch.device(device)
    if precision not in PRECISIONS:
        raise TextEncoderError(f"T5 precision '{precision}' is not one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if half_dtype_runs_on(device):
        return torch.float16
    if precision == "fp16":
        raise DeviceError(
            f"T5 precision fp16 was requested but this torch build cannot run fp16 on '{device}'. "
            "Set the ELLA T5 precision setting to auto or fp32."
        )
    warn_once(
        f"half:{device.type}",
        f"ELLA: this torch build cannot run fp16 on '{device}', so T5 runs in fp32. "
        "Images will differ slightly from the authors' fp16 results.",
    )
    return torch.float32


@dataclass(frozen=True)
class Tokens:
    """A tokenized prompt: ids (with </s>), T5 attention mask, and each token's character span in the text."""

    ids: tuple[int, ...]
    attention_mask: tuple[int, ...]
    offsets: Optional[tuple[tuple[int, int], ...]]  # None where the tokenizer gives no offsets
    truncated: bool = False

    @property
    def n_real(self) -> int:
        return sum(self.attention_mask)


@dataclass
class T5TextEncoder:
    """flan-t5-xl's encoder and tokenizer, loaded from a T5Folder.

    `encode` returns `last_hidden_state` for one tokenized prompt; if the half-precision output has
    inf/NaN (fp16 T5 overflows on some texts) the prompt is encoded again in fp32 rather than
    produce a black image.
    """

    folder: T5Folder
    dtype: object
    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    tokenizer_note: Optional[str] = None  # why the tokenizer gives no offsets (emphasis ignored), if it does not
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def d_model(self) -> int:
        return int(self.folder.config["d_model"])

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def identity(self) -> str:
        return f"{self.folder.identity}|{str(self.dtype).removeprefix('torch.')}"

    def to(self, device) -> T5TextEncoder:
        with self.lock:
            self.model.to(device)
        return self

    def tokenize(self, text: str, *, fixed_length: Optional[int] = None, truncate_at: Optional[int] = None) -> Tokens:
        """Tokenize with </s> appended. fixed_length pads/truncates to that many tokens (the reference's
        fixed mode); truncate_at only truncates (flexible mode under the truncate policy)."""
        kwargs: dict = {"add_special_tokens": True}
        if fixed_length is not None:
            kwargs.update(max_length=fixed_length, padding="max_length", truncation=True)
        elif truncate_at is not None:
            kwargs.update(max_length=truncate_at, truncation=True)
        with_offsets = bool(getattr(self.tokenizer, "is_fast", False))
        enc = self.tokenizer(text, return_offsets_mapping=with_offsets, **kwargs)
        ids = tuple(int(i) for i in enc["input_ids"])
        mask = tuple(int(m) for m in enc["attention_mask"])
        offsets = tuple((int(a), int(b)) for a, b in enc["offset_mapping"]) if with_offsets else None
        truncated = False
        if fixed_length is not None or truncate_at is not None:
            full = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            truncated = len(full) > (fixed_length or truncate_at)
        return Tokens(ids=ids, attention_mask=mask, offsets=offsets, truncated=truncated)

    def encode(self, tokens: Tokens):
        """last_hidden_state [1, L, d_model] for one tokenized prompt, on the encoder's device."""
        import torch

        with self.lock, torch.inference_mode():
            ids = torch.tensor([tokens.ids], dtype=torch.long, device=self.device)
            mask = torch.tensor([tokens.attention_mask], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            if not torch.isfinite(out).all() and self.dtype != torch.float32:
                warn_once(
                    f"nonfinite:{self.folder.path}",
                    f"ELLA: T5 in {self.dtype} produced inf/NaN for a prompt; re-encoding it in fp32.",
                )
                self.model.float()
                try:
                    out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                finally:
                    self.model.to(self.dtype)
            if not torch.isfinite(out).all():
                raise TextEncoderError(
                    f"T5 encoder '{self.folder.path}' produced inf/NaN even in fp32: its weights are broken. "
                    "Download them again."
                )
        return out


def _tensor_sources(folder: T5Folder) -> dict[str, tuple[SafetensorsHeader, str]]:
    """Map each encoder key to (file header, key in that file). Decoder tensors are never listed."""
    sources: dict[str, tuple[SafetensorsHeader, str]] = {}
    for f in folder.weight_files:
        header = read_header(f, error=TextEncoderError, what="T5 weights")
        for key in header.tensors:
            if not _is_encoder_key(key):
                continue
            if key in sources:
                raise TextEncoderError(
                    f"T5 folder '{folder.path}' has tensor '{key}' in both '{sources[key][0].path.name}' and "
                    f"'{f.name}'; keep only one copy of the encoder weights in the folder."
                )
            sources[key] = (header, key)
    return sources


def load_t5_encoder(path: str | os.PathLike, *, device="cpu", precision: str = "auto") -> T5TextEncoder:
    """Load flan-t5-xl's encoder from a local folder; see the module docstring for the layouts."""
    import torch
    from transformers import T5Config, T5EncoderModel

    folder = inspect_t5_folder(path)
    dtype = resolve_precision(precision, device)
    tokenizer, tokenizer_note = load_tokenizer(folder.path)

    config_fields = {
        k: v for k, v in folder.config.items() if k not in ("auto_map", "architectures", "torch_dtype", "dtype")
    }
    try:
        config = T5Config(**config_fields)
    except Exception as exc:
        raise TextEncoderError(f"T5 config '{folder.path / 'config.json'}' is not a valid T5 config: {exc}") from None
    with torch.device("meta"):
        model = T5EncoderModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = "encoder.embed_tokens.weight"
    sources = _tensor_sources(folder)
    if "shared.weight" not in sources and tied in sources:
        sources["shared.weight"] = sources.pop(tied)
    sources.pop(tied, None)
    wanted = {k: s for k, s in expected.items() if k != tied}
    missing = sorted(set(wanted) - set(sources))
    unexpected = sorted(set(sources) - set(wanted))
    if missing or unexpected:
        found = sorted(
            k for f in folder.weight_files for k in read_header(f, error=TextEncoderError, what="T5 weights").tensors
        )
        detail = []
        if missing:
            detail.append(f"missing {_few(missing)}")
        if unexpected:
            detail.append(f"unexpected {_few(unexpected)}")
        raise TextEncoderError(
            f"T5 weights in '{folder.path}' do not match its config.json ({'; '.join(detail)}; the files hold e.g. "
            f"{_few(found, 3)}). The config must belong to the same model as the weights (flan-t5-xl)."
        )
    wrong = [
        f"{k}: {list(sources[k][0].tensors[sources[k][1]].shape)} != {list(shape)}"
        for k, shape in wanted.items()
        if sources[k][0].tensors[sources[k][1]].shape != shape
    ]
    if wrong:
        raise TextEncoderError(
            f"T5 weights in '{folder.path}' have other shapes than its config.json describes ({_few(wrong, 3)}). "
            "The config must belong to the same model as the weights."
        )

    state = {}
    by_file: dict[Path, list[str]] = {}
    for header, file_key in sources.values():
        by_file.setdefault(header.path, []).append(file_key)
    headers = {h.path: h for h, _ in sources.values()}
    for file_path, keys in by_file.items():
        loaded = load_tensors(
            headers[file_path], keys, dtype=dtype, device="cpu", error=TextEncoderError, what="T5 weights"
        )
        for k, v in loaded.items():
            state["shared.weight" if k == tied else k] = v
    model.load_state_dict(state, strict=False, assign=True)
    model.set_input_embeddings(model.shared)  # tie encoder.embed_tokens to shared, as from_pretrained does
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftover:
        raise TextEncoderError(f"T5 weights in '{folder.path}' left parameters unset: {_few(leftover)}.")
    model.requires_grad_(False)
    model.eval()
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise DeviceError(f"T5 encoder could not be moved to '{device}': {exc}") from None
    return T5TextEncoder(folder=folder, dtype=dtype, model=model, tokenizer=tokenizer, tokenizer_note=tokenizer_note)
