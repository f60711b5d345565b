"""The "Check" report for the selected ELLA file and T5 folder.

For each: where it was found (or the exact fix), its size, its sha256 (cached by path, size and
mtime, so a second check is instant) compared with the hash the hub publishes when online, and
whether it loads: the ELLA file through the real loader, the T5 folder through the same layout
checks the encoder loader runs (config, weights, shards, tokenizer, browser-prefixed names).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .discovery import KNOWN_ELLA, KNOWN_T5, ModelRoots, resolve_ella_model, resolve_t5_encoder, strip_hash
from .download_status import human_size
from .errors import ELLAError, TextEncoderError
from .file_hashes import file_key, file_matches, file_sha256
from .hub import ELLA_FILE, REPO, RemoteFile, hub_endpoint, offline_reason, remote_files
from .safetensors_file import read_header
from .t5 import TOKENIZER_FILES, inspect_t5_folder

README = "README, section Models"


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # not checked (offline, not a released file): neither a pass nor a failure
    repair: str = ""  # the download kind ("ella", "t5") whose Download fixes this failure, if one does


@dataclass
class CheckReport:
    items: list[CheckItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.items)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "items": [asdict(i) for i in self.items]}

    def to_markdown(self) -> str:
        problems = sum(not i.ok for i in self.items)
        summary = f"{problems} problem{'s' if problems > 1 else ''}" if problems else "all good"
        lines = [f"**ELLA model check: {summary}**", ""]
        for i in self.items:
            mark = "➖" if i.skipped else "✅" if i.ok else "❌"
            lines.append(f"- {mark} **{i.name}**: {i.detail}")
            if i.fix:
                lines.append(f"  - Fix: {i.fix}")
        return "\n".join(lines)


_loaded: dict[tuple, CheckItem] = {}  # (path, size, mtime) -> the ELLA weights item: loading is checked once


class _Hub:
    """The hub's listing per kind, fetched once per check; None with the reason where it is not available."""

    def __init__(self, endpoint: Optional[str], offline: bool, timeout: Optional[float]):
        self.endpoint, self.timeout = hub_endpoint(endpoint), timeout
        reason = offline_reason(offline)
        self.offline = f"not checked against the hub (offline: {reason})" if reason else None
        self._files: dict[str, tuple[Optional[dict[str, RemoteFile]], str]] = {}

    def files(self, kind: str) -> tuple[Optional[dict[str, RemoteFile]], str]:
        if self.offline:
            return None, self.offline
        if kind not in self._files:
            try:
                listed = {f.path: f for f in remote_files(kind, self.endpoint, timeout=self.timeout)}
                self._files[kind] = (listed, "")
            except ELLAError as exc:
                self._files[kind] = (
                    None,
                    f"not checked against the hub at {self.endpoint} ({getattr(exc, 'reason', exc)})",
                )
        return self._files[kind]


def check_models(
    model: str,
    t5: str,
    roots: ModelRoots,
    *,
    endpoint: Optional[str] = None,
    offline: bool = False,
    timeout: Optional[float] = 10.0,
) -> CheckReport:
    """Check the ELLA model and T5 folder named as in the UI (`model`, `t5`) under `roots`."""
    hub = _Hub(endpoint, offline, timeout)
    return CheckReport(_check_ella(model, roots, hub) + _check_t5(t5, roots, hub))


def _download_fix(what: str, where: Path) -> str:
    return f"press Download in the ELLA accordion to fetch {what} into '{where}', or put it there by hand ({README})."


def _check_ella(name: str, roots: ModelRoots, hub: _Hub) -> list[CheckItem]:
    released = strip_hash(name or "") in ("", KNOWN_ELLA)
    try:
        path = resolve_ella_model(name, roots)
    except ELLAError as exc:
        if released:
            fix = _download_fix(ELLA_FILE, roots.ella[0])
        else:
            fix = f"put '{name}.safetensors' into '{roots.ella[0]}' or choose another model."
        return [CheckItem("ELLA model", False, str(exc), fix[0].upper() + fix[1:], repair="ella" if released else "")]
    size = path.stat().st_size
    items = [CheckItem("ELLA model", True, f"found '{path}' ({human_size(size)})")]
    key = file_key(path)
    if key not in _loaded:
        _loaded[key] = _check_ella_weights(path, released)
    items.append(_loaded[key])
    items.append(_compare("ELLA sha256", path, "ella", ELLA_FILE if path.name == ELLA_FILE else None, hub))
    return items


def counted(n: int, noun: str) -> str:
    """'1 block', '6 blocks': a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check_ella_weights(path: Path, released: bool) -> CheckItem:
    import torch

    from .tsc import load_ella

    try:
        dtypes = sorted({t.dtype for t in read_header(path, error=ELLAError, what="ELLA model").tensors.values()})
        cfg = load_ella(path, dtype=torch.float16).config  # the real loader's checks; half the memory of fp32
    except ELLAError as exc:
        if released:
            fix = f"Download the file again: {_download_fix(ELLA_FILE, path.parent)}"
        else:
            fix = "Replace the file with a complete ELLA TSC .safetensors."
        return CheckItem("ELLA weights", False, str(exc), fix, repair="ella" if released else "")
    return CheckItem(
        "ELLA weights",
        True,
        f"a TSC with {counted(cfg.layers, 'block')}, width {cfg.width}, "
        f"{cfg.num_parameters / 1e6:.1f}M parameters, {'/'.join(dtypes)}; loads",
    )


def _compare(label: str, path: Path, kind: str, repo_path: Optional[str], hub: _Hub) -> CheckItem:
    """The sha256 of a local file, compared with the hub's where the file is a released one."""
    sha = file_sha256(path)
    if repo_path is None:
        return CheckItem(label, True, f"{sha}; not a released file name, so not compared with the hub", skipped=True)
    listed, reason = hub.files(kind)
    if listed is None:
        return CheckItem(label, True, f"{sha}; {reason}", skipped=True)
    remote = listed.get(repo_path)
    if remote is None:
        return CheckItem(label, True, f"{sha}; the hub lists no {repo_path}", skipped=True)
    if file_matches(path, remote):
        return CheckItem(label, True, f"{sha}; matches the hub ({REPO})")
    size = path.stat().st_size
    if size != remote.size:
        why = f"it has {human_size(size)}, the hub's {human_size(remote.size)}: incomplete"
    else:
        why = f"the hub publishes {remote.expected}"
    return CheckItem(
        label,
        False,
        f"{sha}; does not match the hub ({why}). The file is corrupt.",
        f"Press Download to replace '{path}' (or delete it and download it again by hand).",
        repair=kind,
    )


def _check_t5(name: str, roots: ModelRoots, hub: _Hub) -> list[CheckItem]:
    released = (name or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] in ("", KNOWN_T5)
    try:
        path = resolve_t5_encoder(name, roots)
    except ELLAError as exc:
        if released:
            fix = _download_fix(f"the folder {KNOWN_T5}", roots.t5[0])
        else:
            fix = f"put the folder '{name}' into '{roots.t5[0]}' or choose another T5 encoder."
        return [CheckItem("T5 encoder", False, str(exc), fix[0].upper() + fix[1:], repair="t5" if released else "")]
    files = sorted(p for p in path.iterdir() if p.is_file())
    size = human_size(sum(p.stat().st_size for p in files))
    items = [CheckItem("T5 encoder", True, f"found '{path}' ({counted(len(files), 'file')}, {size})")]
    if released:
        fix = f"Press Download to replace the folder's broken files (or put the released folder at '{path}'; {README})."
    else:
        fix = "Fix the folder as described, or use the released folder (press Download)."
    weight_files = sorted(p for p in files if p.name.endswith(".safetensors"))
    try:
        folder = inspect_t5_folder(path)
        weight_files = list(folder.weight_files)  # only what the loader reads: a checkout's decoder shard is left out
        weights = []
        for f in weight_files:
            dtypes = sorted(
                {t.dtype for t in read_header(f, error=TextEncoderError, what="T5 weights").tensors.values()}
            )
            weights.append(f"{f.name} ({human_size(f.stat().st_size)}, {'/'.join(dtypes)})")
        index = " via model.safetensors.index.json" if (path / "model.safetensors.index.json").is_file() else ""
        cfg = folder.config
        detail = f"{folder.layout}, d_model {cfg.get('d_model')}, {counted(cfg.get('num_layers'), 'layer')}; weights{index}: {', '.join(weights)}"
        items.append(CheckItem("T5 layout", True, detail))
    except ELLAError as exc:
        items.append(CheckItem("T5 layout", False, str(exc), fix, repair="t5"))
    tokenizers = [n for n in TOKENIZER_FILES if (path / n).is_file()]
    if tokenizers:
        items.append(CheckItem("T5 tokenizer", True, f"{' and '.join(tokenizers)} present"))
    else:
        items.append(
            CheckItem(
                "T5 tokenizer", False, "neither tokenizer.json nor spiece.model is in the folder", fix, repair="t5"
            )
        )
    items.append(_compare_folder(path, weight_files, released, hub))
    return items


def _compare_folder(path: Path, weight_files: list[Path], released: bool, hub: _Hub) -> CheckItem:
    """Every released file of the T5 folder against the hub's size and hash; the weights' sha256 listed."""
    shas = "; ".join(f"{p.name} sha256 {file_sha256(p)}" for p in weight_files) or "no .safetensors weights"
    if not released:
        return CheckItem(
            "T5 checksums", True, f"{shas}; not the released folder, so not compared with the hub", skipped=True
        )
    listed, reason = hub.files("t5")
    if listed is None:
        return CheckItem("T5 checksums", True, f"{shas}; {reason}", skipped=True)
    bad = []
    for remote in listed.values():
        local = path / remote.path[len(KNOWN_T5) + 1 :]
        if not local.is_file():
            bad.append(f"{local.name} is missing")
        elif not file_matches(local, remote):
            bad.append(f"{local.name} differs from the hub's (corrupt or incomplete)")
    if bad:
        return CheckItem(
            "T5 checksums",
            False,
            f"{'; '.join(bad)}. {shas}",
            f"Press Download to fetch the missing or broken files into '{path}'.",
            repair="t5",
        )
    return CheckItem("T5 checksums", True, f"all {len(listed)} files match the hub ({REPO}); {shas}")
