"""Declarative rows for ELLA's per-job arguments and its settings.

An argument is one dataclass field of `ELLAArgs` whose metadata is an `Arg` row: its type (bool, a
number range, a text, or a `Choice` enum), default, UI label, control and hover hint, infotext key, XYZ
axis and the condition under which it applies. Validation, the UI's components and values, the
infotext written and read back, the XYZ axes, the JavaScript hints and the API's positional order
(the field order) are all derived from these rows, so a new control is one row.

A setting is one field of `Settings` with a `Setting` row (its WebUI option key, label, control and
help). The WebUI's Settings tab and reading the options back derive from those rows.

Nothing here imports torch or the WebUI.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Any, Iterator, Optional

from .errors import ArgumentError

MAX_SHOWN = 80  # characters of a bad value quoted back in an error message


def shown(value: Any) -> str:
    """A bad value for an error message, never longer than MAX_SHOWN characters (input can be megabytes)."""
    try:
        text = repr(value)
    except ValueError:  # an int over Python's 4300-digit limit for str(), or a container holding one
        if isinstance(value, int):
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return f"a {type(value).__name__} holding an integer of over 4300 digits"
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


class Choice(str, Enum):
    """A closed set of values, each with the label the UI shows and the infotext records.

    A str subclass, so `args.mode == "ella+clip"` holds and JSON writes the canonical value.
    """

    label: str

    def __new__(cls, value: str, label: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member

    def __str__(self) -> str:
        return self.value

    @classmethod
    def labels(cls) -> list[str]:
        return [member.label for member in cls]

    @classmethod
    def parse(cls, value: Any, where: str) -> Choice:
        """The member named by its value or its label (any case); ArgumentError naming `where` otherwise."""
        if isinstance(value, str):
            wanted = value.strip().lower()
            for member in cls:
                if wanted in (member.value, member.label.lower()):
                    return member
        accepted = (
            ", ".join(f"'{m.value}'" for m in cls) + " (or the labels " + ", ".join(f"'{m.label}'" for m in cls) + ")"
        )
        raise ArgumentError(f"{where} must be one of {accepted}, got {shown(value)}.")


@dataclass(frozen=True)
class Arg:
    """One ELLA argument: everything the UI, the API, the infotext and the XYZ plot need to know of it."""

    default: Any
    kind: type  # bool, float, str or a Choice subclass
    label: str
    control: str  # "accordion" | "checkbox" | "radio" | "slider" | "textbox" | "model" | "t5"
    hint: str = ""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    lines: int = 1
    placeholder: str = ""
    # the image's generation parameters: the key, and whether the default is written too. Rows sharing a
    # key are written as one "a-b" entry (the step range).
    infotext: Optional[str] = None
    infotext_default: bool = False
    xyz: Optional[str] = None  # the XYZ plot axis that sets it for one cell
    # (field, value): the argument takes effect only while that other argument has that value; the UI shows
    # it only then and the infotext records it only then
    applies_when: Optional[tuple[str, Any]] = None
    name: str = ""  # the field name, filled in by `rows()`

    def parse(self, value: Any) -> Any:
        """`value` from the UI, the API or the infotext as this argument's type; ArgumentError otherwise."""
        where = f"ELLA '{self.name}'"
        if self.kind is bool:
            return parse_bool(value, where)
        if isinstance(self.kind, type) and issubclass(self.kind, Choice):
            return self.kind.parse(value, where)
        if self.kind is float:
            return self._number(value, where)
        if value is None:
            return ""
        if not isinstance(value, str):
            what = "a model name" if self.control in ("model", "t5") else "a text"
            raise ArgumentError(f"{where} must be {what} (string), got {type(value).__name__}.")
        return value

    def _number(self, value: Any, where: str) -> float:
        bounds = (
            f" between {self.minimum:g} and {self.maximum:g}"
            if self.minimum is not None and self.maximum is not None
            else ""
        )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgumentError(f"{where} must be a number{bounds}, got {shown(value)}.")
        try:
            number = float(value)
        except OverflowError:  # an integer with hundreds of digits
            number = math.inf
        if not math.isfinite(number):
            raise ArgumentError(f"{where} must be a finite number{bounds}, got {shown(value)}.")
        return number

    def ui_value(self, value: Any) -> Any:
        """The value as its UI component holds it (a Choice's label)."""
        return value.label if isinstance(value, Choice) else value

    def format(self, value: Any) -> str:
        """The value as the infotext writes it."""
        if isinstance(value, Choice):
            return value.label
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    @property
    def xyz_choices(self) -> Optional[list[str]]:
        if self.kind is bool:
            return ["On", "Off"]
        if isinstance(self.kind, type) and issubclass(self.kind, Choice):
            return self.kind.labels()
        return None

    def parse_xyz(self, value: Any) -> Any:
        if self.kind is bool:
            return str(value).strip().lower() in ("on", "true", "1", "yes")
        return self.parse(value)


def arg(default: Any, kind: type, label: str, control: str, **row: Any) -> Any:
    """A dataclass field carrying its `Arg` row."""
    return field(default=default, metadata={"arg": Arg(default, kind, label, control, **row)})


def parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ArgumentError(f"{where} must be true or false, got {shown(value)}.")


def rows(cls) -> tuple[Arg, ...]:
    """The `Arg` rows of a dataclass, in field order, with their names."""
    out = []
    for f in fields(cls):
        row = f.metadata.get("arg")
        if row is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no Arg row")
        out.append(Arg(**{**row.__dict__, "name": f.name}))
    return tuple(out)


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One ELLA setting in the WebUI's Settings tab (options without a key are not shown there)."""

    key: Optional[str]  # the WebUI option, e.g. "ella_t5_precision"
    label: str = ""
    control: str = "checkbox"  # "checkbox" | "radio" | "slider" | "textbox" | "password" (a textbox showing dots)
    info: str = ""
    kind: Optional[type] = None  # a Choice subclass, stored in the options by its label
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    lines: int = 1
    name: str = ""
    default: Any = None

    def read(self, options: Any) -> Any:
        """This setting's value from the WebUI's options; a stored value that is no longer valid gives the default."""
        value = getattr(options, self.key, MISSING) if self.key else MISSING
        if value is MISSING:
            return self.default
        if isinstance(self.kind, type) and issubclass(self.kind, Choice):
            try:
                return self.kind.parse(value, self.key or self.name)
            except ArgumentError:
                return self.default
        if isinstance(self.default, bool):
            return bool(value)
        if isinstance(self.default, int):
            try:
                return int(value)
            except (TypeError, ValueError):
                return self.default
        return value

    def stored(self, value: Any) -> Any:
        """The value as the WebUI's options store it (a Choice by its label)."""
        return value.label if isinstance(value, Choice) else value


def setting(default: Any, key: Optional[str] = None, **row: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(key, default=default, **row)})


def setting_rows(cls) -> Iterator[Setting]:
    for f in fields(cls):
        row = f.metadata.get("setting")
        if row is not None:
            yield Setting(**{**row.__dict__, "name": f.name})


def from_options(cls, options: Any):
    """An instance of the settings dataclass `cls` read from the WebUI's options."""
    return cls(**{row.name: row.read(options) for row in setting_rows(cls)})
