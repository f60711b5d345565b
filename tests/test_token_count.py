"""The T5 token counter: what T5 is given for a prompt (syntax taken out as ELLA takes it out), where ELLA cuts,
the tokenizer loaded once and never T5, the /ella/v1/tokens route and the page's hidden gradio request."""

from __future__ import annotations

import json
import os
import re

import pytest
import webui_env

from ella_ext.args import ELLAArgs
from ella_ext.discovery import ModelRoots
from ella_ext.errors import ELLAError
from ella_ext.prompt_syntax import BuiltinPromptSyntax
from ella_ext.token_count import TokenCounter, count_tokens, ella_limit

SYNTAX = BuiltinPromptSyntax()


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word, plus </s>."""
    return len(text.split()) + 1


def count(prompt, limit=128, **kw):
    return count_tokens(prompt, words, SYNTAX, limit=limit, **kw)


@pytest.mark.parametrize(
    "prompt, tokens",
    [
        ("a red cube on a table", 7),
        ("a red cube <lora:film:0.8> on a table <hypernet:x:1>", 7),  # extra networks: gone
        ("a (red:1.3) cube on ((a)) [table]", 7),  # emphasis changes features, not text
        ("a red cube AND a blue sphere on the floor:0.5", 7),  # AND: each sub-prompt is a row; the longest counts
        ("a [red cube:blue sphere on grass:3] here", 7),  # prompt editing: the longest step's text (step 4 on)
        ("a [red|green blue] cube", 5),  # alternation: every step's text
        (r"a \(literal\) cube", 4),
    ],
)
def test_what_t5_reads_is_counted(prompt, tokens):
    got = count(prompt, steps=10)
    assert got.tokens == tokens and got.chunks == 1 and not got.truncated
    assert got.label == f"T5 {tokens}/128"


def test_an_edit_after_the_last_step_never_counts():
    assert count("a [cube:very long text with many many words:15]", steps=10).tokens == 3
    assert count("a [cube:very long text with many many words:15]", steps=20).tokens == 9
    # the hires pass: integer steps count on from the first pass's 10
    assert count("a [cube:very long text with many many words:15]", steps=10, hires_steps=10).tokens == 9


def test_break_chunks_each_have_their_end_token_and_are_cut_separately():
    got = count("a b c BREAK d e", limit=4)
    assert (got.tokens, got.chunks, got.longest_chunk, got.truncated) == (7, 2, 4, False)
    assert got.label == "T5 7/8"  # the limit per chunk times the chunks, as the CLIP counter's 80/150
    got = count("a b c d BREAK e", limit=4)
    assert (got.longest_chunk, got.truncated) == (5, True)


def test_truncation_follows_the_arguments():
    long = " ".join(["word"] * 130)
    assert count(long).truncated and count(long).label == "T5 131/128"
    keep = count(long, limit=None)
    assert not keep.truncated and keep.label == "T5 131"
    # any text ELLA reads, not only the longest one shown: an AND row, a step
    assert count(f"short AND {long}").truncated
    assert count(f"[{long}:short:2]", steps=4).truncated
    assert count("a" * 10, negative=True).tokens == 2


@pytest.mark.parametrize(
    "args, limit",
    [
        ({}, 128),
        ({"long_prompts": "keep"}, None),
        ({"length": "Fixed 128", "long_prompts": "keep"}, 128),
    ],
)
def test_limit_from_the_length_arguments(args, limit):
    assert ella_limit(ELLAArgs.from_dict(args)) == limit


# --- the real tokenizer ---------------------------------------------------------------------------


@pytest.fixture
def counter(t5_folder):
    roots = ModelRoots(ella=(), t5=(t5_folder.parent,))
    return TokenCounter(lambda: roots, lambda: SYNTAX, default_t5=lambda: t5_folder.name)


def test_counts_are_what_the_encoder_tokenizes(counter, t5_fp32):
    """The counter's number is the real tokens (</s> included) ELLA's encoder makes of the same text, and its
    'truncated' is the encoder's, for short and over-long prompts."""
    import factories

    for prompt in [*factories.dpg_prompts(20)[::4], " ".join(factories.dpg_prompts(3))]:
        for args in (ELLAArgs(), ELLAArgs.from_dict({"long_prompts": "keep"})):
            got = counter.count(prompt, args)
            tokens = t5_fp32.tokenize(prompt, truncate_at=args.truncate_at)
            full = t5_fp32.tokenize(prompt)
            assert got.tokens == full.n_real
            assert got.truncated == tokens.truncated
    assert counter.loads == 1


def test_the_tokenizer_is_loaded_once_and_again_when_its_files_change(counter, t5_folder, tmp_path):
    import shutil

    copy = tmp_path / "t5" / "mine"
    shutil.copytree(t5_folder, copy)
    roots = ModelRoots(ella=(), t5=(copy.parent,))
    counter = TokenCounter(lambda: roots, lambda: SYNTAX)
    args = ELLAArgs.from_dict({"t5": "mine"})
    first = counter.count("a red cube", args)
    for text in ("a red cube o", "a red cube on", "a red cube on a"):
        counter.count(text, args)
    assert counter.loads == 1
    stat = (copy / "tokenizer.json").stat()
    os.utime(copy / "tokenizer.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert counter.count("a red cube", args) == first and counter.loads == 2


def test_t5_weights_are_never_loaded(counter, monkeypatch):
    import ella_ext.t5 as t5

    monkeypatch.setattr(t5, "load_t5_encoder", lambda *a, **k: pytest.fail("T5 loaded for a token count"))
    assert counter.count("a red cube", ELLAArgs()).tokens > 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.count("x", ELLAArgs.from_dict({"t5": "nope"})), "T5 encoder 'nope' was not found"),
        (lambda c: c.count("x", ELLAArgs(), steps=0), "'steps' must be a whole number from 1 to 1000"),
        (lambda c: c.count(7, ELLAArgs()), "'prompt' must be a text"),
        (
            lambda c: TokenCounter(lambda: ModelRoots(ella=(), t5=()), lambda: SYNTAX).count("x", ELLAArgs()),
            "no T5 encoder is installed",
        ),
    ],
)
def test_bad_requests_say_what_to_change(counter, call, message):
    with pytest.raises(ELLAError, match=re.escape(message)) as info:
        call(counter)
    assert info.value.status_code == 422


# --- the WebUI: the page's hidden request and the API route ----------------------------------------


def page_request(webui, **request):
    from ella_ext.webui import token_counter

    values = {"t5": webui_env.T5_NAME, "length": "Flexible", "long_prompts": "Truncate to 128"}
    values.update(request.pop("args", {}))
    body = json.dumps({"id": 1, "steps": 20, **request})
    html = token_counter.answer(webui.extension, body, values["t5"], values["length"], values["long_prompts"])
    found = re.fullmatch(r'<div class="ella-tokens-result">(.*)</div>', html)
    assert found, html
    import html as html_lib

    return json.loads(html_lib.unescape(found.group(1)))


def test_the_accordion_has_the_hidden_counter_wired_to_the_length_controls(webui):
    import gradio

    from ella_ext.webui import ui

    class Script:
        def elem_id(self, name):
            return f"script_txt2img_ella_{name}"

    gradio.created.clear()
    ui.build(Script(), webui.extension)
    made = {c.elem_id: c for c in gradio.created}
    button = made["script_txt2img_ella_tokens_button"]
    ((fn, inputs, outputs),) = button.handlers
    assert [c.elem_id for c in inputs] == [
        "script_txt2img_ella_tokens_request",
        "script_txt2img_ella_t5",
        "script_txt2img_ella_length",
        "script_txt2img_ella_long_prompts",
    ]
    assert [c.elem_id for c in outputs] == ["script_txt2img_ella_tokens_result"]
    assert all(
        made[f"script_txt2img_ella_tokens_{n}"].kwargs["visible"] is False for n in ("request", "button", "result")
    )
    html = fn(
        json.dumps({"id": 3, "field": "prompt", "text": "a red cube", "steps": 20}),
        webui_env.T5_NAME,
        "Fixed 128",
        "Keep",
    )
    assert '"label": "T5 ' in html.replace("&quot;", '"') and "/128" in html


def test_page_request_counts_the_prompt_with_the_accordions_settings(webui):
    long = " ".join(["ornate golden frame"] * 60)
    got = page_request(webui, field="prompt", text=long)
    assert got["id"] == 1 and got["field"] == "prompt" and got["truncated"] is True
    assert re.fullmatch(r"T5 \d+/128", got["label"]) and "Shorten it, or set" in got["title"]
    kept = page_request(webui, field="prompt", text=long, args={"long_prompts": "Keep"})
    assert kept["truncated"] is False and re.fullmatch(r"T5 \d+", kept["label"]) and "keeps them all" in kept["title"]
    hires = page_request(
        webui, field="hires", text="a [cube:very long text with many words:25]", steps=20, hires_steps=10
    )
    short = page_request(webui, field="hires", text="a [cube:very long text with many words:25]", steps=20)
    assert int(hires["label"].split()[1].split("/")[0]) > int(short["label"].split()[1].split("/")[0])


def test_page_request_for_the_clip_text_is_the_webuis_clip_count(webui):
    got = page_request(webui, field="clip", text="sks style, (masterpiece:1.3) <lora:ink:0.8>")
    assert got["label"] == "CLIP 4/75" and got["truncated"] is False


@pytest.mark.parametrize(
    "request_text, message",
    [
        ("not json", "bad request"),
        (json.dumps({"id": 2, "field": "negative", "text": "x"}), "unknown field 'negative'"),
    ],
)
def test_bad_page_requests_come_back_as_errors(webui, request_text, message):
    from ella_ext.webui import token_counter

    got = token_counter.result(webui.extension, request_text, webui_env.T5_NAME, "Flexible", "Keep")
    assert message in got["error"]
    missing = token_counter.result(
        webui.extension, json.dumps({"id": 4, "field": "prompt", "text": "x"}), "gone", "Flexible", "Keep"
    )
    assert missing["id"] == 4 and "T5 encoder 'gone' was not found" in missing["error"]


def test_api_route_counts_behind_the_same_credentials(webui, monkeypatch):
    from modules import shared
    from test_model_setup import call, serve_app

    with serve_app(webui) as base:
        status, got = call(base, "POST", "/ella/v1/tokens", {"prompt": "a red cube <lora:x:1> BREAK on a table"})
        assert status == 200, got
        assert got["chunks"] == 2 and got["limit"] == 128 and got["truncated"] is False
        assert got["label"] == f"T5 {got['tokens']}/256"
        status, got = call(base, "POST", "/ella/v1/tokens", {"prompt": "x", "t5": "gone"})
        assert status == 422 and "was not found" in got["detail"]
        status, got = call(base, "POST", "/ella/v1/tokens", {"prompt": "x", "length": "sideways"})
        assert status == 422 and "length" in got["detail"]
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "ella:s3cret", raising=False)
    with serve_app(webui) as base:
        assert call(base, "POST", "/ella/v1/tokens", {"prompt": "x"})[0] == 401
        assert call(base, "POST", "/ella/v1/tokens", {"prompt": "x"}, auth="ella:s3cret")[0] == 200
