"""Finding ELLA weights and T5 folders under the configured model folders.

Layout (defaults; more folders can be added in the settings):

    models/ELLA/ella-sd1.5-tsc-t5xl.safetensors              ELLA (TSC) weights, any *.safetensors
    models/ELLA/t5/models--google--flan-t5-xl--text_encoder/  a T5 folder (config.json + tokenizer + weights)
    models/ELLA/t5/flan-t5-xl/                                 ... or a google/flan-t5-xl checkout

Names shown in the UI are paths relative to their root, with '/' separators (ELLA names without
the .safetensors suffix). A name from the UI or the API resolves only to a file inside a root:
'..', absolute paths, NUL bytes, over-long names and symlinks that lead outside are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import ModelPathError

ELLA_SUFFIX = ".safetensors"
MAX_NAME_LENGTH = 512
MAX_T5_DEPTH = 3
KNOWN_ELLA = "ella-sd1.5-tsc-t5xl"
KNOWN_T5 = "models--google--flan-t5-xl--text_encoder"


@dataclass(frozen=True)
class ModelRoots:
    ella: tuple[Path, ...]
    t5: tuple[Path, ...]

    @classmethod
    def under(
        cls,
        models_dir: str | os.PathLike,
        extra_ella: Iterable[str | os.PathLike] = (),
        extra_t5: Iterable[str | os.PathLike] = (),
    ) -> ModelRoots:
        """The default roots under the WebUI's models folder, plus user-configured ones."""
        base = Path(models_dir) / "ELLA"
        return cls(
            ella=tuple(_unique([base, *map(Path, extra_ella)])),
            t5=tuple(_unique([base / "t5", *map(Path, extra_t5)])),
        )


def _unique(paths: Sequence[Path]) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _is_t5_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _inside(path: Path, root: Path) -> bool:
    try:
        real, real_root = os.path.realpath(path), os.path.realpath(root)
    except (OSError, ValueError):
        return False
    return os.path.commonpath([real, real_root]) == real_root


def list_ella_models(roots: ModelRoots) -> list[str]:
    """Names of ELLA weight files under the ELLA roots (T5 folders inside them are skipped)."""
    names: list[str] = []
    t5_roots = {os.path.realpath(p) for p in roots.t5}
    for root in roots.ella:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            if here != root and (os.path.realpath(here) in t5_roots or _is_t5_folder(here)):
                dirnames[:] = []
                continue
            dirnames[:] = [
                d for d in sorted(dirnames) if not d.startswith(".") and os.path.realpath(here / d) not in t5_roots
            ]
            for f in sorted(filenames):
                if f.lower().endswith(ELLA_SUFFIX) and _inside(here / f, root):
                    rel = (here / f).relative_to(root).as_posix()
                    names.append(rel[: -len(ELLA_SUFFIX)])
    return sorted(dict.fromkeys(names), key=str.lower)


def list_t5_encoders(roots: ModelRoots) -> list[str]:
    """Names of T5 folders (folders holding config.json) under the T5 roots, up to 3 levels deep."""
    names: list[str] = []
    for root in roots.t5:
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=False):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            if here != root and _is_t5_folder(here) and _inside(here, root):
                names.append(here.relative_to(root).as_posix())
                dirnames[:] = []
            elif depth >= MAX_T5_DEPTH:
                dirnames[:] = []
            else:
                dirnames[:] = [d for d in sorted(dirnames) if not d.startswith(".")]
    return sorted(dict.fromkeys(names), key=str.lower)


def check_name(name: object, what: str, field: str) -> str:
    """Refuse names that could leave the model folders before any path is built from them."""
    if not isinstance(name, str):
        raise ModelPathError(f"{what} name must be a string, got {type(name).__name__}.")
    if not name.strip():
        raise ModelPathError(f"No {what} selected: choose one in the ELLA accordion (API: the '{field}' argument).")
    if "\x00" in name:
        raise ModelPathError(f"{what} name contains a NUL byte; refusing it.")
    if len(name) > MAX_NAME_LENGTH:
        raise ModelPathError(f"{what} name is {len(name)} characters long (limit {MAX_NAME_LENGTH}); refusing it.")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or any(part == ".." for part in norm.split("/")):
        raise ModelPathError(
            f"{what} name '{name}' points outside the model folders; give a name from the list (a path relative to the folder)."
        )
    return norm


def _resolve(
    name: str, roots: Sequence[Path], candidates, what: str, field: str, listing: Callable[[], Sequence[str]]
) -> Path:
    norm = check_name(name, what, field)
    for root in roots:
        for rel in candidates(norm):
            path = root / rel
            if path.exists():
                if not _inside(path, root):
                    raise ModelPathError(
                        f"{what} '{name}' is a link that leads outside its model folder '{root}'; refusing it. "
                        "Copy the model into the folder instead."
                    )
                return path
    where = ", ".join(f"'{r}'" for r in roots) or "(no folders configured)"
    available = listing()
    known = f" Available: {', '.join(available[:8])}." if available else ""
    raise ModelPathError(f"{what} '{name}' was not found in {where}.{known} Put it there, or press refresh.")


def resolve_ella_model(name: str, roots: ModelRoots) -> Path:
    path = _resolve(
        strip_hash(name),
        roots.ella,
        lambda n: [n + ELLA_SUFFIX] if not n.lower().endswith(ELLA_SUFFIX) else [n],
        "ELLA model",
        "model",
        lambda: list_ella_models(roots),
    )
    if not path.is_file():
        raise ModelPathError(f"ELLA model '{name}' is not a file.")
    return path


def resolve_t5_encoder(name: str, roots: ModelRoots) -> Path:
    path = _resolve(name, roots.t5, lambda n: [n], "T5 encoder", "t5", lambda: list_t5_encoders(roots))
    if not path.is_dir():
        raise ModelPathError(f"T5 encoder '{name}' is not a folder.")
    return path


def strip_hash(name: str) -> str:
    """'ella-sd1.5-tsc-t5xl [0123abcd]' (as written in infotext) -> 'ella-sd1.5-tsc-t5xl'."""
    if isinstance(name, str) and name.endswith("]") and " [" in name:
        return name[: name.rindex(" [")]
    return name
