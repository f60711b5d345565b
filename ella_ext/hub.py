"""Optional download of the released ELLA files from the Hugging Face hub.

Used only when the user enabled it in the settings and selects a released model that is not on
disk. Needs `huggingface_hub` (the WebUIs ship it) and a network; never needed otherwise.
"""

from __future__ import annotations

from pathlib import Path

from .discovery import KNOWN_ELLA, KNOWN_T5
from .errors import ModelFileError, TextEncoderError

REPO = "QQGYLab/ELLA"


def hub_download(kind: str, target_dir: Path) -> Path:
    """Download 'ella' (the TSC weights) or 't5' (the encoder folder) of QQGYLab/ELLA into target_dir."""
    error = ModelFileError if kind == "ella" else TextEncoderError
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise error("Hub download needs the huggingface_hub package; install it or download the files by hand (see README).") from None
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "ella":
            return Path(hf_hub_download(REPO, f"{KNOWN_ELLA}.safetensors", local_dir=str(target)))
        if kind == "t5":
            snapshot_download(REPO, allow_patterns=[f"{KNOWN_T5}/*"], local_dir=str(target))
            return target / KNOWN_T5
    except Exception as exc:
        raise error(f"Downloading {kind} files of {REPO} from the Hugging Face hub failed: {exc}. "
                    "Check the network, or download the files by hand (see README).") from None
    raise ValueError(f"unknown download kind {kind!r}")
