"""Hub downloads against a real HTTP server speaking the hub's protocol (tests/hub_server.py).

Nothing is mocked between the extension and the socket: the real huggingface_hub session (requests
in 0.36, httpx in 2.x) talks to 127.0.0.1. Only the full-disk case swaps the disk: the partial file
is a link to /dev/full, so the kernel itself answers ENOSPC.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import factories
import pytest
from hub_server import HubServer, git_blob_sha1

from ella_ext import downloads
from ella_ext.discovery import KNOWN_ELLA, KNOWN_T5, ModelRoots, list_ella_models, list_t5_encoders
from ella_ext.downloads import STAGING, DownloadManager, hub_download
from ella_ext.errors import ModelFileError
from ella_ext.hub import ELLA_FILE, remote_files
from ella_ext.tsc import TSCConfig

CFG = TSCConfig(**factories.RELEASED_TSC)
T5_MODEL = f"{KNOWN_T5}/model.safetensors"
T5_CONFIG = f"{KNOWN_T5}/config.json"


@pytest.fixture
def hub(released):
    with HubServer() as server:
        for path, data in released.items():
            server.add(path, data)
        server.add("other-model.safetensors", b"never requested")
        yield server


@pytest.fixture
def roots(tmp_path) -> ModelRoots:
    return ModelRoots.under(tmp_path / "models")


@pytest.fixture
def manager():
    m = DownloadManager(retries=0, chunk_size=16384)
    yield m
    m.cancel()
    assert m.wait(10)["state"] != "running"


def targets(roots: ModelRoots) -> dict[str, Path]:
    return {"ella": roots.ella[0], "t5": roots.t5[0]}


def run(manager: DownloadManager, hub: HubServer, roots: ModelRoots, kinds=("ella", "t5"), **kw) -> dict:
    started = manager.start(list(kinds), targets(roots), endpoint=hub.url, **kw)
    assert started["started"] is True
    status = manager.wait(30)
    assert status["state"] in ("done", "error")
    return status


def t5_files(released: dict[str, bytes]) -> dict[str, bytes]:
    return {p[len(KNOWN_T5) + 1 :]: b for p, b in released.items() if p.startswith(KNOWN_T5 + "/")}


def no_partials(root: Path) -> bool:
    return not list(root.rglob("*.part"))


def test_both_kinds_download_verified_into_discoverable_models(hub, roots, manager, released):
    from ella_ext.t5 import load_t5_encoder
    from ella_ext.tsc import load_ella

    status = run(manager, hub, roots)
    assert status["state"] == "done", status["error"]
    ella, t5 = Path(status["paths"]["ella"]), Path(status["paths"]["t5"])
    assert ella == roots.ella[0] / ELLA_FILE and ella.read_bytes() == released[ELLA_FILE]
    assert t5 == roots.t5[0] / KNOWN_T5
    assert {p.name: p.read_bytes() for p in t5.iterdir()} == t5_files(released)
    # the staging folders are gone and both models are found and load
    assert not (roots.ella[0] / STAGING).exists() and not (roots.t5[0] / STAGING).exists()
    assert list_ella_models(roots) == [KNOWN_ELLA]
    assert list_t5_encoders(roots) == [KNOWN_T5]
    assert load_ella(ella).config == CFG
    assert load_t5_encoder(t5, precision="fp32").d_model == 32
    # the status is complete and JSON-serialisable
    total = len(released[ELLA_FILE]) + sum(map(len, t5_files(released).values()))
    assert (status["bytes_done"], status["bytes_total"]) == (total, total)
    assert (status["files_done"], status["files_total"]) == (1 + len(t5_files(released)), 1 + len(t5_files(released)))
    assert status["eta"] == 0 and status["speed"] > 0 and status["error"] is None
    assert json.loads(json.dumps(status)) == status
    # only the two released things were fetched: one file each, two listings (root, T5 folder); never the whole repo
    assert sorted(p for p, _ in hub.downloads) == sorted(p for p in released if p != "README.md")
    assert [l.split("?")[0].rsplit("/tree/main", 1)[1] for l in hub.listings] == ["", f"/{KNOWN_T5}"]


def test_listing_follows_pages_and_reads_hashes(hub, released):
    import hashlib

    hub.page_size = 2
    files = {f.path: f for f in remote_files("t5", hub.url)}
    assert set(files) == {p for p in released if p.startswith(KNOWN_T5 + "/")}
    assert len(hub.listings) >= 3
    assert files[T5_MODEL].sha256 == hashlib.sha256(released[T5_MODEL]).hexdigest()
    assert files[T5_CONFIG].sha256 is None and files[T5_CONFIG].blob_id == git_blob_sha1(released[T5_CONFIG])
    assert files[T5_CONFIG].size == len(released[T5_CONFIG])


def test_unsafe_names_from_a_mirror_are_refused(hub):
    hub.add(f"{KNOWN_T5}/../../escape.json", b"{}")
    with pytest.raises(Exception, match="unsafe file names"):
        remote_files("t5", hub.url)


def test_progress_is_monotonic_and_reaches_the_total(hub, roots, released):
    seen = []
    manager = DownloadManager(retries=0, chunk_size=8192, listener=seen.append)
    status = run(manager, hub, roots)
    assert status["state"] == "done"
    running = [s for s in seen if s["state"] == "running" and s["phase"] == "downloading"]
    assert len(running) > 50  # one per chunk: the total is over 500 KB in 8 KB chunks
    done = [s["bytes_done"] for s in seen]
    assert done == sorted(done)
    assert {s["bytes_total"] for s in running} == {status["bytes_total"]}
    assert seen[-1] == status and status["bytes_done"] == status["bytes_total"]
    assert running[0]["bytes_done"] == 0 and running[0]["speed"] == 0 and running[0]["eta"] is None  # no byte yet
    assert all(s["speed"] > 0 and s["eta"] >= 0 for s in running if s["bytes_done"] > 0)
    assert {s["current_file"] for s in running} == {p for p in released if p != "README.md"}
    assert "Downloading" in running[0]["message"] and "of" in running[0]["message"]


def test_interrupted_download_resumes_from_the_partial_file(hub, roots, manager, released):
    hub.cut_after[ELLA_FILE] = [100_000]
    status = run(manager, hub, roots, kinds=["ella"])
    assert status["state"] == "error"
    assert ELLA_FILE in status["error"] and "resume" in status["error"]
    final, part = roots.ella[0] / ELLA_FILE, roots.ella[0] / STAGING / (ELLA_FILE + ".part")
    assert not final.exists() and list_ella_models(roots) == []
    kept = part.stat().st_size
    assert 0 < kept <= 100_000 and part.read_bytes() == released[ELLA_FILE][:kept]

    status = run(manager, hub, roots, kinds=["ella"])
    assert status["state"] == "done", status["error"]
    assert hub.requests_for(ELLA_FILE) == [None, f"bytes={kept}-"]
    assert final.read_bytes() == released[ELLA_FILE] and no_partials(roots.ella[0])


def test_lost_connection_is_resumed_automatically_within_one_start(hub, roots, released):
    hub.cut_after[ELLA_FILE] = [50_000]
    manager = DownloadManager(retries=1, retry_delay=0, chunk_size=16384)
    status = run(manager, hub, roots, kinds=["ella"])
    assert status["state"] == "done", status["error"]
    first, second = hub.requests_for(ELLA_FILE)
    assert first is None and second.startswith("bytes=") and 0 < int(second[6:-1]) <= 50_000
    assert (roots.ella[0] / ELLA_FILE).read_bytes() == released[ELLA_FILE]


def test_interrupted_t5_folder_keeps_finished_files_and_never_appears_half(hub, roots, manager, released):
    hub.cut_after[T5_MODEL] = [20_000]
    status = run(manager, hub, roots, kinds=["t5"])
    assert status["state"] == "error" and "model.safetensors" in status["error"]
    assert not (roots.t5[0] / KNOWN_T5).exists() and list_t5_encoders(roots) == []

    status = run(manager, hub, roots, kinds=["t5"])
    assert status["state"] == "done", status["error"]
    # the small files verified the first time were not fetched again; the weights resumed
    for path in t5_files(released):
        ranges = hub.requests_for(f"{KNOWN_T5}/{path}")
        assert len(ranges) == (2 if path == "model.safetensors" else 1), path
    assert hub.requests_for(T5_MODEL)[1].startswith("bytes=")
    assert {p.name: p.read_bytes() for p in (roots.t5[0] / KNOWN_T5).iterdir()} == t5_files(released)


@pytest.mark.parametrize("path, hash_name", [(ELLA_FILE, "sha256"), (T5_CONFIG, "git blob sha1")])
def test_corrupted_content_is_refused_and_deleted(hub, roots, manager, released, path, hash_name):
    kind = "ella" if path == ELLA_FILE else "t5"
    hub.corrupt.add(path)
    status = run(manager, hub, roots, kinds=[kind])
    assert status["state"] == "error"
    assert f"'{path}'" in status["error"] and "corrupt" in status["error"] and hash_name in status["error"]
    assert not (roots.ella[0] / ELLA_FILE).exists() and not (roots.t5[0] / KNOWN_T5).exists()
    assert no_partials(roots.ella[0])
    assert list_ella_models(roots) == [] and list_t5_encoders(roots) == []

    hub.corrupt.clear()
    assert run(manager, hub, roots, kinds=[kind])["state"] == "done"
    assert len(hub.requests_for(path)) == 2


def test_server_error_is_reported_and_the_next_start_works(hub, roots, manager, released):
    hub.fail[ELLA_FILE] = 500
    status = run(manager, hub, roots, kinds=["ella"])
    assert status["state"] == "error"
    assert f"'{ELLA_FILE}'" in status["error"] and "HTTP 500" in status["error"] and "Download again" in status["error"]
    assert not (roots.ella[0] / ELLA_FILE).exists() and no_partials(roots.ella[0])

    del hub.fail[ELLA_FILE]
    status = run(manager, hub, roots, kinds=["ella"])
    assert status["state"] == "done" and (roots.ella[0] / ELLA_FILE).read_bytes() == released[ELLA_FILE]


def test_a_second_start_while_running_does_not_download_again(hub, roots, manager, released):
    hub.gate = threading.Event()
    first = manager.start(["ella", "t5"], targets(roots), endpoint=hub.url)
    assert first["started"] is True
    assert hub.waiting.wait(10)
    second = manager.start(["ella", "t5"], targets(roots), endpoint=hub.url)
    assert second["started"] is False and second["state"] == "running" and "already running" in second["notice"]
    hub.gate.set()
    assert manager.wait(30)["state"] == "done"
    assert sorted(p for p, _ in hub.downloads) == sorted(p for p in released if p != "README.md")  # each once
    assert len(hub.listings) == 2


def test_a_half_t5_folder_is_never_discoverable(hub, roots, manager):
    hub.gate, hub.gate_paths = threading.Event(), {T5_MODEL}
    manager.start(["t5"], targets(roots), endpoint=hub.url)
    assert hub.waiting.wait(10)
    staged = roots.t5[0] / STAGING / KNOWN_T5
    assert (staged / "config.json").is_file()  # files before the weights are done...
    assert not (roots.t5[0] / KNOWN_T5).exists() and list_t5_encoders(roots) == []  # ...but nothing is found
    assert manager.status()["state"] == "running"
    hub.gate.set()
    assert manager.wait(30)["state"] == "done"
    assert list_t5_encoders(roots) == [KNOWN_T5]


def test_cancel_keeps_the_partial_for_the_next_start(hub, roots, manager, released):
    hub.gate = threading.Event()
    manager.start(["ella"], targets(roots), endpoint=hub.url)
    assert hub.waiting.wait(10)
    manager.cancel()
    hub.gate.set()
    status = manager.wait(30)
    assert status["state"] == "error" and "cancelled" in status["error"]
    assert not (roots.ella[0] / ELLA_FILE).exists()
    assert run(manager, hub, roots, kinds=["ella"])["state"] == "done"


@pytest.mark.parametrize("how", ["argument", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_refuses_with_instructions(hub, roots, manager, monkeypatch, how):
    """huggingface_hub's offline mode is either variable; the refusal names the one that is set."""
    if how != "argument":
        monkeypatch.setenv(how, "1")
    status = manager.start(["ella", "t5"], targets(roots), endpoint=hub.url, offline=how == "argument")
    assert status["started"] is False and status["state"] == "error"
    assert (f"{how} is set" if how != "argument" else "offline mode was requested") in status["error"]
    assert "unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE" in status["error"]
    assert "by hand" in status["error"] and ELLA_FILE in status["error"]
    assert hub.listings == [] and hub.downloads == []
    monkeypatch.delenv(how, raising=False)
    assert run(manager, hub, roots, kinds=["ella"])["state"] == "done"  # refusing left nothing behind


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_reported_and_the_next_start_works(hub, roots, manager, released, monkeypatch):
    part = roots.ella[0] / STAGING / (ELLA_FILE + ".part")
    real_open = os.open

    def open_full(
        path, flags, *mode
    ):  # the partial file opens /dev/full: every write fails with ENOSPC from the kernel
        return real_open("/dev/full", os.O_WRONLY) if Path(path) == part else real_open(path, flags, *mode)

    # (a link from the partial to /dev/full would be refused: it leads the write out of the models folder)
    monkeypatch.setattr(downloads.os, "open", open_full)
    status = run(manager, hub, roots, kinds=["ella"])
    assert status["state"] == "error"
    assert "disk is full" in status["error"] and "Free some space" in status["error"] and ELLA_FILE in status["error"]
    assert not (roots.ella[0] / ELLA_FILE).exists() and list_ella_models(roots) == []

    monkeypatch.setattr(downloads.os, "open", real_open)
    assert run(manager, hub, roots, kinds=["ella"])["state"] == "done"
    assert (roots.ella[0] / ELLA_FILE).read_bytes() == released[ELLA_FILE]


def test_too_little_free_space_is_refused_before_downloading(hub, roots, manager, monkeypatch):
    real = downloads.shutil.disk_usage
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    status = run(manager, hub, roots, kinds=["ella"])
    assert status["state"] == "error" and "Not enough disk space" in status["error"]
    assert hub.downloads == []


def test_verified_files_in_place_are_kept_and_broken_ones_replaced(hub, roots, manager, released):
    assert run(manager, hub, roots)["state"] == "done"
    assert run(manager, hub, roots)["state"] == "done"
    assert len(hub.downloads) == len(released) - 1  # nothing fetched the second time

    broken = roots.t5[0] / KNOWN_T5 / "model.safetensors"
    data = bytearray(broken.read_bytes())
    data[-1] ^= 0xFF
    broken.write_bytes(bytes(data))
    assert run(manager, hub, roots)["state"] == "done"
    assert [p for p, _ in hub.downloads[len(released) - 1 :]] == [T5_MODEL]
    assert broken.read_bytes() == released[T5_MODEL]


def test_hub_download_reads_hf_endpoint_at_call_time(hub, roots, monkeypatch, released):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    manager = DownloadManager(retries=0)
    assert hub_download("ella", roots.ella[0], manager=manager) == roots.ella[0] / ELLA_FILE
    assert hub_download("t5", roots.t5[0], manager=manager) == roots.t5[0] / KNOWN_T5
    assert (roots.ella[0] / ELLA_FILE).read_bytes() == released[ELLA_FILE]
    hub.fail[ELLA_FILE] = 503
    with pytest.raises(ModelFileError, match="HTTP 503"):
        hub_download("ella", roots.ella[0] / "elsewhere", manager=manager)


def test_runtime_downloads_missing_released_models_when_enabled(hub, roots, monkeypatch, released):
    from ella_ext.args import ELLAArgs
    from ella_ext.runtime import ELLARuntime
    from ella_ext.settings import Settings

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    said = []
    runtime = ELLARuntime(Settings(hub_download=True), hub_download=hub_download, report=said.append)
    ella, t5 = runtime.locate_or_download(ELLAArgs(enabled=True, model=KNOWN_ELLA, t5=KNOWN_T5), roots)
    # (the download's own progress lines, every 0.5 s, may come between)
    assert [s for s in said if s is None or s.startswith("ELLA: downloading")] == [
        f"ELLA: downloading {KNOWN_ELLA} from the Hugging Face hub into {roots.ella[0]}",
        None,
        f"ELLA: downloading {KNOWN_T5} from the Hugging Face hub into {roots.t5[0]}",
        None,
    ]
    assert ella.read_bytes() == released[ELLA_FILE] and (t5 / "config.json").read_bytes() == released[T5_CONFIG]


def test_no_server_at_the_endpoint_is_said_in_a_few_words(roots, manager):
    """requests buries the OS error in a pool error's repr; the UI line must say it plainly."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = manager.start(["ella"], targets(roots), endpoint=f"http://127.0.0.1:{port}")
    status = manager.wait(30) if started["started"] else started
    assert status["state"] == "error"
    assert status["error"].startswith(
        f"Could not get the file list of QQGYLab/ELLA from http://127.0.0.1:{port}: "
        "connection refused. Check the network"
    )
    assert "MaxRetryError" not in status["error"] and "Errno" not in status["error"]
