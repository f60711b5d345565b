"""The Check report: found/missing with the fix, sizes, sha256 (cached) against the hub, layouts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import factories
import pytest
from hub_server import HubServer

from ella_ext.discovery import KNOWN_ELLA, KNOWN_T5, ModelRoots
from ella_ext.hub import ELLA_FILE
from ella_ext.model_check import check_models
from ella_ext.tsc import TSCConfig

CFG = TSCConfig(**factories.RELEASED_TSC)


@pytest.fixture
def installed(tmp_path, t5_folder) -> ModelRoots:
    """The released ELLA file and T5 folder, in place under a models folder."""
    roots = ModelRoots.under(tmp_path / "models")
    factories.write_tsc(roots.ella[0] / ELLA_FILE, CFG, seed=2)
    shutil.copytree(t5_folder, roots.t5[0] / KNOWN_T5)
    return roots


@pytest.fixture
def hub(installed):
    """A hub that publishes exactly the installed files."""
    with HubServer() as server:
        server.add(ELLA_FILE, (installed.ella[0] / ELLA_FILE).read_bytes())
        server.add_folder(installed.t5[0] / KNOWN_T5, KNOWN_T5)
        yield server


def items(report) -> dict:
    return {i.name: i for i in report.items}


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_released_models_check_out_against_the_hub(installed, hub):
    report = check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url)
    got = items(report)
    assert report.ok, report.to_markdown()
    assert list(got) == [
        "ELLA model",
        "ELLA weights",
        "ELLA sha256",
        "T5 encoder",
        "T5 layout",
        "T5 tokenizer",
        "T5 checksums",
    ]
    ella = installed.ella[0] / ELLA_FILE
    assert str(ella) in got["ELLA model"].detail
    assert "2 blocks, width 64" in got["ELLA weights"].detail and "F32" in got["ELLA weights"].detail
    sha = hashlib.sha256(ella.read_bytes()).hexdigest()
    assert got["ELLA sha256"].detail == f"{sha}; matches the hub (QQGYLab/ELLA)" and not got["ELLA sha256"].skipped
    assert (
        got["T5 layout"].detail.startswith("encoder-only, d_model 32")
        and "model.safetensors" in got["T5 layout"].detail
    )
    assert got["T5 tokenizer"].detail == "tokenizer.json and spiece.model present"
    assert got["T5 checksums"].detail.startswith("all 6 files match the hub")
    weights_sha = hashlib.sha256((installed.t5[0] / KNOWN_T5 / "model.safetensors").read_bytes()).hexdigest()
    assert f"model.safetensors sha256 {weights_sha}" in got["T5 checksums"].detail
    # renderings for the UI
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data and data["ok"] is True and len(data["items"]) == 7
    md = report.to_markdown()
    assert md.startswith("**ELLA model check: all good**") and md.count("✅") == 7
    assert len(hub.listings) == 2  # one listing per kind


def test_sha256_is_cached_by_path_size_and_mtime(installed, hub):
    ella = installed.ella[0] / ELLA_FILE
    assert items(check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url))["ELLA sha256"].ok
    # same size and mtime: the cached hash is used, the file is not read again
    st = ella.stat()
    flip_last_byte(ella)
    os.utime(ella, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert items(check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url))["ELLA sha256"].ok
    # a new mtime: hashed again, and the damage is found
    os.utime(ella, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    item = items(check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url))["ELLA sha256"]
    assert not item.ok and "corrupt" in item.detail and "Download" in item.fix


def test_corrupt_and_truncated_files_are_named_with_the_fix(installed, hub):
    flip_last_byte(installed.t5[0] / KNOWN_T5 / "model.safetensors")
    ella = installed.ella[0] / ELLA_FILE
    ella.write_bytes(ella.read_bytes()[:-1000])
    report = check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url)
    got = items(report)
    assert not report.ok
    assert not got["ELLA weights"].ok and "truncated" in got["ELLA weights"].detail
    assert not got["ELLA sha256"].ok and "incomplete" in got["ELLA sha256"].detail
    t5 = got["T5 checksums"]
    assert not t5.ok and "model.safetensors differs from the hub's" in t5.detail and "Download" in t5.fix
    assert got["T5 layout"].ok  # the header is intact: only the hash shows the damage
    md = report.to_markdown()
    assert "3 problems" in md and md.count("❌") == 3 and "Fix: Press Download" in md


def test_offline_check_does_not_ask_the_hub(installed, hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url)
    got = items(report)
    assert report.ok and hub.listings == []
    for name in ("ELLA sha256", "T5 checksums"):
        assert got[name].skipped and "not checked against the hub (offline" in got[name].detail
    assert "➖" in report.to_markdown()


def test_unreachable_hub_is_not_a_failure(installed):
    report = check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint="http://127.0.0.1:9", timeout=5)
    got = items(report)
    assert report.ok
    reason = got["ELLA sha256"].detail.split("; ", 1)[1]
    assert (
        got["ELLA sha256"].skipped
        and reason == "not checked against the hub at http://127.0.0.1:9 (connection refused)"
    )


def test_missing_models_say_how_to_get_them(tmp_path, hub):
    roots = ModelRoots.under(tmp_path / "empty")
    report = check_models(KNOWN_ELLA, KNOWN_T5, roots, endpoint=hub.url)
    got = items(report)
    assert list(got) == ["ELLA model", "T5 encoder"] and not report.ok
    assert "was not found" in got["ELLA model"].detail
    assert got["ELLA model"].fix == (
        f"Press Download in the ELLA accordion to fetch {ELLA_FILE} into '{roots.ella[0]}', "
        "or put it there by hand (README, section Models)."
    )
    assert f"the folder {KNOWN_T5} into '{roots.t5[0]}'" in got["T5 encoder"].fix
    other = items(check_models("mine/custom", "my-t5", roots, offline=True))
    assert other["ELLA model"].fix == f"Put 'mine/custom.safetensors' into '{roots.ella[0]}' or choose another model."
    assert hub.listings == []


def test_browser_prefixed_t5_files_are_explained(installed, hub):
    folder = installed.t5[0] / KNOWN_T5
    prefix = KNOWN_T5 + "_"
    for f in list(folder.iterdir()):
        f.rename(folder / (prefix + f.name))
    got = items(check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url))
    assert not got["T5 layout"].ok and f"prefix '{prefix}'" in got["T5 layout"].detail
    assert not got["T5 tokenizer"].ok
    assert not got["T5 checksums"].ok and "config.json is missing" in got["T5 checksums"].detail


def test_other_layouts_are_described_and_not_compared(installed, t5_folders, hub):
    checkout = installed.t5[0] / "flan-t5-xl"
    shutil.copytree(t5_folders["checkout"][0], checkout)
    (checkout / "spiece.model").unlink()
    got = items(check_models(KNOWN_ELLA, "flan-t5-xl", installed, endpoint=hub.url))
    layout = got["T5 layout"].detail
    assert got["T5 layout"].ok and layout.startswith("encoder-decoder") and "via model.safetensors.index.json" in layout
    assert "model-00001-of-00003.safetensors" in layout and "model-00003-of-00003" not in layout  # decoder shard unused
    assert got["T5 tokenizer"].ok and got["T5 tokenizer"].detail == "tokenizer.json present"
    sums = got["T5 checksums"].detail
    assert got["T5 checksums"].skipped and "not the released folder" in sums
    assert "model-00001-of-00003.safetensors sha256 " in sums and "model-00003" not in sums  # decoder not hashed


def test_missing_tokenizer_fails(installed, hub):
    folder = installed.t5[0] / KNOWN_T5
    (folder / "tokenizer.json").unlink()
    (folder / "spiece.model").unlink()
    got = items(check_models(KNOWN_ELLA, KNOWN_T5, installed, endpoint=hub.url))
    assert not got["T5 tokenizer"].ok and "Download" in got["T5 tokenizer"].fix
    assert not got["T5 layout"].ok and "no tokenizer" in got["T5 layout"].detail
    assert "tokenizer.json is missing" in got["T5 checksums"].detail


def test_counts_take_the_right_number(tmp_path, t5_folder):
    """'a TSC with 1 block', not '1 blocks'; several stay plural."""
    from ella_ext.model_check import counted

    roots = ModelRoots.under(tmp_path / "models")
    one_block = TSCConfig(**{**factories.RELEASED_TSC, "layers": 1})
    factories.write_tsc(roots.ella[0] / "one-block.safetensors", one_block, seed=2)
    shutil.copytree(t5_folder, roots.t5[0] / "mine")
    got = items(check_models("one-block", "mine", roots))
    assert got["ELLA weights"].detail.startswith("a TSC with 1 block, width 64"), got["ELLA weights"].detail
    assert "2 layers;" in got["T5 layout"].detail
    assert [counted(n, "block") for n in (0, 1, 2)] == ["0 blocks", "1 block", "2 blocks"]
