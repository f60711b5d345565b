"""Process-wide ELLA state: the loaded TSC and T5, the feature cache, the settings.

One `ELLARuntime` lives as long as the WebUI. The TSC (134 MB in fp16) stays resident on the
compute device. T5 (about 2.8 GB in fp16) is loaded on first use and, between encodes, lives
where the user's residency setting says: on the GPU, offloaded to CPU memory, or unloaded after
each job. A `MemoryHooks` object lets each WebUI backend take part: Forge frees room through its
own memory manager before T5 moves to the GPU; A1111 with --lowvram/--medvram forces offload.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from .args import ELLAArgs
from .discovery import KNOWN_ELLA, KNOWN_T5, ModelRoots, resolve_ella_model, resolve_t5_encoder
from .download_status import human_size
from .errors import ELLAError, ModelPathError
from .file_hashes import file_key, file_sha256, sha256_known
from .lru_cache import LRUCache
from .memory_hooks import MemoryHooks
from .prompt_encoding import PromptEncoder
from .prompt_syntax import PromptSyntax
from .settings import Residency, Settings
from .t5 import T5TextEncoder, load_t5_encoder
from .tsc import TSC, load_ella

log = logging.getLogger("ella")

# Where ELLA says what it is doing while it takes time: the WebUI's progress text (webui/progress.py).
# Called with a line, or with None when ELLA's activity ends and the host's own text comes back.
Report = Callable[[Optional[str]], None]


def _dtype_name(dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))


def _device_name(device: torch.device) -> str:
    return "the GPU" if device.type == "cuda" else "CPU memory" if device.type == "cpu" else str(device)


@dataclass
class LoadedTSC:
    model: TSC
    path: Path
    key: tuple


class ELLARuntime:
    def __init__(
        self,
        settings: Optional[Settings] = None,
        hooks: Optional[MemoryHooks] = None,
        hub_download: Optional[Callable[..., Path]] = None,
        report: Optional[Report] = None,
    ):
        self.settings = settings or Settings()
        self.hooks = hooks or MemoryHooks()
        self.report: Report = report or (lambda text: None)
        self._activities: list[str] = []
        self.feature_cache = LRUCache(self.settings.cache_entries, self.settings.cache_mb * 2**20)
        self._hub_download = hub_download
        self._tsc: Optional[LoadedTSC] = None
        self._t5: Optional[T5TextEncoder] = None
        self._t5_key: Optional[tuple] = None
        self._lock = threading.RLock()

    # --- settings -------------------------------------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """Apply changed settings; a T5 precision change unloads T5 (it reloads in the new dtype)."""
        with self._lock:
            if settings.t5_residency not in list(Residency):
                raise ELLAError(
                    f"ELLA T5 residency '{settings.t5_residency}' is not one of "
                    f"{', '.join(r.value for r in Residency)}."
                )
            if settings.t5_precision != self.settings.t5_precision:
                self.unload_text_encoder()
            self.settings = settings
            self.feature_cache.configure(max_entries=settings.cache_entries, max_bytes=settings.cache_mb * 2**20)

    # --- what ELLA is doing ----------------------------------------------------------------------

    @contextmanager
    def activity(self, text: str) -> Iterator[None]:
        """Say `text` (log and progress text) while the block runs; an enclosing activity's text returns after."""
        log.info("%s", text)
        with self._lock:
            self._activities.append(text)
        self.report(text)
        try:
            yield
        finally:
            with self._lock:
                self._activities.remove(text)
                previous = self._activities[-1] if self._activities else None
            self.report(previous)

    # --- models ---------------------------------------------------------------------------------

    def locate_or_download(self, args: ELLAArgs, roots: ModelRoots) -> tuple[Path, Path]:
        """Paths of the chosen ELLA file and T5 folder; downloads the released ones if allowed and missing."""
        return (
            self._resolve_or_download(args.model, roots, resolve_ella_model, KNOWN_ELLA, "ella", roots.ella[0]),
            self._resolve_or_download(args.t5, roots, resolve_t5_encoder, KNOWN_T5, "t5", roots.t5[0]),
        )

    def _resolve_or_download(self, name, roots, resolve, known, kind, target):
        try:
            return resolve(name, roots)
        except ModelPathError:
            if not (self.settings.hub_download and name == known and self._hub_download is not None):
                raise
        with self.activity(f"ELLA: downloading {known} from the Hugging Face hub into {target}"):
            self._hub_download(kind, target, on_status=lambda status: self.report(f"ELLA: {status['message']}"))
        return resolve(name, roots)

    def tsc(self, path: Path) -> TSC:
        """The TSC for `path`, loaded once and kept resident (the previous one is released)."""
        with self._lock, torch.inference_mode(False):
            device = self.hooks.compute_device()
            dtype = self.hooks.tsc_dtype(device)
            key = (*file_key(path), str(device), dtype)
            if self._tsc is None or self._tsc.key != key:
                self._tsc = None
                size = human_size(os.path.getsize(path))
                with self.activity(
                    f"ELLA: loading the connector {path.name} ({size}) in {_dtype_name(dtype)} "
                    f"to {_device_name(device)}"
                ):
                    self._tsc = LoadedTSC(load_ella(path, device=device, dtype=dtype), path, key)
            return self._tsc.model

    def model_hash(self, path: Path) -> str:
        """sha256 of the file, first 10 hex digits (the WebUI's short-hash convention); computed once, in the
        cache the downloader and the Check report share."""
        if sha256_known(path):
            return file_sha256(path)[:10]
        with self.activity(f"ELLA: computing the sha256 of {Path(path).name} for the infotext (once per file)"):
            return file_sha256(path)[:10]

    def text_encoder(self, folder: Path) -> T5TextEncoder:
        """T5 ready to encode: loaded if needed and on the compute device."""
        with self._lock, torch.inference_mode(False):
            key = (os.path.realpath(folder), self.settings.t5_precision)
            if self._t5 is not None and (self._t5_key != key or self._t5.folder.identity != _folder_identity(folder)):
                self.unload_text_encoder()
            device = self.hooks.compute_device()
            if self._t5 is None:
                with self.activity(
                    f"ELLA: loading the T5 encoder {Path(folder).name} "
                    f"({_t5_size_on_disk(folder)} on disk) in {self._t5_precision_name()}"
                ):
                    self._t5 = load_t5_encoder(folder, device="cpu", precision=self.settings.t5_precision)
                self._t5_key = key
            if self._t5.device != device:
                with self.activity(f"ELLA: moving T5 ({human_size(self._t5.nbytes)}) to {_device_name(device)}"):
                    self.hooks.make_room(self._t5.nbytes, device)
                    self._t5.to(device)
            return self._t5

    def _t5_precision_name(self) -> str:
        from .t5 import resolve_precision

        try:
            return _dtype_name(resolve_precision(self.settings.t5_precision, "cpu"))
        except ELLAError:
            return self.settings.t5_precision  # the load itself reports the problem

    def text_encoder_identity(self, folder: Path) -> str:
        return f"{_folder_identity(folder)}|{self.settings.t5_precision}"

    def park_text_encoder(self) -> None:
        """After encoding: move T5 off the GPU unless the residency setting keeps it there."""
        with self._lock, torch.inference_mode(False):
            if self._t5 is None:
                return
            keep = self.settings.t5_residency == Residency.GPU and not self.hooks.force_offload()
            if not keep and self._t5.device.type != "cpu":
                with self.activity(f"ELLA: moving T5 ({human_size(self._t5.nbytes)}) off the GPU to CPU memory"):
                    self._t5.to("cpu")
                    self.hooks.empty_cache()

    def end_job(self) -> None:
        """Between jobs T5 follows the residency setting; 'unload' frees it entirely."""
        self.park_text_encoder()
        if self.settings.t5_residency == Residency.UNLOAD:
            self.unload_text_encoder()

    def unload_text_encoder(self) -> None:
        with self._lock:
            if self._t5 is not None:
                self._t5 = None
                self._t5_key = None
                self.hooks.empty_cache()

    def unload_all(self) -> None:
        with self._lock:
            self._tsc = None
            self.unload_text_encoder()
            self.feature_cache.clear()

    @property
    def loaded_tsc(self) -> Optional[LoadedTSC]:
        return self._tsc

    @property
    def loaded_text_encoder(self) -> Optional[T5TextEncoder]:
        """T5 as it waits between jobs (None when unloaded); bench/gpu_check.py checks where it is."""
        return self._t5

    # --- prompts --------------------------------------------------------------------------------

    def prompt_encoder(self, args: ELLAArgs, t5_folder: Path, syntax: PromptSyntax) -> PromptEncoder:
        return PromptEncoder(
            encoder_factory=lambda: self.text_encoder(t5_folder),
            encoder_identity=self.text_encoder_identity(t5_folder),
            cache=self.feature_cache,
            syntax=syntax,
            fixed_length=args.fixed_length,
            truncate_at=args.truncate_at,
            emphasis=args.emphasis,
            storage_device=torch.device("cpu") if self.settings.cache_on_cpu else None,
        )


def _t5_size_on_disk(folder: Path) -> str:
    from .t5 import inspect_t5_folder

    try:
        return human_size(sum(f.stat().st_size for f in inspect_t5_folder(folder).weight_files))
    except (ELLAError, OSError):
        return "size unknown"


def _folder_identity(folder: Path) -> str:
    from .t5 import inspect_t5_folder

    return inspect_t5_folder(folder).identity
