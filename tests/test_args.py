"""ELLAArgs: one validated object from UI values, API lists and dicts, and infotext."""

import pytest

from ella_ext import ArgumentError
from ella_ext.args import ELLAArgs

UI = [True, "ella-sd1.5-tsc-t5xl", "flan", "Fixed 128", "ELLA + CLIP", "CLIP", 0.1, 0.9, "No norm", "Keep"]


def test_defaults_are_disabled():
    assert ELLAArgs.from_script_args(()) == ELLAArgs() and not ELLAArgs().enabled


def test_positional_ui_values():
    args = ELLAArgs.from_script_args(UI)
    assert args == ELLAArgs(
        True, "ella-sd1.5-tsc-t5xl", "flan", "fixed", "ella+clip", "clip", 0.1, 0.9, "no norm", "keep"
    )
    assert args.fixed_length == 128 and args.truncate_at is None  # "Keep" long prompts
    assert ELLAArgs.from_script_args(args.ui_values()) == args


def test_partial_positional_list_keeps_defaults():
    args = ELLAArgs.from_script_args([True, "m", "t"])
    assert (args.length, args.mode, args.start, args.end) == ("flexible", "ella", 0.0, 1.0)


def test_disabled_positional_ignores_other_values():
    # the UI passes None for an empty dropdown; a disabled job must not fail on it
    assert ELLAArgs.from_script_args([False, None, None, "junk", 5, 6, "x", "y", "z", "w"]) == ELLAArgs()


def test_dict_argument():
    args = ELLAArgs.from_script_args(
        [{"enabled": True, "model": "m", "t5": "t", "length": "fixed", "negative": "CLIP"}]
    )
    assert (args.enabled, args.length, args.negative, args.mode) == (True, "fixed", "clip", "ella")


@pytest.mark.parametrize(
    "payload, message",
    [
        (
            {"enabled": True, "model": "m", "t5": "t", "steps": 3},
            "Unknown ELLA argument.*'steps'.*accepted: enabled, model",
        ),
        ({"enabled": "yes"}, "'enabled' must be true or false"),
        ({"enabled": True, "model": 3, "t5": "t"}, "'model' must be a model name"),
        ({"enabled": True, "model": "m", "t5": "t", "length": "long"}, "'length' must be one of 'flexible', 'fixed'"),
        ({"enabled": True, "model": "m", "t5": "t", "start": "0.2"}, "'start' must be a number"),
        ({"enabled": True, "model": "m", "t5": "t", "start": True}, "'start' must be a number"),
        ({"enabled": True, "model": "m", "t5": "t", "end": float("nan")}, "finite"),
        ({"enabled": True, "model": "m", "t5": "t", "start": 0.8, "end": 0.2}, "0 <= start < end <= 1"),
        ({"enabled": True, "model": "m", "t5": "t", "end": 1.5}, "0 <= start < end <= 1"),
        ({"enabled": True, "model": "", "t5": "t"}, "No ELLA model selected"),
        ({"enabled": True, "model": "m", "t5": "../x"}, "outside the model folders"),
    ],
)
def test_bad_dicts_name_the_field(payload, message):
    with pytest.raises(ArgumentError, match=message) as info:
        ELLAArgs.from_script_args([payload])
    assert info.value.status_code == 422


def test_too_many_positional_args():
    with pytest.raises(ArgumentError, match="at most 13 positional"):
        ELLAArgs.from_script_args([*UI, "clip text", "clip negative", False, 1])


def test_positional_lists_without_expand_still_work():
    # API clients written before caption upsampling send 12 values: expand stays off
    args = ELLAArgs.from_script_args([*UI, "clip text", "clip negative"])
    assert args.expand is False and args.clip_prompt == "clip text"
    assert ELLAArgs.from_script_args([*UI, "clip text", "clip negative", True]).expand is True


def test_positional_lists_of_older_versions_still_work():
    # API clients written before the CLIP text fields send 10 values
    assert ELLAArgs.from_script_args(UI[:10]).to_dict() == {
        **ELLAArgs.from_script_args(UI).to_dict(),
        "clip_prompt": "",
        "clip_negative": "",
    }


def test_positional_enabled_must_be_bool():
    with pytest.raises(ArgumentError, match="'enabled'"):
        ELLAArgs.from_script_args(["maybe", "m", "t"])


def test_infotext_round_trip():
    args = ELLAArgs.from_script_args(UI)
    info = args.infotext("0123456789")
    assert info["ELLA"] == "ella-sd1.5-tsc-t5xl [0123456789]"
    assert info["ELLA steps"] == "0.1-0.9" and info["ELLA length"] == "Fixed 128"
    assert ELLAArgs.from_infotext(info) == args


def test_infotext_omits_defaults_and_restores_them():
    args = ELLAArgs(enabled=True, model="m", t5="t")
    info = args.infotext()
    assert set(info) == {"ELLA", "ELLA T5", "ELLA length", "ELLA mode", "ELLA negative"}
    assert ELLAArgs.from_infotext(info) == args


def test_infotext_without_ella_is_disabled():
    assert ELLAArgs.from_infotext({"Steps": "20"}) == ELLAArgs()
    assert ELLAArgs().infotext() == {}


def test_malformed_infotext_steps():
    with pytest.raises(ArgumentError, match="ELLA steps"):
        ELLAArgs.from_infotext({"ELLA": "m", "ELLA T5": "t", "ELLA steps": "half"})


def test_api_dict_takes_missing_keys_from_the_ui_defaults_after_it():
    # the WebUI fills the slots after the dict with the UI's defaults (the first models found)
    ui_defaults = ("ella-a", "t5-a", "Fixed 128", "ELLA only", "ELLA", 0.0, 1.0, "Original", "Truncate to 128")
    args = ELLAArgs.from_script_args(({"enabled": True, "t5": "t5-b"}, *ui_defaults))
    assert (args.model, args.t5, args.length) == ("ella-a", "t5-b", "fixed")
    # an XYZ cell turning ELLA on keeps the tail too
    off = ELLAArgs.from_script_args(({"enabled": False}, *ui_defaults), enabled=True)
    assert off.enabled and off.model == "ella-a"
    with pytest.raises(ArgumentError, match="No T5 encoder selected"):
        ELLAArgs.from_script_args(({"enabled": True, "model": "ella-a"}, None, None))
