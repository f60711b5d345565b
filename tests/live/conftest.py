"""Opt-in suite against a running WebUI with the extension installed.

    ELLA_WEBUI_URL=http://127.0.0.1:7861 ELLA_WEBUI_MODELS_DIR=/path/to/webui/models \
        .venv/bin/python -m pytest tests/live -v

The suite writes tiny ELLA/T5 models into <models>/ELLA (names ella-live-tiny, t5/flan-live-tiny),
so the WebUI needs any SD1.5 checkpoint loaded (random weights are fine) and nothing else.
"""
import os

import pytest

URL = os.environ.get("ELLA_WEBUI_URL")
MODELS = os.environ.get("ELLA_WEBUI_MODELS_DIR")


def pytest_collection_modifyitems(config, items):
    if URL and MODELS:
        return
    skip = pytest.mark.skip(reason="set ELLA_WEBUI_URL and ELLA_WEBUI_MODELS_DIR to run the live WebUI suite")
    for item in items:
        if "tests/live" in str(item.fspath):
            item.add_marker(skip)
