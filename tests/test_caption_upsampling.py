"""Caption upsampling: the library against a stand-in OpenAI chat server (tests/openai_server.py), the accordion's
Expand/Undo handlers, POST /ella/v1/expand, and the `expand` argument at job time with its infotext."""

from __future__ import annotations

import gzip
import json
import socket
import time

import pytest
from openai_server import OpenAIServer

from ella_ext.caption_upsampling import (
    EXAMPLES,
    INSTRUCTION,
    MAX_CHARS,
    UpsamplerConfig,
    clean_answer,
    expand_prompt,
)
from ella_ext.errors import (
    UpsamplerHTTPError,
    UpsamplerOffError,
    UpsamplerResponseError,
    UpsamplerTimeoutError,
    UpsamplerUnreachableError,
)
from ella_ext.prompt_syntax import EXTRA_NETWORK, parse_attention, split_and

CAPTION = (
    "A matte red cube with sharp edges sits in the middle of a glossy grey table. A small blue sphere rests "
    "against its left side. The table's surface reflects both shapes."
)


@pytest.fixture
def llm():
    with OpenAIServer() as server:
        server.reply = CAPTION
        yield server


def config(server, **kw):
    return UpsamplerConfig(**{"base_url": server.url + "/v1", "timeout": 5.0, **kw})


def user_prompt(request) -> str:
    return request["body"]["messages"][-1]["content"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the protocol -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_expands_through_an_openai_chat_endpoint(llm, stream):
    result = expand_prompt("a red cube on a table", config(llm, model="qwen2.5:7b", api_key="sk-test", stream=stream))
    assert result.prompt == CAPTION and result.original == "a red cube on a table" and result.changed
    assert result.notices == ()
    (request,) = llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "qwen2.5:7b" and body["stream"] is stream and body["max_tokens"] > 0
    messages = body["messages"]
    assert messages[0] == {"role": "system", "content": INSTRUCTION}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * len(EXAMPLES) + ["user"]
    assert messages[2]["content"] == EXAMPLES[0][1]
    assert messages[-1]["content"] == "Prompt: a red cube on a table"


def test_instruction_asks_for_the_authors_caption_style():
    text = INSTRUCTION.lower()
    assert "3 to 5 sentences" in text
    for word in ("colour", "shape", "texture", "relative to each other", "atmosphere", "emotions"):
        assert word in text
    for prompt, caption in EXAMPLES:  # the few-shot captions follow the recipe they teach
        sentences = [s for s in caption.split(". ") if s]
        assert 3 <= len(sentences) <= 5, prompt
        assert not any(w in caption.lower() for w in ("serene", "evoking", "atmosphere", "mood", "sense of"))


@pytest.mark.parametrize(
    "base, path",
    [
        ("{url}", "/v1/chat/completions"),  # a bare host gets /v1 (llama.cpp, Ollama, LM Studio, vLLM)
        ("{url}/", "/v1/chat/completions"),
        ("{url}/v1", "/v1/chat/completions"),
        ("{url}/api/v1/", "/api/v1/chat/completions"),  # a hosted router's prefix is kept
        ("{url}/v1/chat/completions", "/v1/chat/completions"),  # the full URL as some docs give it
    ],
)
def test_base_urls_with_or_without_v1(llm, base, path):
    expand_prompt("a cube", UpsamplerConfig(base.format(url=llm.url), stream=False))
    assert llm.requests[-1]["path"] == path
    assert "model" not in llm.requests[-1]["body"]  # no model set: llama.cpp's server uses its own
    assert "Authorization" not in llm.requests[-1]["headers"]


def test_nothing_is_sent_without_an_endpoint(llm):
    with pytest.raises(UpsamplerOffError, match="Caption upsampling is off") as info:
        expand_prompt("a cube", UpsamplerConfig(""))
    assert info.value.status_code == 409
    with pytest.raises(UpsamplerOffError, match="not an http") as info:
        expand_prompt("a cube", UpsamplerConfig("127.0.0.1:8080"))
    assert info.value.status_code == 422
    assert llm.requests == []


def test_a_server_that_ignores_stream_still_works(llm):
    llm.ignore_stream = True
    assert expand_prompt("a cube", config(llm, stream=True)).prompt == CAPTION


# --- failures ----------------------------------------------------------------------------------------


def test_endpoint_down_says_so():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UpsamplerUnreachableError, match="Cannot reach the LLM endpoint") as info:
        expand_prompt("a cube", UpsamplerConfig(url, timeout=2))
    assert info.value.status_code == 503 and url in str(info.value) and "running" in str(info.value)


def test_a_server_that_hangs_up(llm):
    llm.hang_up = True
    with pytest.raises(UpsamplerUnreachableError, match="closed the connection"):
        expand_prompt("a cube", config(llm, stream=False))


@pytest.mark.parametrize("stream", [False, True])
def test_timeout(llm, stream):
    llm.delay = 3.0
    started = time.monotonic()
    with pytest.raises(UpsamplerTimeoutError, match=r"sent nothing for 0.5 s.*raise the timeout") as info:
        expand_prompt("a cube", config(llm, timeout=0.5, stream=stream))
    assert info.value.status_code == 504
    assert time.monotonic() - started < 2.5


def test_streaming_timeout_is_the_longest_pause(llm):
    # 6 pieces 0.2 s apart: 1.2 s in all, more than the 0.5 s timeout, never 0.5 s silent
    llm.chunks, llm.chunk_delay = 6, 0.2
    assert expand_prompt("a cube", config(llm, timeout=0.5, stream=True)).prompt == CAPTION
    with pytest.raises(UpsamplerTimeoutError):  # without streaming the same server is too slow
        llm.delay = 1.0
        expand_prompt("a cube", config(llm, timeout=0.5, stream=False))
    llm.delay, llm.chunk_delay = 0.0, 0.8  # a pause longer than the timeout
    with pytest.raises(UpsamplerTimeoutError, match=r"sent nothing for 0\.5 s"):
        expand_prompt("a cube", config(llm, timeout=0.5, stream=True))


def test_a_stream_that_trickles_forever_ends_at_the_deadline(llm):
    llm.reply, llm.chunks, llm.chunk_delay, llm.endless = "ab", 2, 0.05, True
    started = time.monotonic()
    with pytest.raises(UpsamplerTimeoutError, match=r"still streaming after 1 s"):
        expand_prompt("a cube", config(llm, timeout=0.2, stream=True))
    assert time.monotonic() - started < 2.0


def test_a_model_that_does_not_stop_is_cut(llm):
    llm.reply, llm.chunks, llm.endless = "The cube is red. ", 1, True
    result = expand_prompt("a cube", config(llm, stream=True))
    assert len(result.prompt) <= MAX_CHARS and result.prompt.endswith("red.")
    assert any("cut" in notice for notice in result.notices)


@pytest.mark.parametrize(
    "status, error, expected",
    [
        (
            401,
            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
            "answered HTTP 401: Incorrect API key provided. Check the API key.",
        ),
        (
            404,
            {"error": "model 'llama9' not found, try pulling it first"},  # Ollama's form
            "answered HTTP 404: model 'llama9' not found, try pulling it first. Check the URL",
        ),
        (422, {"detail": [{"msg": "field required"}]}, 'answered HTTP 422: [{"msg": "field required"}]'),
        (500, b"<html>Internal Server Error</html>", "answered HTTP 500: <html>Internal Server Error</html>. Check"),
    ],
)
def test_http_errors_quote_the_servers_reason(llm, status, error, expected):
    llm.status, llm.error = status, error
    with pytest.raises(UpsamplerHTTPError) as info:
        expand_prompt("a cube", config(llm, stream=False))
    assert expected in str(info.value)
    assert info.value.upstream_status == status and info.value.status_code == 502


def test_a_long_error_body_is_cut(llm):
    llm.status, llm.error = 500, {"error": {"message": "x" * 5000}}
    with pytest.raises(UpsamplerHTTPError) as info:
        expand_prompt("a cube", config(llm, stream=False))
    assert "x" * 300 + "..." in str(info.value) and len(str(info.value)) < 500


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_answers(llm, stream):
    llm.malformed = b'{"choices": [{"message": '
    with pytest.raises(UpsamplerResponseError, match=r"did not answer with an OpenAI chat completion.*not JSON"):
        expand_prompt("a cube", config(llm, stream=stream))
    llm.malformed = b'{"object": "list", "data": []}'
    if not stream:  # a JSON body that is not a completion (e.g. the URL points at /v1/models)
        with pytest.raises(UpsamplerResponseError, match=r"no choices\[0\].message"):
            expand_prompt("a cube", config(llm, stream=False))


def test_an_error_event_in_the_stream(llm):
    llm.stream_error = {"error": {"message": "context size exceeded", "code": 400}}
    with pytest.raises(UpsamplerHTTPError, match="context size exceeded"):
        expand_prompt("a cube", config(llm, stream=True))


@pytest.mark.parametrize("reply", ["", "   ", "<think>the user wants a cube</think>\n", '""'])
def test_an_empty_answer(llm, reply):
    llm.reply = reply
    with pytest.raises(UpsamplerResponseError, match="empty answer"):
        expand_prompt("a cube", config(llm))


# --- the WebUI's syntax ------------------------------------------------------------------------------


def test_extra_network_tags_are_not_sent_and_are_kept(llm):
    result = expand_prompt("a cat <lora:film_grain:0.8> on a sofa <hypernet:ink:1>", config(llm))
    sent = user_prompt(llm.requests[0])
    assert "lora" not in sent and "hypernet" not in sent and "<" not in sent
    assert sent == "Prompt: a cat  on a sofa"
    assert result.prompt == f"{CAPTION} <lora:film_grain:0.8> <hypernet:ink:1>"
    assert [m.group(0) for m in EXTRA_NETWORK.finditer(result.prompt)] == ["<lora:film_grain:0.8>", "<hypernet:ink:1>"]
    assert any("<lora:film_grain:0.8>" in notice for notice in result.notices)


def test_and_sub_prompts_and_break_parts_are_expanded_one_by_one(llm):
    llm.reply = lambda body: f"Caption of {body['messages'][-1]['content'].splitlines()[0][8:]}."
    result = expand_prompt("a red cube BREAK a blue sphere AND a green cone :0.5", config(llm))
    assert result.prompt == ("Caption of a red cube. BREAK Caption of a blue sphere. AND Caption of a green cone. :0.5")
    assert len(llm.requests) == 3
    assert all("one of 3 parts" in user_prompt(r) for r in llm.requests)
    assert [text.strip() for text, _w in split_and(result.prompt)] == [
        "Caption of a red cube. BREAK Caption of a blue sphere.",
        "Caption of a green cone.",
    ]
    assert [w for _t, w in split_and(result.prompt)] == [1.0, 0.5]


def test_prompt_editing_is_not_expanded(llm):
    for prompt in ("a [cat:dog:0.5] on a sofa", "a [cat|dog] on a sofa"):
        result = expand_prompt(prompt, config(llm))
        assert not result.changed and result.prompt == prompt
        assert "prompt editing" in result.notices[0]
    assert llm.requests == []


@pytest.mark.parametrize(
    "prompt, scheduled",
    [
        ("a [a:b:0.5]", True),
        ("[a|b]", True),
        ("a [b:3]", True),
        ("[a::5]", True),
        ("a [blurry] cat", False),
        ("(a:1.2) b", False),
        ("unbalanced [a:b", False),
        (r"\[a:b:1\]", False),
        ("a | b", False),
    ],
)
def test_has_scheduling(prompt, scheduled):
    from ella_ext.prompt_syntax import has_scheduling

    assert has_scheduling(prompt) is scheduled


def test_settings_become_the_config():
    from ella_ext.caption_upsampling import config_from_settings
    from ella_ext.settings import Settings

    assert config_from_settings(Settings()) == UpsamplerConfig("", "", "", 60.0, True)
    settings = Settings(
        expand_url="http://h:1/v1", expand_model="m", expand_api_key="k", expand_timeout="x", expand_stream=False
    )
    assert config_from_settings(settings) == UpsamplerConfig("http://h:1/v1", "m", "k", 60.0, False)


def test_emphasis_is_sent_as_plain_words_and_said(llm):
    result = expand_prompt(r"a (red:1.3) cube, [blurry] \(toy\)", config(llm))
    assert user_prompt(llm.requests[0]) == "Prompt: a red cube, blurry (toy)"
    assert any("Emphasis" in notice for notice in result.notices)


def test_negative_prompt_is_what_to_leave_out(llm):
    expand_prompt("a cube", config(llm), negative="(blurry:1.2), text <lora:neg:1>")
    assert user_prompt(llm.requests[0]) == "Prompt: a cube\nLeave out: blurry, text"


def test_a_dense_prompt_is_left_alone_unless_forced(llm):
    with gzip.open("tests/data/dpg_bench_prompts.jsonl.gz", "rt") as f:
        dense = json.loads(f.readline())["prompt"]
    result = expand_prompt(dense, config(llm))
    assert not result.changed and "already a dense description" in result.notices[0] and llm.requests == []
    assert expand_prompt(dense, config(llm), force=True).prompt == CAPTION
    # a long list of tags is not a description: it is expanded
    tags = ", ".join(["masterpiece", "best quality", "1girl", "red dress", "garden"] * 10)
    assert expand_prompt(tags, config(llm)).changed


def test_the_answer_cannot_smuggle_in_syntax(llm):
    llm.reply = (
        "A red cube (about 5 cm wide) AND a [blue] sphere BREAK on a table <lora:evil:1>, with a 3:2 aspect \\ ratio."
    )
    result = expand_prompt("a cube", config(llm))
    assert len(split_and(result.prompt)) == 1
    assert all(weight == 1.0 for _text, weight in parse_attention(result.prompt))  # no emphasis, no BREAK
    assert "".join(text for text, _w in parse_attention(result.prompt)) == (
        "A red cube (about 5 cm wide) and a [blue] sphere break on a table lora evil:1, with a 3:2 aspect / ratio."
    )
    assert not EXTRA_NETWORK.search(result.prompt)


@pytest.mark.parametrize(
    "answer, caption",
    [
        ("Here is the expanded prompt:\n\nA red cube on a table.", "A red cube on a table."),
        ('Sure! Here\'s a dense caption for your prompt: "A red cube on a table."', "A red cube on a table."),
        ("**Caption:** A red cube on a table.\n\nNote: I kept the colours you gave.", "A red cube on a table."),
        ("<think>\nThe user wants a cube.\n</think>\n\nA red cube on a table.", "A red cube on a table."),
        (
            "The user wants a cube.</think>A red cube on a table.",
            "A red cube on a table.",
        ),  # think opened by the template
        ("```\nA red cube\non a table.\n```", "A red cube on a table."),
        ("- A red cube.\n- It is on a table.\n\nI hope this helps!", "A red cube. It is on a table."),
        ("“A red cube on a table.”", "A red cube on a table."),
        ('A sign reads "OPEN".', 'A sign reads "OPEN".'),  # quotes inside the caption stay
    ],
)
def test_clean_answer(answer, caption):
    assert clean_answer(answer) == (caption, False)


def test_clean_answer_bounds_the_length_at_a_sentence_end():
    text, cut = clean_answer("The cube is red. " * 200)
    assert cut and len(text) <= MAX_CHARS and text.endswith("red.") and len(text) > MAX_CHARS - 20


# --- in the WebUI: settings, the accordion's buttons, the API, the `expand` argument ------------------


@pytest.fixture
def webui_llm(webui, llm, monkeypatch):
    """The fake WebUI with its caption-upsampling settings pointing at the stand-in server."""
    from modules import shared

    for key, value in {
        "ella_expand_url": llm.url + "/v1",
        "ella_expand_model": "stand-in",
        "ella_expand_timeout": 5,
        "ella_expand_stream": True,
    }.items():
        monkeypatch.setitem(shared.opts.data, key, value)
    webui.extension._expansions.clear()
    yield webui
    webui.extension._expansions.clear()


def test_settings_rows_are_registered_with_a_password_field(webui):
    from modules import shared

    labels = shared.opts.data_labels
    assert {
        "ella_expand_url",
        "ella_expand_model",
        "ella_expand_api_key",
        "ella_expand_timeout",
        "ella_expand_stream",
    } <= set(labels)
    assert labels["ella_expand_api_key"].component_args == {"type": "password"}
    assert labels["ella_expand_url"].default == "" and labels["ella_expand_stream"].default is True
    assert webui.extension.upsampler().enabled is False  # off until the user sets a URL


def build_accordion(webui, img2img=False):
    """The script's ui() after the WebUI made the tab's prompt boxes (as it does, before the scripts' UI)."""
    import gradio

    gradio.created.clear()
    gradio.warnings.clear()
    tab = "img2img" if img2img else "txt2img"
    script = webui.module.ELLAScript()
    script.is_img2img = img2img
    prompt = gradio.Textbox(value="a red cube", elem_id=f"{tab}_prompt")
    negative = gradio.Textbox(value="blurry", elem_id=f"{tab}_neg_prompt")
    other_tab = gradio.Textbox(value="", elem_id=f"{'txt2img' if img2img else 'img2img'}_prompt")
    for component in (prompt, negative, other_tab):
        script.after_component(component, elem_id=component.elem_id)
    components = script.ui(img2img)
    by_id = {c.elem_id: c for c in gradio.created if c.elem_id}
    return script, components, prompt, negative, by_id, f"script_{tab}_ella_"


@pytest.mark.parametrize("img2img", [False, True])
def test_expand_button_rewrites_the_tabs_prompt_and_undo_restores_it(webui_llm, llm, img2img):
    import gradio

    _script, _components, prompt, negative, by_id, prefix = build_accordion(webui_llm, img2img)
    button, undo = by_id[prefix + "expand_button"], by_id[prefix + "undo_expand"]
    assert button.label is None and button.value == "Expand for ELLA" and undo.kwargs["visible"] is False
    ((on_expand, inputs, outputs),) = button.handlers
    assert inputs[0] is prompt and inputs[2] is negative and outputs[0] is prompt
    assert outputs[2] is by_id[prefix + "expand_status"] and outputs[3] is undo
    history = inputs[1]
    assert isinstance(history, gradio.State) and history.value == []

    new_prompt, history_value, status, undo_update = on_expand("a red cube <lora:toy:1>", [], "blurry")
    assert new_prompt == f"{CAPTION} <lora:toy:1>" and history_value == ["a red cube <lora:toy:1>"]
    assert "Expanded" in status and undo_update == {"__type__": "update", "visible": True}
    assert user_prompt(llm.requests[0]) == "Prompt: a red cube\nLeave out: blurry"
    assert llm.requests[0]["body"]["model"] == "stand-in"
    # the button rewrites even a dense prompt (the user asked); a second expansion stacks
    llm.reply = "A second caption."
    again, history_value, _status, _undo = on_expand(new_prompt, history_value, "")
    assert again == "A second caption. <lora:toy:1>"
    assert history_value == ["a red cube <lora:toy:1>", new_prompt]

    ((on_undo, undo_inputs, undo_outputs),) = undo.handlers
    assert undo_inputs == [history] and undo_outputs[0] is prompt
    restored, history_value, status, undo_update = on_undo(history_value)
    assert restored == new_prompt and undo_update["visible"] is True
    restored, history_value, status, undo_update = on_undo(history_value)
    assert restored == "a red cube <lora:toy:1>" and history_value == [] and undo_update["visible"] is False
    assert "Restored" in status
    assert on_undo([])[0] == {"__type__": "update"}


def test_expand_button_errors_warn_and_leave_the_prompt(webui_llm, llm, monkeypatch):
    import gradio
    from modules import shared

    *_, by_id, prefix = build_accordion(webui_llm)
    on_expand = by_id[prefix + "expand_button"].handlers[0][0]
    llm.status, llm.error = 503, {"error": {"message": "Loading model", "type": "unavailable_error"}}
    prompt, history, status, undo = on_expand("a red cube", ["older"], "")
    assert prompt == history == undo == {"__type__": "update"}  # nothing changes
    assert "HTTP 503: Loading model" in status and "color" in status
    assert gradio.warnings == [
        f"The LLM endpoint {llm.url}/v1/chat/completions answered HTTP 503: Loading model. Check the server's log."
    ]
    monkeypatch.setitem(shared.opts.data, "ella_expand_url", "")  # off: said, nothing sent
    count = len(llm.requests)
    _prompt, _history, status, _undo = on_expand("a red cube", [], "")
    assert "Caption upsampling is off" in status and len(llm.requests) == count
    # a prompt the button cannot rewrite says why
    monkeypatch.setitem(shared.opts.data, "ella_expand_url", llm.url)
    prompt, _history, status, _undo = on_expand("a [cat:dog:0.5]", [], "")
    assert prompt == {"__type__": "update"} and "prompt editing" in status


def test_expand_checkbox_is_the_last_argument(webui_llm):
    _script, components, *_rest, by_id, prefix = build_accordion(webui_llm)
    assert components[-1] is by_id[prefix + "expand"] and components[-1].value is False
    from ella_ext.args import ELLAArgs

    assert ELLAArgs.field_names()[-1] == "expand"


def test_api_expand_route(webui_llm, llm, monkeypatch):
    from modules import shared
    from test_model_setup import call, serve_app

    with serve_app(webui_llm) as base:
        status, body = call(
            base, "POST", "/ella/v1/expand", {"prompt": "a red cube <lora:toy:1>", "negative_prompt": "blurry"}
        )
        assert status == 200, body
        assert body == {
            "prompt": f"{CAPTION} <lora:toy:1>",
            "original": "a red cube <lora:toy:1>",
            "changed": True,
            "notices": ["Kept <lora:toy:1> as written (not sent to the LLM)."],
        }
        status, body = call(base, "POST", "/ella/v1/expand", {"prompt": CAPTION * 3})
        assert status == 200 and body["changed"] is False  # already dense; "force": true rewrites it
        status, body = call(base, "POST", "/ella/v1/expand", {"prompt": CAPTION * 3, "force": True})
        assert status == 200 and body["changed"] is True
        llm.delay = 2.0
        monkeypatch.setitem(shared.opts.data, "ella_expand_timeout", 0.5)
        status, body = call(base, "POST", "/ella/v1/expand", {"prompt": "a cube"})
        assert status == 504 and "sent nothing for 0.5 s" in body["detail"]
        monkeypatch.setitem(shared.opts.data, "ella_expand_url", "")
        status, body = call(base, "POST", "/ella/v1/expand", {"prompt": "a cube"})
        assert status == 409 and "Caption upsampling is off" in body["detail"]
        status, body = call(base, "POST", "/ella/v1/expand", {"negative_prompt": "x"})
        assert status == 422  # the prompt is required
        monkeypatch.setattr(shared.cmd_opts, "api_auth", "ella:s3cret", raising=False)
    with serve_app(webui_llm) as base:  # the WebUI's --api-auth guards it like the other routes
        assert call(base, "POST", "/ella/v1/expand", {"prompt": "a cube"})[0] == 401
        assert call(base, "POST", "/ella/v1/expand", {"prompt": "a cube"}, auth="ella:s3cret")[0] == 409


@pytest.mark.usefixtures("fresh_webui_state")
def test_expand_argument_rewrites_the_prompt_for_t5_and_keeps_the_original(webui_llm, llm):
    import torch
    import webui_env
    from modules import infotext_utils

    from ella_ext.args import ELLAArgs

    model = webui_llm.model()
    original = "a red cube"  # (the LoRA tag's way through is the button's test: same code)
    status, body = webui_env.run(
        webui_llm, webui_env.payload(original, n_iter=2) | {"alwayson_scripts": webui_env.ella(expand=True)}
    )
    assert status == 200, body
    assert len(llm.requests) == 1  # one prompt, one expansion for the whole job
    expanded = CAPTION
    assert body["infotexts"][0].splitlines()[0] == expanded == body["infotexts"][1].splitlines()[0]
    params = infotext_utils.parse_generation_parameters(body["info"])
    assert params["ELLA original prompt"] == original
    call = model.unet_calls[0]
    t = float(call.t[0])
    # T5 read the expanded text
    expected = webui_env.reference_conditioning(webui_llm.models_dir, CAPTION, t)
    assert torch.allclose(call.context[0], expected, atol=1e-4)
    # pasting reproduces the image: the expanded prompt, with expand off (no second rewrite)
    pasted = ELLAArgs.from_infotext(params)
    assert pasted.enabled and pasted.expand is False
    assert "ELLA original prompt" not in ELLAArgs(enabled=True, model="m", t5="t").infotext()

    # the next job with the same prompt reuses the expansion (XYZ cells, Generate again)
    status, body = webui_env.run(
        webui_llm, webui_env.payload(original) | {"alwayson_scripts": webui_env.ella(expand=True)}
    )
    assert status == 200 and len(llm.requests) == 1 and body["info"].splitlines()[0] == expanded


@pytest.mark.usefixtures("fresh_webui_state")
def test_expand_argument_batch_and_hires_prompts(webui_llm, llm):
    import webui_env
    from modules import infotext_utils

    llm.reply = lambda body: f"Dense {body['messages'][-1]['content'][8:]}."
    p = webui_env.payload(
        ["a red cube", "a blue cone"], batch_size=2, enable_hr=True, hr_second_pass_steps=2, hr_prompt="", hr_cfg=7.0
    )
    status, body = webui_env.run(webui_llm, p | {"alwayson_scripts": webui_env.ella(expand=True)})
    assert status == 200, body
    assert [t.splitlines()[0] for t in body["infotexts"]] == ["Dense a red cube.", "Dense a blue cone."]
    originals = [infotext_utils.parse_generation_parameters(t)["ELLA original prompt"] for t in body["infotexts"]]
    assert originals == ["a red cube", "a blue cone"]
    assert len(llm.requests) == 2  # the hires prompts are the same texts: no more calls
    assert webui_llm.api().runners[False] is not None


@pytest.mark.usefixtures("fresh_webui_state")
def test_expand_argument_failure_stops_the_job_with_the_message(webui_llm, llm):
    import webui_env

    model = webui_llm.model()
    llm.status, llm.error = 500, {"error": {"message": "out of memory"}}
    status, body = webui_env.run(webui_llm, webui_env.payload() | {"alwayson_scripts": webui_env.ella(expand=True)})
    assert status == 502 and body["error"] == "UpsamplerHTTPError"
    assert "answered HTTP 500: out of memory" in body["errors"]
    assert model.unet_calls == []  # no image with the short prompt passed off as the expanded one
    # an already dense prompt is used as it is, the LLM not asked
    llm.status, llm.error = 200, None
    count = len(llm.requests)
    status, body = webui_env.run(
        webui_llm, webui_env.payload(CAPTION * 2) | {"alwayson_scripts": webui_env.ella(expand=True)}
    )
    assert status == 200 and len(llm.requests) == count and "ELLA original prompt" not in body["info"]
