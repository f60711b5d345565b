"""First run: the accordion's status line, Download and Check buttons, the /ella/v1 API, the progress text.

The UI handlers are the ones scripts/ella.py wires to its buttons (read back from the fake gradio);
the API is the real FastAPI app served by uvicorn on 127.0.0.1 and called over HTTP; downloads come
from the stand-in hub (tests/hub_server.py) through the real huggingface_hub client.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from webui_env import MODEL_NAME, T5_NAME, ella, load_script, payload, run

from ella_ext.discovery import KNOWN_ELLA, KNOWN_T5
from ella_ext.downloads import DownloadManager
from ella_ext.hub import ELLA_FILE
from ella_ext.model_setup import ModelSetup


@pytest.fixture
def empty_webui(tmp_path, hub, monkeypatch):
    """scripts/ella.py in a WebUI whose models folder has no ELLA files yet; HF_ENDPOINT is the stand-in hub."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    webui = load_script(tmp_path / "models")
    manager = DownloadManager(retries=0, chunk_size=16384)
    webui.extension.model_setup = ModelSetup(webui.extension.roots, manager=manager)
    yield webui
    manager.cancel()
    assert manager.wait(10)["state"] != "running"


def build_ui(webui) -> dict:
    """Run the script's ui() and return its components by elem_id suffix."""
    import gradio

    gradio.created.clear()
    script = webui.module.ELLAScript()
    script.is_img2img = False
    script.ui(False)
    prefix = "script_txt2img_ella_"
    return {c.elem_id[len(prefix) :]: c for c in gradio.created if (c.elem_id or "").startswith(prefix)}


def handler(component):
    assert len(component.handlers) == 1
    return component.handlers[0][0]


# --- the accordion ------------------------------------------------------------------------------


def test_accordion_says_what_is_missing_and_downloads_it_with_progress(empty_webui, hub):
    ui = build_ui(empty_webui)
    line = ui["models_status"].value
    ella_dir = empty_webui.models_dir / "ELLA"
    assert f"ELLA needs the ELLA model ({ELLA_FILE}) in &#x27;{ella_dir}&#x27;" in line
    assert f"the T5 encoder ({KNOWN_T5}) in &#x27;{ella_dir / 't5'}&#x27;" in line
    assert "Press Download" in line
    assert ui["model"].choices == [] and ui["t5"].choices == []

    hub.gate = threading.Event()  # hold the first file's body to see the download in progress
    updates = handler(ui["download"])()
    first = next(updates)
    assert hub.waiting.wait(10)
    during = next(updates)
    assert 'class="ella-progress-bar"' in during[0] and "Downloading" in during[0]
    assert during[1:] == ({"__type__": "update"},) * 2  # the dropdowns wait for the end
    assert 'class="ella-models-status' in first[0]
    hub.gate.set()
    *_, last = updates
    status, model, t5 = last
    assert "Downloaded and verified" in status and "ELLA is ready" in status
    assert model["value"] == KNOWN_ELLA and KNOWN_ELLA in model["choices"]
    assert t5["value"] == KNOWN_T5 and KNOWN_T5 in t5["choices"]
    assert (ella_dir / ELLA_FILE).is_file() and (ella_dir / "t5" / KNOWN_T5 / "config.json").is_file()
    assert not list(ella_dir.rglob("*.part"))

    assert "ELLA needs" not in ui["models_status"].load_fn()  # a reload of the page shows the line as it is now
    *_, (line, _model, _t5) = handler(ui["download"])()
    assert "The ELLA model and the T5 encoder are installed; nothing to download." in line

    again = build_ui(empty_webui)  # the page after a restart
    assert again["model"].value == KNOWN_ELLA and again["t5"].value == KNOWN_T5
    report, line = handler(again["check"])(KNOWN_ELLA, KNOWN_T5)
    assert report.startswith("**ELLA model check: all good**")
    assert "ELLA sha256" in report and "matches the hub" in report


def test_a_failed_download_says_why_and_keeps_the_button(empty_webui, hub):
    hub.fail[ELLA_FILE] = 500
    ui = build_ui(empty_webui)
    *_, (line, _model, _t5) = handler(ui["download"])()
    assert "Download failed:" in line and "HTTP 500" in line and "try again" in line
    assert not (empty_webui.models_dir / "ELLA" / ELLA_FILE).exists()
    del hub.fail[ELLA_FILE]
    *_, (line, model, _t5) = handler(ui["download"])()  # the retry completes
    assert "ELLA is ready" in line and model["value"] == KNOWN_ELLA


def test_check_names_the_fix_for_what_is_missing(empty_webui):
    ui = build_ui(empty_webui)
    report, _line = handler(ui["check"])("", "")
    assert "**ELLA model check: 2 problems**" in report
    assert "Press Download in the ELLA accordion to fetch" in report


def test_offline_status_line_says_how_to_allow_downloads(empty_webui, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = build_ui(empty_webui)["models_status"].value
    assert "HF_HUB_OFFLINE is set" in line and "restart the WebUI" in line


# --- the API --------------------------------------------------------------------------------------


@contextmanager
def serve_app(webui):
    """The WebUI's app_started callbacks run on a fresh FastAPI app, served by uvicorn on a free port."""
    import uvicorn
    from fastapi import FastAPI
    from modules import script_callbacks

    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def call(base, method, path, body=None, auth=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_lists_downloads_with_progress_and_checks(empty_webui, hub, monkeypatch):
    with serve_app(empty_webui) as base:
        status, models = call(base, "GET", "/ella/v1/models")
        assert status == 200
        assert models["models"] == [] and models["t5"] == [] and models["missing"] == ["ella", "t5"]
        assert models["to_download"] == ["ella", "t5"]
        assert models["download_targets"] == {
            "ella": str(empty_webui.models_dir / "ELLA"),
            "t5": str(empty_webui.models_dir / "ELLA" / "t5"),
        }
        assert models["downloads_allowed"] is True and models["download"]["state"] == "idle"

        hub.gate = threading.Event()
        status, started = call(base, "POST", "/ella/v1/download")
        assert status == 202 and started["started"] is True and started["kinds"] == ["ella", "t5"]
        status, second = call(base, "POST", "/ella/v1/download", {"kinds": ["ella"]})
        assert status == 200 and second["started"] is False and "already running" in second["notice"]
        assert hub.waiting.wait(10)
        status, progress = call(base, "GET", "/ella/v1/download")
        assert status == 200 and progress["state"] == "running" and progress["phase"] == "downloading"
        assert progress["bytes_total"] > 0 and progress["files_total"] >= 2
        hub.gate.set()
        status, done = call(base, "GET", "/ella/v1/download?wait=30")
        assert status == 200 and done["state"] == "done", done
        assert done["bytes_done"] == done["bytes_total"] and done["eta"] == 0
        assert Path(done["paths"]["ella"]) == empty_webui.models_dir / "ELLA" / ELLA_FILE
        assert sum(path == ELLA_FILE for path, _range in hub.downloads) == 1  # the second click started nothing

        status, models = call(base, "GET", "/ella/v1/models?check=true")
        assert status == 200 and models["missing"] == []
        assert models["models"] == [KNOWN_ELLA] and models["t5"] == [KNOWN_T5]
        assert models["check"]["ok"] is True, models["check"]["markdown"]
        names = [item["name"] for item in models["check"]["items"]]
        assert "ELLA sha256" in names and any("tokenizer" in n.lower() for n in names)

        status, nothing = call(base, "POST", "/ella/v1/download")
        assert status == 200 and nothing["started"] is False and "nothing to download" in nothing["notice"]
        status, error = call(base, "POST", "/ella/v1/download", {"kinds": ["ella", "vae"]})
        assert status == 422 and "'kinds'" in error["detail"]
        status, error = call(base, "GET", "/ella/v1/download?wait=600")
        assert status == 422  # wait is capped at 60 s

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        status, refused = call(base, "POST", "/ella/v1/download", {"kinds": ["t5"]})
        assert status == 409 and "HF_HUB_OFFLINE is set" in refused["detail"]
        status, models = call(base, "GET", "/ella/v1/models")
        assert models["downloads_allowed"] is False and "HF_HUB_OFFLINE" in models["offline_reason"]


def test_api_cancel_keeps_what_was_fetched_and_the_next_start_resumes(empty_webui, hub):
    with serve_app(empty_webui) as base:
        hub.gate = threading.Event()
        hub.gate_paths = {ELLA_FILE}
        assert call(base, "POST", "/ella/v1/download", {"kinds": ["ella"]})[0] == 202
        assert hub.waiting.wait(10)
        status, cancelled = call(base, "DELETE", "/ella/v1/download")
        assert status == 200
        hub.gate.set()
        status, ended = call(base, "GET", "/ella/v1/download?wait=30")
        assert ended["state"] == "error" and "cancelled" in ended["error"]
        assert not (empty_webui.models_dir / "ELLA" / ELLA_FILE).exists()
        hub.gate = None
        assert call(base, "POST", "/ella/v1/download", {"kinds": ["ella"]})[0] == 202
        status, done = call(base, "GET", "/ella/v1/download?wait=30")
        assert done["state"] == "done" and (empty_webui.models_dir / "ELLA" / ELLA_FILE).is_file()


def test_api_honours_the_webuis_api_auth(empty_webui, monkeypatch):
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "api_auth", "ella:s3cret,other:pw", raising=False)
    with serve_app(empty_webui) as base:
        assert call(base, "GET", "/ella/v1/models")[0] == 401
        assert call(base, "GET", "/ella/v1/models", auth="ella:wrong")[0] == 401
        assert call(base, "POST", "/ella/v1/download", auth="ella:wrong")[0] == 401
        assert call(base, "GET", "/ella/v1/models", auth="ella:s3cret")[0] == 200
        assert call(base, "GET", "/ella/v1/download", auth="other:pw")[0] == 200


# --- the progress text while a job runs --------------------------------------------------------------


def test_progress_text_says_what_ella_loads_and_encodes(webui, fresh_webui_state, monkeypatch):
    from modules import shared

    seen = []

    class RecordingState(type(shared.state)):
        @property
        def textinfo(self):
            return self.__dict__.get("_textinfo")

        @textinfo.setter
        def textinfo(self, value):
            seen.append(value)
            self.__dict__["_textinfo"] = value

    state = RecordingState()
    monkeypatch.setattr(shared, "state", state)
    webui.extension.runtime.unload_all()
    webui.extension.runtime.feature_cache.clear()
    status, body = run(webui, payload(prompt="a lighthouse at dusk", negative_prompt="blurry", alwayson_scripts=ella()))
    assert status == 200, body
    lines = [s for s in seen if s and s.startswith("ELLA")]
    connector = next(
        i for i, s in enumerate(lines) if s.startswith(f"ELLA: loading the connector {MODEL_NAME}.safetensors (")
    )
    assert lines[connector].endswith("in fp32 to CPU memory")
    first = lines.index("ELLA: encoding prompt 1 of 2 with T5 for the first pass")
    t5 = next(i for i, s in enumerate(lines) if s.startswith(f"ELLA: loading the T5 encoder {T5_NAME} ("))
    assert " on disk) in fp" in lines[t5]
    assert connector < first < t5  # T5 loads on the first encode, inside it
    assert lines[t5 + 1] == lines[first]  # the enclosing line returns after the load
    assert "ELLA: encoding prompt 2 of 2 with T5 for the first pass" in lines
    assert seen[-1] is None and state.textinfo is None  # ELLA's words end with its work


def test_progress_text_gives_back_the_webuis_own_text(webui, monkeypatch):
    from modules import shared

    from ella_ext.webui.progress import ProgressText

    monkeypatch.setattr(shared.state, "textinfo", "Upscaling")
    report = ProgressText()
    report("ELLA: loading the T5 encoder")
    report("ELLA: encoding prompt 1 of 3 with T5 for the hires pass")
    assert shared.state.textinfo == "ELLA: encoding prompt 1 of 3 with T5 for the hires pass"
    report(None)
    assert shared.state.textinfo == "Upscaling"
    report(None)  # nothing of ELLA's left: a second end changes nothing
    assert shared.state.textinfo == "Upscaling"


def test_moving_t5_off_the_gpu_is_said(monkeypatch):
    from ella_ext.runtime import ELLARuntime
    from ella_ext.settings import Settings

    seen = []
    moved = []

    class GPUResidentT5:
        device = torch.device("cuda")
        nbytes = 2_800_000_000

        def to(self, device):
            moved.append(device)

    runtime = ELLARuntime(Settings(t5_residency="cpu"), report=seen.append)
    runtime._t5 = GPUResidentT5()
    runtime.park_text_encoder()
    assert moved == ["cpu"]
    assert seen == ["ELLA: moving T5 (2.8 GB) off the GPU to CPU memory", None]


def test_check_finds_a_damaged_file_and_download_replaces_it(empty_webui, hub, released):
    ui = build_ui(empty_webui)
    *_, (line, *_rest) = handler(ui["download"])()
    assert "ELLA is ready" in line
    installed = empty_webui.models_dir / "ELLA" / ELLA_FILE
    data = bytearray(installed.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte: only the sha256 tells
    installed.write_bytes(bytes(data))

    report, line = handler(ui["check"])(KNOWN_ELLA, KNOWN_T5)
    assert "**ELLA model check: 1 problem**" in report and "does not match the hub" in report
    assert "Press Download to replace" in line
    assert empty_webui.extension.model_setup.to_download() == ["ella"]

    *_, (line, model, _t5) = handler(ui["download"])()
    assert installed.read_bytes() == released[ELLA_FILE]
    assert "ELLA is ready" in line
    report, line = handler(ui["check"])(KNOWN_ELLA, KNOWN_T5)
    assert "all good" in report and line.startswith('<div class="ella-models-status ella-done"')


def test_api_check_lists_a_damaged_file_to_download(empty_webui, hub, released):
    with serve_app(empty_webui) as base:
        assert call(base, "POST", "/ella/v1/download")[0] == 202
        assert call(base, "GET", "/ella/v1/download?wait=30")[1]["state"] == "done"
        t5_weights = empty_webui.models_dir / "ELLA" / "t5" / KNOWN_T5 / "model.safetensors"
        t5_weights.write_bytes(t5_weights.read_bytes()[:-10])  # truncated
        status, models = call(base, "GET", "/ella/v1/models?check=true")
        assert status == 200 and models["check"]["ok"] is False and models["to_download"] == ["t5"]
        assert {item["repair"] for item in models["check"]["items"] if not item["ok"]} == {"t5"}
        status, started = call(base, "POST", "/ella/v1/download")
        assert status == 202 and started["kinds"] == ["t5"]
        assert call(base, "GET", "/ella/v1/download?wait=30")[1]["state"] == "done"
        assert t5_weights.read_bytes() == released[f"{KNOWN_T5}/model.safetensors"]
        status, models = call(base, "GET", "/ella/v1/models?check=true")
        assert models["check"]["ok"] is True and models["to_download"] == []
