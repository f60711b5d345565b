"""The user's ELLA arguments: one typed object for the UI, the API, the infotext and the XYZ plot.

Each field of `ELLAArgs` carries its row of the schema (`schema.Arg`); field order is the UI's component
order and the API's positional order. The WebUI hands a script its UI values as a positional tuple; API
clients send the same list, or a single dict ``{"enabled": true, "model": ..., ...}``; generated images
record the arguments in their infotext, and pasting the infotext restores them. All of them go through
`ELLAArgs`, which validates in one place and raises `ArgumentError` (HTTP 422) naming the field and the
accepted values.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from .discovery import check_name, strip_hash
from .errors import ArgumentError, ModelPathError
from .prompt_syntax import AND_SEPARATOR, extra_network_tags, find_extra_network, strip_extra_networks
from .schema import Arg, Choice, arg, rows, shown

FIXED_LENGTH = 128  # the paper's fixed token length, and ELLA's training length


class Length(Choice):
    FLEXIBLE = ("flexible", "Flexible")
    FIXED = ("fixed", "Fixed 128")


class Conditioning(Choice):
    ELLA = ("ella", "ELLA only")
    ELLA_CLIP = ("ella+clip", "ELLA + CLIP")


class Negative(Choice):
    ELLA = ("ella", "ELLA")
    CLIP = ("clip", "CLIP")


class Emphasis(Choice):
    ORIGINAL = ("original", "Original")
    NO_NORM = ("no norm", "No norm")
    IGNORE = ("ignore", "Ignore")


class LongPrompts(Choice):
    TRUNCATE = ("truncate", "Truncate to 128")
    KEEP = ("keep", "Keep")


INFO_MODEL = "ELLA"  # present in every infotext of an ELLA image: it is what turns ELLA on when pasted
# what ELLA could not do in a job, recorded so the image says so (never read back as an argument)
INFO_TRUNCATED = "ELLA truncated"
INFO_EMPHASIS_IGNORED = "ELLA emphasis ignored"
INFO_ADETAILER = "ELLA ADetailer"
INFO_ORIGINAL_PROMPT = "ELLA original prompt"  # the prompt before caption upsampling (the `expand` argument)

IN_CLIP_MODE = ("mode", Conditioning.ELLA_CLIP)


def is_ella_info_key(key: str) -> bool:
    """Every infotext key ELLA writes is "ELLA" or starts with "ELLA "."""
    return key == INFO_MODEL or str(key).startswith(INFO_MODEL + " ")


@dataclass(frozen=True)
class ELLAArgs:
    """ELLA's per-job arguments, one schema row each. Append new fields at the end: API clients send
    positional lists in this order."""

    enabled: bool = arg(
        False,
        bool,
        "ELLA",
        "accordion",
        xyz="ELLA: on/off",
        hint="Replace CLIP's text conditioning with ELLA: flan-t5-xl reads the prompt, the timestep-aware "
        "connector turns it into 64 tokens at every step.",
    )
    model: str = arg(
        "",
        str,
        "ELLA model",
        "model",
        infotext=INFO_MODEL,
        infotext_default=True,
        hint="ELLA connector weights (*.safetensors in models/ELLA). Press the refresh button after adding files.",
    )
    t5: str = arg(
        "",
        str,
        "T5 encoder",
        "t5",
        infotext="ELLA T5",
        infotext_default=True,
        hint="flan-t5-xl encoder folder (in models/ELLA/t5): config.json, tokenizer and *.safetensors weights.",
    )
    length: Length = arg(
        Length.FLEXIBLE,
        Length,
        "Token length",
        "radio",
        infotext="ELLA length",
        infotext_default=True,
        xyz="ELLA: token length",
        hint="Flexible: the prompt's own length, as the ELLA demo. Fixed 128: padded to 128 tokens, as the "
        "paper's fixed mode.",
    )
    mode: Conditioning = arg(
        Conditioning.ELLA,
        Conditioning,
        "Conditioning",
        "radio",
        infotext="ELLA mode",
        infotext_default=True,
        xyz="ELLA: conditioning",
        hint="ELLA only is the paper's setting. ELLA + CLIP appends CLIP's tokens, keeping trigger words, "
        "embeddings and a fine-tune's style.",
    )
    negative: Negative = arg(
        Negative.ELLA,
        Negative,
        "Negative prompt through",
        "radio",
        infotext="ELLA negative",
        infotext_default=True,
        hint="Encode the negative prompt with ELLA (default) or leave it to CLIP.",
    )
    start: float = arg(
        0.0,
        float,
        "ELLA start",
        "slider",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        infotext="ELLA steps",
        xyz="ELLA: start",
        hint="Fraction of the sampling steps where ELLA starts; before it, CLIP's conditioning is used.",
    )
    end: float = arg(
        1.0,
        float,
        "ELLA end",
        "slider",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        infotext="ELLA steps",
        xyz="ELLA: end",
        hint="Fraction of the sampling steps where ELLA stops; after it, CLIP's conditioning is used.",
    )
    emphasis: Emphasis = arg(
        Emphasis.ORIGINAL,
        Emphasis,
        "Prompt emphasis",
        "radio",
        infotext="ELLA emphasis",
        hint="(word:1.3) and [word]: Original scales the word's T5 features and restores the mean, like the WebUI "
        "does for CLIP; No norm skips the mean; Ignore drops the weights.",
    )
    long_prompts: LongPrompts = arg(
        LongPrompts.TRUNCATE,
        LongPrompts,
        "Prompts over 128 T5 tokens",
        "radio",
        infotext="ELLA long prompts",
        hint="ELLA was trained on prompts of up to 128 T5 tokens. Truncate cuts longer prompts there (and says so "
        "in the infotext); Keep passes them whole.",
    )
    # ELLA + CLIP mode: the text CLIP encodes instead of the prompt / negative prompt ("" = the same text). Like
    # the WebUI's hires prompt while hires fix is off, they are kept but unused in the other mode.
    clip_prompt: str = arg(
        "",
        str,
        "CLIP prompt (empty: the prompt)",
        "textbox",
        lines=2,
        infotext="ELLA CLIP prompt",
        applies_when=IN_CLIP_MODE,
        placeholder="Trigger words, embeddings, style tags: what CLIP encodes; T5 gets the prompt",
        hint="ELLA + CLIP mode: the text CLIP encodes instead of the prompt (trigger words, embeddings, style "
        "tags). T5 reads only the prompt.",
    )
    clip_negative: str = arg(
        "",
        str,
        "CLIP negative prompt (empty: the negative prompt)",
        "textbox",
        lines=2,
        infotext="ELLA CLIP negative",
        applies_when=IN_CLIP_MODE,
        hint="ELLA + CLIP mode: the text CLIP encodes instead of the negative prompt.",
    )
    # caption upsampling at job time; no infotext key: the image's prompt is the expanded text (what T5 read), so
    # pasting it reproduces the image with expand off, and the original is recorded as INFO_ORIGINAL_PROMPT
    expand: bool = arg(
        False,
        bool,
        "Expand the prompt for ELLA when generating (caption upsampling)",
        "checkbox",
        hint="Before the job, the LLM set in Settings rewrites the prompt into the dense caption ELLA was trained on; "
        "the image's prompt is the expanded text and its infotext keeps the original. If the LLM fails, the job "
        "stops with its message. A prompt that is already a dense description is left as it is.",
    )

    # --- the schema -----------------------------------------------------------------------------

    @classmethod
    def rows(cls) -> tuple[Arg, ...]:
        return ARGS

    @classmethod
    def field_names(cls) -> list[str]:
        return [row.name for row in ARGS]

    @classmethod
    def script_signature(cls, *leading: str) -> inspect.Signature:
        """`(leading..., enabled=None, model=None, ...)`: the script hooks' parameters as named ones, in the
        positional order. The hooks take `*args`; job queues that turn a dict of named script arguments into
        the positional list by the hook's signature (Agent Scheduler) read this one. None is each argument's
        default, as in a positional slot."""
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params = [inspect.Parameter(name, kind) for name in leading]
        params += [inspect.Parameter(name, kind, default=None) for name in cls.field_names()]
        return inspect.Signature(params)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_script_args(
        cls,
        args: Sequence[Any],
        *,
        enabled: Optional[bool] = None,
        installed: Optional[Callable[[], Mapping[str, str]]] = None,
    ) -> ELLAArgs:
        """From a script's argument slice: UI/positional values, or a dict as the first element.

        `enabled` overrides the on/off value (an XYZ axis turning ELLA on for a cell uses the
        accordion's other values even when the accordion itself is off). `installed()` gives the
        first installed {"model", "t5"} names, used where the args leave them empty (the UI was
        built before any model was installed, or an API call names none). None in a positional slot
        means that argument's default."""
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
        values = {k: v for k, v in zip(names, args) if v is not None}
        if not ROWS["enabled"].parse(values.get("enabled", False)):
            return cls()  # disabled: the other UI values may be anything (e.g. no models installed yet)
        return cls.from_dict(with_installed(values))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ELLAArgs:
        unknown = [k for k in data if k not in ROWS]
        if unknown:
            raise ArgumentError(
                f"Unknown ELLA argument(s) {', '.join(shown(k) for k in unknown[:5])}; accepted: {', '.join(ROWS)}."
            )
        args = cls(**{key: _parse(key, value) for key, value in data.items()})
        args.validate()
        return args

    def validate(self) -> None:
        """The rules that span fields (each field's own type and range are its row's)."""
        if not (0.0 <= self.start < self.end <= 1.0):
            raise ArgumentError(
                f"ELLA 'start' ({self.start:g}) and 'end' ({self.end:g}) must satisfy 0 <= start < end <= 1 "
                "(fractions of the sampling steps)."
            )
        if self.applies("clip_prompt") and AND_SEPARATOR.search(strip_extra_networks(self.clip_prompt)):
            raise ArgumentError(
                "ELLA 'clip_prompt' contains AND: the main prompt decides the sub-prompts, and every sub-prompt gets "
                "the same CLIP text. Remove AND from the CLIP text."
            )
        tag = find_extra_network(self.clip_negative) if self.applies("clip_negative") else None
        if tag:
            raise ArgumentError(
                f"ELLA 'clip_negative' contains the extra-network tag '{tag.group(0)[:80]}'. The WebUI activates "
                "LoRA/hypernetwork tags only from positive prompts: put it in the prompt or the CLIP prompt."
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
        return FIXED_LENGTH if self.length == Length.FIXED else None

    @property
    def truncate_at(self) -> Optional[int]:
        return FIXED_LENGTH if self.long_prompts == LongPrompts.TRUNCATE else None

    @property
    def clip_texts(self) -> tuple[str, str]:
        """(prompt, negative) texts CLIP encodes instead of the job's own, where they apply (ELLA + CLIP); "" for
        the job's own. The CLIP prompt's extra-network tags are taken out as the WebUI takes them out of a
        prompt (the WebUI activates them, see `clip_network_tags`); a CLIP prompt of tags only leaves CLIP the
        job's own prompt."""
        prompt = strip_extra_networks(self.clip_prompt) if self.applies("clip_prompt") else ""
        if not prompt.strip() and self.clip_network_tags:
            prompt = ""
        return prompt, self.clip_negative if self.applies("clip_negative") else ""

    @property
    def clip_network_tags(self) -> str:
        """The CLIP prompt's extra-network tags (`<lora:name:0.8>`…), in order and joined, where it applies: the
        WebUI activates them with the prompt's own tags."""
        if not self.applies("clip_prompt"):
            return ""
        return "".join(extra_network_tags(self.clip_prompt))

    def applies(self, name: str) -> bool:
        """Whether the argument takes effect with the others as they are (its row's `applies_when`)."""
        condition = ROWS[name].applies_when
        return condition is None or getattr(self, condition[0]) == condition[1]

    def ui_values(self) -> list[Any]:
        """Values for the UI components, in field order (labels for the radio buttons)."""
        return [row.ui_value(getattr(self, row.name)) for row in ARGS]

    def to_dict(self) -> dict[str, Any]:
        return {row.name: getattr(self, row.name) for row in ARGS}

    def with_(self, **changes) -> ELLAArgs:
        new = replace(self, **{k: _parse(k, v) for k, v in changes.items()})
        new.validate()
        return new

    # --- infotext -------------------------------------------------------------------------------

    def infotext(self, model_hash: Optional[str] = None) -> dict[str, str]:
        """Generation-parameter entries: the rows with an infotext key that apply, defaults omitted unless
        the row says so; rows sharing a key are written as one 'a-b' entry."""
        if not self.enabled:
            return {}
        entries: dict[str, list[tuple[Arg, Any]]] = {}
        for row in ARGS:
            if row.infotext and self.applies(row.name):
                entries.setdefault(row.infotext, []).append((row, getattr(self, row.name)))
        info = {}
        for key, parts in entries.items():
            if not any(row.infotext_default or value != row.default for row, value in parts):
                continue
            info[key] = "-".join(row.format(value) for row, value in parts)
        if model_hash:
            info[INFO_MODEL] = f"{info[INFO_MODEL]} [{model_hash}]"
        return info

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any]) -> ELLAArgs:
        """From parsed generation parameters; an infotext without ELLA gives disabled defaults."""
        if INFO_MODEL not in params:
            return cls()
        data: dict[str, Any] = {"enabled": True}
        for key, parts in _INFOTEXT_KEYS.items():
            if key not in params:
                continue
            text = str(params[key])
            if len(parts) == 1:
                data[parts[0].name] = text
                continue
            values = text.split("-", len(parts) - 1)
            example = "-".join(row.format(row.default) for row in parts)
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                numbers = []
            if len(numbers) != len(parts):
                raise ArgumentError(
                    f"Infotext '{key}: {text[:80]}' is not '{'-'.join(r.name for r in parts)}' (e.g. {example})."
                )
            data.update({row.name: v for row, v in zip(parts, numbers)})
        return cls.from_dict(data)


ARGS: tuple[Arg, ...] = rows(ELLAArgs)
ROWS: dict[str, Arg] = {row.name: row for row in ARGS}
_INFOTEXT_KEYS: dict[str, list[Arg]] = {}
for _row in ARGS:
    if _row.infotext:
        _INFOTEXT_KEYS.setdefault(_row.infotext, []).append(_row)
del _row


def _parse(name: str, value: Any) -> Any:
    row = ROWS[name]
    value = row.parse(value)
    if name == "model":
        value = strip_hash(value)  # the infotext writes 'name [hash]'
    if row.minimum is not None and row.maximum is not None and not row.minimum <= value <= row.maximum:
        raise ArgumentError(
            f"ELLA '{name}' ({value:g}) must be between {row.minimum:g} and {row.maximum:g}; with 'start' and 'end': "
            "0 <= start < end <= 1 (fractions of the sampling steps)."
        )
    return value
