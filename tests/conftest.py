import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import factories  # noqa: E402

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
def fixtures_dir():
    return factories.FIXTURES
