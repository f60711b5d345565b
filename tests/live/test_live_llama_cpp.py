"""Caption upsampling against a real llama.cpp server (llama-cpp-python's), with a tiny random GGUF model.

Needs no WebUI. Runs where an interpreter has `llama-cpp-python[server]` and `gguf`:

    pip install 'llama-cpp-python[server]' gguf            # builds llama.cpp from source: minutes
    ELLA_LLAMA_PYTHON=/path/to/that/python .venv/bin/python -m pytest tests/live/test_live_llama_cpp.py -v

(ELLA_LLAMA_PYTHON defaults to the interpreter running pytest.) The model answers nonsense; what is checked is
the protocol: the real server's chat completions, streamed and not, and its errors, through expand_prompt.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ella_ext.caption_upsampling import MAX_CHARS, UpsamplerConfig, expand_prompt
from ella_ext.errors import UpsamplerHTTPError
from ella_ext.prompt_syntax import EXTRA_NETWORK, parse_attention, split_and

pytestmark = pytest.mark.no_webui  # tests/live/conftest.py: runs without ELLA_WEBUI_URL

PYTHON = os.environ.get("ELLA_LLAMA_PYTHON") or sys.executable
HERE = Path(__file__).resolve().parent


def _has_llama_cpp() -> bool:
    probe = subprocess.run([PYTHON, "-c", "import llama_cpp.server, gguf"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if not _has_llama_cpp():
        pytest.skip(
            f"{PYTHON} has no llama_cpp.server and gguf: pip install 'llama-cpp-python[server]' gguf there, "
            "or set ELLA_LLAMA_PYTHON to an interpreter that has them"
        )
    model = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    subprocess.run([PYTHON, str(HERE / "tiny_gguf.py"), str(model)], check=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (model.parent / "server.log").open("wb")
    server = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--chat_format",
            "chatml",
            "--n_threads",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (model.parent / "server.log").read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "llama.cpp's server did not start in 180 s"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.parametrize("stream", [False, True])
def test_expand_prompt_through_llama_cpp(llama_server, stream):
    config = UpsamplerConfig(llama_server, model="tiny", timeout=120, stream=stream)  # a bare host: /v1 is added
    result = expand_prompt("a red cube BREAK a blue sphere <lora:toy:0.7>", config)
    assert result.changed and result.original == "a red cube BREAK a blue sphere <lora:toy:0.7>"
    text = result.prompt
    assert text.endswith(" <lora:toy:0.7>") and [m.group(0) for m in EXTRA_NETWORK.finditer(text)] == ["<lora:toy:0.7>"]
    first, second = EXTRA_NETWORK.sub("", text).split(" BREAK ")  # the two parts, each expanded on its own
    assert first.strip() and second.strip() and len(first) <= MAX_CHARS and len(second) <= MAX_CHARS
    assert len(split_and(text)) == 1 and all(w in (1.0, -1.0) for _t, w in parse_attention(EXTRA_NETWORK.sub("", text)))
    print(f"\nllama.cpp ({'stream' if stream else 'json'}): {text[:300]!r}")


def test_llama_cpp_errors_come_back_as_upsampler_errors(llama_server):
    with pytest.raises(UpsamplerHTTPError) as info:
        expand_prompt("a red cube", UpsamplerConfig(llama_server + "/nope/v1", timeout=30, stream=False))
    assert info.value.upstream_status == 404 and "answered HTTP 404" in str(info.value)
