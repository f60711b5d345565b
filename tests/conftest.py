import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import factories  # noqa: E402

# The download tests talk to a stand-in hub on 127.0.0.1; huggingface_hub reads its offline mode once, at import.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_name, None)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def t5_folders(tmp_path_factory):
    """One tiny T5 per supported folder layout, with the full fp32 state dict each was made from."""
    base = tmp_path_factory.mktemp("t5")
    out = {}
    for layout in ("ella", "checkout", "encoder-file"):
        folder = base / layout
        out[layout] = (folder, factories.write_t5_folder(folder, layout))
    return out


@pytest.fixture(scope="session")
def t5_folder(t5_folders):
    return t5_folders["ella"][0]


@pytest.fixture(scope="session")
def t5_fp32(t5_folder):
    """The tiny T5 (ella layout) loaded in fp32 through the real loader; read-only in tests."""
    from ella_ext.t5 import load_t5_encoder

    return load_t5_encoder(t5_folder, precision="fp32")


@pytest.fixture(scope="session")
def fixtures_dir():
    return factories.FIXTURES


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    """scripts/ella.py loaded into the fake WebUI, with tiny ELLA/T5 models in its models folder."""
    import webui_env

    models = tmp_path_factory.mktemp("models")
    webui_env.write_models(models)
    return webui_env.load_script(models)


@pytest.fixture
def fresh_webui_state(webui):
    """Each test starts on A1111 with a fresh SD1.5 model and an empty feature cache."""
    from modules import errors, shared

    webui.set_backend("a1111")
    webui.model()
    shared.state.reset()
    errors.reported.clear()
    yield
    webui.extension.runtime.feature_cache.clear()


@pytest.fixture(scope="session")
def released(tmp_path_factory, t5_folder) -> dict:
    """What the stand-in hub (tests/hub_server.py) publishes as QQGYLab/ELLA: a tiny TSC under the released
    file name, the tiny T5 folder under the released folder name, and a README."""
    from ella_ext.discovery import KNOWN_T5
    from ella_ext.hub import ELLA_FILE
    from ella_ext.tsc import TSCConfig

    tsc = tmp_path_factory.mktemp("released") / ELLA_FILE
    factories.write_tsc(tsc, TSCConfig(**factories.RELEASED_TSC), seed=1)
    files = {ELLA_FILE: tsc.read_bytes(), "README.md": b"# ELLA\n"}
    for f in sorted(t5_folder.iterdir()):
        files[f"{KNOWN_T5}/{f.name}"] = f.read_bytes()
    return files


@pytest.fixture
def hub(released):
    """tests/hub_server.py serving the released files (the download and model-setup tests)."""
    from hub_server import HubServer

    with HubServer() as server:
        for path, data in released.items():
            server.add(path, data)
        yield server
