"""Reading safetensors files defensively.

Users download weights from anywhere. Before handing a file to the `safetensors` library we read
its header ourselves so that every way a file can be wrong (zero bytes, truncated, a pickle
renamed to `.safetensors`, a header that claims gigabytes) becomes an error that names the file
and says what to do. Pickle formats are never loaded: they can execute code.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import ELLAError

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})

# The safetensors library itself refuses headers above 100 MB.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype tag -> (bytes per element, torch dtype name)
DTYPES = {
    "BOOL": (1, "bool"),
    "U8": (1, "uint8"),
    "I8": (1, "int8"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
    "I16": (2, "int16"),
    "U16": (2, "uint16"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I32": (4, "int32"),
    "U32": (4, "uint32"),
    "F32": (4, "float32"),
    "I64": (8, "int64"),
    "U64": (8, "uint64"),
    "F64": (8, "float64"),
}

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int = 0  # file offset of the data section (8 + header length)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def _looks_like_pickle(head: bytes) -> bool:
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number; torch.save's zip
    # container starts with a local-file header.
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(b"PK\x03\x04")


def read_header(path: str | os.PathLike, *, error: Callable[[str], ELLAError], what: str) -> SafetensorsHeader:
    """Validate a safetensors file's header and return its tensor table.

    `error` builds the exception (so callers choose the ELLAError subclass); `what` names the file's
    role in messages ("ELLA model", "T5 weights").
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise error(
            f"{what} '{path}' is a pickle file ({path.suffix}); ELLA loads only .safetensors files because "
            "pickle files can run arbitrary code. Download the .safetensors version of the weights."
        )
    if not path.exists():
        raise error(f"{what} '{path}' does not exist. Check the path, or put the file in the model folder.")
    if not path.is_file():
        raise error(f"{what} '{path}' is not a file.")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{what} '{path}' is empty (0 bytes): the download failed. Download it again.")
    with open(path, "rb") as f:
        head = f.read(8)
        if _looks_like_pickle(head):
            raise error(
                f"{what} '{path}' is a PyTorch pickle file renamed to .safetensors; refusing to load it because "
                "pickle files can run arbitrary code. Download the real .safetensors file."
            )
        if len(head) < 8:
            raise error(f"{what} '{path}' is {size} bytes, too short to be a safetensors file. Download it again.")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES:
            raise error(
                f"{what} '{path}' is not a valid safetensors file: its header claims {header_len} bytes "
                f"(the limit is {MAX_HEADER_BYTES}). The file is corrupt or not safetensors; download it again."
            )
        if header_len > size - 8:
            raise error(
                f"{what} '{path}' is truncated or not a safetensors file: its header claims {header_len} bytes "
                f"but the file has {size}. Download it again."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise error(f"{what} '{path}' is not a safetensors file (its header is not JSON). Download it again.") from None
    if not isinstance(header, dict):
        raise error(f"{what} '{path}' is not a safetensors file (its header is not a JSON object).")

    data_size = size - 8 - header_len
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        metadata = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise error(f"{what} '{path}' is corrupt: the header entry for '{name}' is malformed.") from None
        if dtype not in DTYPES:
            raise error(f"{what} '{path}' has tensor '{name}' of unknown dtype {dtype!r}.")
        info = TensorInfo(dtype, shape, begin, end)
        if any(d < 0 for d in shape) or begin < 0 or end < begin or end - begin != info.numel * DTYPES[dtype][0]:
            raise error(f"{what} '{path}' is corrupt: tensor '{name}' has inconsistent size or offsets.")
        if end > data_size:
            raise error(
                f"{what} '{path}' is truncated: tensor '{name}' ends at byte {end} of the data section but the file "
                f"holds only {data_size}. The download was incomplete; download it again."
            )
        tensors[name] = info
    if not tensors:
        raise error(f"{what} '{path}' contains no tensors.")
    return SafetensorsHeader(
        path=path, tensors=tensors, metadata={str(k): str(v) for k, v in metadata.items()}, data_start=8 + header_len
    )


def load_tensors(
    header: SafetensorsHeader,
    keys: Iterable[str],
    *,
    dtype,
    device="cpu",
    error: Callable[[str], ELLAError],
    what: str,
):
    """Load `keys` from a validated file, cast to `dtype`, one tensor at a time.

    Plain reads rather than a memory map: mapped file pages would count in the process's memory
    next to the loaded weights (2x at peak for a cast), while read buffers are freed tensor by
    tensor, so loading peaks at the weights plus one tensor.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    try:
        with open(header.path, "rb") as f:
            for key in keys:
                info = header.tensors[key]
                source_dtype = getattr(torch, DTYPES[info.dtype][1])
                size = info.end - info.begin
                if size == 0:
                    tensor = torch.empty(info.shape, dtype=source_dtype)
                else:
                    buffer = bytearray(size)
                    f.seek(header.data_start + info.begin)
                    if f.readinto(buffer) != size:
                        raise error(f"{what} '{header.path}' is truncated at tensor '{key}'. Download it again.")
                    tensor = torch.frombuffer(buffer, dtype=source_dtype).reshape(info.shape)
                if tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                if str(device) != "cpu":
                    tensor = tensor.to(device)
                out[key] = tensor
    except ELLAError:
        raise
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        raise error(
            f"{what} '{header.path}' could not be read: {exc}. The file may be corrupt; download it again."
        ) from exc
    return out
