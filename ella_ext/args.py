"""The user's ELLA arguments: one typed object for the UI, the API and the infotext.

The WebUI hands a script its UI values as a positional tuple (in `FIELDS` order). API clients
send the same list, or a single dict ``{"enabled": true, "model": ..., ...}``. Generated images
record the arguments in their infotext, and pasting the infotext restores them. All three go
through `ELLAArgs`, which validates in one place and raises `ArgumentError` (HTTP 422) naming the
field and the accepted values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from .discovery import check_name, strip_hash
from .errors import ArgumentError, ModelPathError
from .prompt_syntax import AND_SEPARATOR, EXTRA_NETWORK

# canonical value -> label shown in the UI and written to the infotext
LENGTH_MODES = {"flexible": "Flexible", "fixed": "Fixed 128"}
CONDITIONING_MODES = {"ella": "ELLA only", "ella+clip": "ELLA + CLIP"}
NEGATIVE_MODES = {"ella": "ELLA", "clip": "CLIP"}
EMPHASIS_MODES = {"original": "Original", "no norm": "No norm", "ignore": "Ignore"}
LONG_PROMPT_POLICIES = {"truncate": "Truncate to 128", "keep": "Keep"}

_CHOICES = {
    "length": LENGTH_MODES,
    "mode": CONDITIONING_MODES,
    "negative": NEGATIVE_MODES,
    "emphasis": EMPHASIS_MODES,
    "long_prompts": LONG_PROMPT_POLICIES,
}

FIXED_LENGTH = 128

# infotext keys
INFO_MODEL = "ELLA"
INFO_T5 = "ELLA T5"
INFO_LENGTH = "ELLA length"
INFO_MODE = "ELLA mode"
INFO_NEGATIVE = "ELLA negative"
INFO_STEPS = "ELLA steps"
INFO_EMPHASIS = "ELLA emphasis"
INFO_LONG = "ELLA long prompts"
INFO_TRUNCATED = "ELLA truncated"
INFO_CLIP_PROMPT = "ELLA CLIP prompt"
INFO_CLIP_NEGATIVE = "ELLA CLIP negative"
# what ELLA could not do in a job, recorded so the image says so (never read back as an argument)
INFO_EMPHASIS_IGNORED = "ELLA emphasis ignored"
INFO_ADETAILER = "ELLA ADetailer"


def is_ella_info_key(key: str) -> bool:
    """Every infotext key ELLA writes is "ELLA" or starts with "ELLA "."""
    return key == INFO_MODEL or str(key).startswith(INFO_MODEL + " ")


@dataclass(frozen=True)
class ELLAArgs:
    """ELLA's per-job arguments. Field order is the UI's component order (the API's positional order)."""

    enabled: bool = False
    model: str = ""
    t5: str = ""
    length: str = "flexible"
    mode: str = "ella"
    negative: str = "ella"
    start: float = 0.0
    end: float = 1.0
    emphasis: str = "original"
    long_prompts: str = "truncate"
    # ELLA + CLIP mode: the text CLIP encodes instead of the prompt / negative prompt ("" = the same text)
    clip_prompt: str = ""
    clip_negative: str = ""

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_script_args(
        cls,
        args: Sequence[Any],
        *,
        enabled: Optional[bool] = None,
        installed: Optional[Callable[[], Mapping[str, str]]] = None,
    ) -> "ELLAArgs":
        """From a script's argument slice: UI/positional values, or a dict as the first element.

        `enabled` overrides the on/off value (an XYZ axis turning ELLA on for a cell uses the
        accordion's other values even when the accordion itself is off). `installed()` gives the
        first installed {"model", "t5"} names, used where the args leave them empty (the UI was
        built before any model was installed, or an API call names none)."""
        args = tuple(args)
        if enabled is not None:
            if args and isinstance(args[0], Mapping):
                args = ({**args[0], "enabled": enabled}, *args[1:])
            else:
                args = (enabled, *args[1:])
        if not args:
            return cls()
        names = cls.field_names()

        def with_installed(values: dict) -> dict:
            empty = [k for k in ("model", "t5") if values.get(k) in (None, "")]
            if installed is None or not empty:
                return values
            found = installed()
            return {**values, **{k: found[k] for k in empty if found.get(k)}}

        if isinstance(args[0], Mapping):
            # the API puts the dict where `enabled` goes; the WebUI fills the other slots with the UI's
            # defaults, which stand in for the keys the dict leaves out
            defaults = {k: v for k, v in zip(names[1:], args[1:]) if v is not None and k not in args[0]}
            return cls.from_dict(with_installed({**defaults, **args[0]}))
        if len(args) > len(names):
            raise ArgumentError(
                f"ELLA takes at most {len(names)} positional arguments ({', '.join(names)}), got {len(args)}. "
                "Or pass one dict with named arguments."
            )
        values = dict(zip(names, args))
        if not _as_bool(values.get("enabled", False), "enabled"):
            return cls()  # disabled: the other UI values may be anything (e.g. no models installed yet)
        return cls.from_dict(with_installed(values))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ELLAArgs":
        names = cls.field_names()
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ArgumentError(
                f"Unknown ELLA argument(s) {', '.join(repr(k) for k in unknown)}; accepted: {', '.join(names)}."
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _normalise(key, value)
        args = cls(**values)
        args.validate()
        return args

    def validate(self) -> None:
        if not (0.0 <= self.start < self.end <= 1.0):
            raise ArgumentError(
                f"ELLA 'start' ({self.start}) and 'end' ({self.end}) must satisfy 0 <= start < end <= 1 "
                "(fractions of the sampling steps)."
            )
        for name, text in zip(("clip_prompt", "clip_negative"), self.clip_texts):
            if name == "clip_prompt" and AND_SEPARATOR.search(text):
                raise ArgumentError(
                    f"ELLA '{name}' contains AND: the main prompt decides the sub-prompts, and every sub-prompt gets "
                    "the same CLIP text. Remove AND from the CLIP text."
                )
            tag = EXTRA_NETWORK.search(text)
            if tag:
                raise ArgumentError(
                    f"ELLA '{name}' contains the extra-network tag '{tag.group(0)}'. Put LoRA/hypernetwork tags in the main "
                    "prompt: the WebUI activates them from there, for CLIP and the U-Net."
                )
        if self.enabled:
            for name, what in (("model", "ELLA model"), ("t5", "T5 encoder")):
                try:
                    check_name(getattr(self, name), what, name)
                except ModelPathError as exc:
                    raise ArgumentError(str(exc)) from None

    # --- views ----------------------------------------------------------------------------------

    @property
    def fixed_length(self) -> Optional[int]:
        return FIXED_LENGTH if self.length == "fixed" else None

    @property
    def truncate_at(self) -> Optional[int]:
        return FIXED_LENGTH if self.long_prompts == "truncate" else None

    @property
    def clip_texts(self) -> tuple[str, str]:
        """(prompt, negative) texts for CLIP that replace the job's own; used in ELLA + CLIP mode only
        (like the WebUI's hires prompt while hires fix is off, they are kept but unused otherwise)."""
        if self.mode != "ella+clip":
            return "", ""
        return self.clip_prompt, self.clip_negative

    def ui_values(self) -> list[Any]:
        """Values for the UI components, in FIELDS order (labels for the radio buttons)."""
        return [_CHOICES[f][getattr(self, f)] if f in _CHOICES else getattr(self, f) for f in self.field_names()]

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.field_names()}

    def with_(self, **changes) -> "ELLAArgs":
        new = replace(self, **{k: _normalise(k, v) for k, v in changes.items()})
        new.validate()
        return new

    # --- infotext -------------------------------------------------------------------------------

    def infotext(self, model_hash: Optional[str] = None) -> dict[str, str]:
        """Generation-parameter entries; defaults of the optional fields are omitted."""
        if not self.enabled:
            return {}
        info = {
            INFO_MODEL: f"{self.model} [{model_hash}]" if model_hash else self.model,
            INFO_T5: self.t5,
            INFO_LENGTH: LENGTH_MODES[self.length],
            INFO_MODE: CONDITIONING_MODES[self.mode],
            INFO_NEGATIVE: NEGATIVE_MODES[self.negative],
        }
        if (self.start, self.end) != (0.0, 1.0):
            info[INFO_STEPS] = f"{_fmt(self.start)}-{_fmt(self.end)}"
        if self.emphasis != "original":
            info[INFO_EMPHASIS] = EMPHASIS_MODES[self.emphasis]
        if self.long_prompts != "truncate":
            info[INFO_LONG] = LONG_PROMPT_POLICIES[self.long_prompts]
        clip_prompt, clip_negative = self.clip_texts
        if clip_prompt:
            info[INFO_CLIP_PROMPT] = clip_prompt
        if clip_negative:
            info[INFO_CLIP_NEGATIVE] = clip_negative
        return info

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any]) -> "ELLAArgs":
        """From parsed generation parameters; an infotext without ELLA gives disabled defaults."""
        if INFO_MODEL not in params:
            return cls()
        data: dict[str, Any] = {"enabled": True, "model": strip_hash(str(params[INFO_MODEL]))}
        for key, field in ((INFO_T5, "t5"), (INFO_LENGTH, "length"), (INFO_MODE, "mode"),
                           (INFO_NEGATIVE, "negative"), (INFO_EMPHASIS, "emphasis"), (INFO_LONG, "long_prompts"),
                           (INFO_CLIP_PROMPT, "clip_prompt"), (INFO_CLIP_NEGATIVE, "clip_negative")):
            if key in params:
                data[field] = str(params[key])
        if INFO_STEPS in params:
            text = str(params[INFO_STEPS])
            try:
                start, end = (float(x) for x in text.split("-", 1))
            except ValueError:
                raise ArgumentError(f"Infotext '{INFO_STEPS}: {text}' is not 'start-end' (e.g. 0-0.8).") from None
            data.update(start=start, end=end)
        return cls.from_dict(data)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ArgumentError(f"ELLA '{name}' must be true or false, got {value!r}.")


def _normalise(name: str, value: Any) -> Any:
    if name == "enabled":
        return _as_bool(value, name)
    if name in ("clip_prompt", "clip_negative"):
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ArgumentError(f"ELLA '{name}' must be a text (string), got {type(value).__name__}.")
        return value
    if name in ("model", "t5"):
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ArgumentError(f"ELLA '{name}' must be a model name (string), got {type(value).__name__}.")
        return strip_hash(value) if name == "model" else value
    if name in ("start", "end"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgumentError(f"ELLA '{name}' must be a number between 0 and 1, got {value!r}.")
        value = float(value)
        if not math.isfinite(value):
            raise ArgumentError(f"ELLA '{name}' must be a finite number between 0 and 1, got {value!r}.")
        return value
    choices = _CHOICES[name]
    if isinstance(value, str):
        wanted = value.strip().lower()
        for canonical, label in choices.items():
            if wanted in (canonical, label.lower()):
                return canonical
    accepted = ", ".join(f"'{c}'" for c in choices) + " (or the labels " + ", ".join(f"'{l}'" for l in choices.values()) + ")"
    raise ArgumentError(f"ELLA '{name}' must be one of {accepted}, got {value!r}.")
