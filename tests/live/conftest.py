"""Opt-in suite against a running WebUI with the extension installed (and, marked no_webui, a check against a real
llama.cpp server that needs no WebUI: test_live_llama_cpp.py says what it needs).

    ELLA_WEBUI_URL=http://127.0.0.1:7861 ELLA_WEBUI_MODELS_DIR=/path/to/webui/models \
        .venv/bin/python -m pytest tests/live -v

The suite writes tiny ELLA/T5 models into <models>/ELLA (names ella-live-tiny, t5/flan-live-tiny),
so the WebUI needs any SD1.5 checkpoint loaded (random weights are fine) and nothing else.

ControlNet names differ per WebUI: sd-webui-controlnet takes module "none" and the model's file name
(the defaults); Forge's built-in ControlNet wants ELLA_LIVE_CONTROLNET_MODULE=None and the model as
/controlnet/model_list shows it, e.g. ELLA_LIVE_CONTROLNET_MODEL="control_v11p_sd15_canny_random [ff413a15]".
"""

import pytest
from live_env import CONFIGURED, write_tiny_models


def pytest_configure(config):
    config.addinivalue_line("markers", "no_webui: a live check that needs no WebUI (it says itself what it needs)")


def pytest_collection_modifyitems(config, items):
    if CONFIGURED:
        return
    skip = pytest.mark.skip(reason="set ELLA_WEBUI_URL and ELLA_WEBUI_MODELS_DIR to run the live WebUI suite")
    for item in items:
        if "tests/live" in str(item.fspath) and item.get_closest_marker("no_webui") is None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def tiny_models():
    """The tiny ELLA model and T5 folder every live test names, written into the WebUI's models folder once."""
    if CONFIGURED:
        write_tiny_models()
    yield
