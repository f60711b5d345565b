"""Downloads against a hub (or a mirror, or a proxy) that lies, links inside the models folder, odd listings,
and two WebUI processes sharing one models folder. The hub is tests/hub_server.py with its fault knobs; the
two processes are real ones (subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hub_server import HubServer

from ella_ext import downloads
from ella_ext.discovery import KNOWN_T5, ModelRoots, list_ella_models, list_t5_encoders
from ella_ext.downloads import STAGING, DownloadManager
from ella_ext.folder_lock import LOCK_NAME, FolderLock
from ella_ext.hub import ELLA_FILE, NAME_MAX

T5_CONFIG = f"{KNOWN_T5}/config.json"
T5_MODEL = f"{KNOWN_T5}/model.safetensors"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def manager():
    m = DownloadManager(retries=3, retry_delay=0.0, chunk_size=16384)
    yield m
    m.cancel()
    assert m.wait(10)["state"] != "running"


def run(manager, hub, ella_dir: Path, kinds=("ella", "t5")) -> dict:
    started = manager.start(list(kinds), {"ella": ella_dir, "t5": ella_dir / "t5"}, endpoint=hub.url)
    assert started["started"] is True
    status = manager.wait(60)
    assert status["state"] in ("done", "error"), status
    return status


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


# --- 1. a stream longer than the listing --------------------------------------------------------------


@pytest.fixture
def written(monkeypatch):
    """Bytes the download writes, by the name of the file written (Linux: read back from /proc/self/fd)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    by_name: dict[str, int] = {}
    real = downloads._write_all

    def counting(fd, data):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        by_name[name] = by_name.get(name, 0) + len(data)
        real(fd, data)

    monkeypatch.setattr(downloads, "_write_all", counting)
    return by_name


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-content-length"])
@pytest.mark.parametrize("path", [T5_CONFIG, T5_MODEL], ids=["small", "lfs"])
def test_a_stream_longer_than_listed_never_puts_more_than_the_listed_size_on_disk(
    hub, manager, tmp_path, written, path, with_length
):
    listed = len(hub.files[path])
    hub.too_long[path] = (6_000_000, with_length)
    status = run(manager, hub, tmp_path / "models" / "ELLA", kinds=["t5"])
    assert status["state"] == "error"
    assert f"'{path}'" in status["error"] and f"more than the {listed} bytes the file list gives" in status["error"]
    assert ("Content-Length is" in status["error"]) == with_length
    part = path.rsplit("/", 1)[1] + ".part"
    # with a Content-Length nothing at all, without one at most the listed size
    assert written.get(part, 0) == (0 if with_length else listed)
    assert len(hub.requests_for(path)) == 1  # refused, not retried: a lying server lies again
    staging = tmp_path / "models" / "ELLA" / "t5" / STAGING
    assert not list(staging.rglob("*.part")) if staging.exists() else True
    assert list_t5_encoders(ModelRoots.under(tmp_path / "models")) == []

    hub.too_long.clear()  # the honest hub: the next download works
    assert run(manager, hub, tmp_path / "models" / "ELLA", kinds=["t5"])["state"] == "done"


def test_a_resumed_stream_longer_than_the_rest_is_refused_too(hub, manager, tmp_path, written):
    hub.cut_after[T5_MODEL] = [60_000]
    manager.retries = 0
    assert run(manager, hub, tmp_path / "ELLA", kinds=["t5"])["state"] == "error"
    have = written["model.safetensors.part"]
    assert 0 < have < len(hub.files[T5_MODEL])  # kept for the resume
    written.clear()
    hub.too_long[T5_MODEL] = (50_000, False)
    status = run(manager, hub, tmp_path / "ELLA", kinds=["t5"])
    assert status["state"] == "error" and "sends more than" in status["error"]
    assert hub.requests_for(T5_MODEL)[-1] == f"bytes={have}-"
    assert written["model.safetensors.part"] == len(hub.files[T5_MODEL]) - have  # the rest, and not a byte more


# --- 2. links inside the models folder --------------------------------------------------------------------


def test_a_link_inside_an_installed_t5_folder_does_not_lead_writes_out(hub, manager, tmp_path, released):
    ella_dir = tmp_path / "models" / "ELLA"
    assert run(manager, hub, ella_dir, kinds=["t5"])["state"] == "done"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (ella_dir / "t5" / KNOWN_T5 / "sub").symlink_to(outside)
    hub.add(f"{KNOWN_T5}/sub/evil.json", b"x" * 1000)
    status = run(manager, hub, ella_dir, kinds=["t5"])
    assert status["state"] == "error" and "Not writing" in status["error"] and "sub/evil.json" in status["error"]
    assert str(outside) in status["error"] and "Remove the link" in status["error"]
    assert files_under(outside) == {}
    assert hub.requests_for(f"{KNOWN_T5}/sub/evil.json") == []  # refused before any byte was fetched


def test_a_staging_folder_that_is_a_link_is_refused_and_the_state_is_true(hub, manager, tmp_path):
    ella_dir = tmp_path / "models" / "ELLA"
    ella_dir.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (ella_dir / STAGING).symlink_to(outside)
    status = run(manager, hub, ella_dir, kinds=["ella"])
    assert status["state"] == "error" and "Not writing" in status["error"] and STAGING in status["error"]
    assert files_under(outside) == {} and not (ella_dir / ELLA_FILE).exists()
    assert "unexpectedly" not in status["error"]

    (ella_dir / STAGING).unlink()
    status = run(manager, hub, ella_dir, kinds=["ella"])
    assert status["state"] == "done" and (ella_dir / ELLA_FILE).is_file()


@pytest.mark.parametrize("linked", ["models", "models/ELLA", "models/ELLA/t5"])
def test_a_models_folder_that_is_a_link_to_another_disk_keeps_working(hub, manager, tmp_path, released, linked):
    disk = tmp_path / "disk2" / "here"
    disk.mkdir(parents=True)
    link = tmp_path / "webui" / linked
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(disk)
    status = run(manager, hub, tmp_path / "webui" / "models" / "ELLA")
    assert status["state"] == "done", status["error"]
    roots = ModelRoots.under(tmp_path / "webui" / "models")
    assert list_ella_models(roots) and list_t5_encoders(roots)
    on_disk2 = {
        p: b for p, b in released.items() if p != "README.md" and (p.startswith(KNOWN_T5) or linked != "models/ELLA/t5")
    }
    assert sum(files_under(disk).values()) == sum(map(len, on_disk2.values()))  # all of it went to the other disk


# --- 3. odd listings ---------------------------------------------------------------------------------------

ODD = {
    "nul": (lambda hub: hub.add(f"{KNOWN_T5}/a\x00b.json", b"{}"), "a\\x00b.json", "control character U+0000"),
    "long name": (
        lambda hub: hub.add(f"{KNOWN_T5}/{'n' * 300}.json", b"{}"),
        "nnnn",
        f"a name of 305 bytes (at most {NAME_MAX} fit)",
    ),
    "negative size": (lambda hub: hub.listed_size.__setitem__(T5_CONFIG, -5), "config.json", "negative size (-5)"),
    "file and folder": (lambda hub: hub.add(f"{T5_CONFIG}/x", b"{}"), "config.json'", "both as a file and as a folder"),
    "partial's name": (
        lambda hub: hub.add(f"{T5_CONFIG}.part", b"{}"),
        "config.json.part",
        "whose partial download takes that name",
    ),
    "case": (lambda hub: hub.add(f"{KNOWN_T5}/Config.json", b"{}"), "onfig.json", "differ only in case"),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_listings_are_refused_with_the_name_and_what_is_wrong(hub, manager, tmp_path, case):
    make, name, problem = ODD[case]
    make(hub)
    status = run(manager, hub, tmp_path / "ELLA", kinds=["t5"])
    assert status["state"] == "error"
    assert "is refused: it lists" in status["error"] and name in status["error"] and problem in status["error"]
    assert "unexpectedly" not in status["error"] and "corrupt" not in status["error"]
    assert hub.downloads == []  # refused on the list, before any file is fetched
    assert len(status["error"]) < 700  # a 300-character name is shown shortened


# --- 4. two WebUI processes on one models folder ------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    from ella_ext.downloads import hub_download
    said = []

    def on_status(st):
        if st["phase"] == "waiting" and not any(m.startswith("Waiting") for m in said):
            print("waiting", flush=True)  # tells the test this process found the folder locked
        said.append(st["message"])

    try:
        path = hub_download("t5", sys.argv[1], endpoint=sys.argv[2], poll=0.05, on_status=on_status)
        print(json.dumps({"state": "done", "path": str(path), "said": said}))
    except Exception as exc:
        print(json.dumps({"state": "error", "error": str(exc), "said": said}))
""")


def child(target: Path, hub: HubServer) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), hub.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def test_two_processes_sharing_a_models_folder_fetch_each_file_once(hub, tmp_path):
    target = tmp_path / "models" / "ELLA" / "t5"
    hub.gate = threading.Event()
    hub.gate_paths = {T5_MODEL}
    hub.gate_timeout = 120  # the first holds the folder until the second, started on a loaded machine, waits
    first = child(target, hub)
    assert hub.waiting.wait(30)  # the first one is streaming the weights
    holder = FolderLock(target).holder()
    assert holder["pid"] == first.pid and holder["host"] and holder["started"] <= time.time()
    second = child(target, hub)
    assert second.stdout.readline().strip() == "waiting"  # the second found the folder locked by the first
    hub.gate.set()
    outs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in (first, second)]
    assert [o["state"] for o in outs] == ["done", "done"], outs
    assert outs[0]["path"] == outs[1]["path"] == str(target / KNOWN_T5)
    waited = [m for m in outs[1]["said"] if m.startswith("Waiting")]
    assert waited and f"PID {first.pid}" in waited[0] and str(target.resolve()) in waited[0]
    served = [p for p, _ in hub.downloads]
    assert sorted(served) == sorted(set(served))  # each file once: the second found them installed
    assert FolderLock(target).holder() is None  # released: the record is cleared


def test_a_lock_left_by_a_killed_process_does_not_block(hub, manager, tmp_path):
    target = tmp_path / "ELLA"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom ella_ext.folder_lock import FolderLock\n"
            "lock = FolderLock(sys.argv[1]); assert lock.try_acquire(); print('held', flush=True); time.sleep(120)",
            str(target / "t5"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not FolderLock(target / "t5").try_acquire()
        assert FolderLock(target / "t5").holder()["pid"] == holder.pid
        started = manager.start(["t5"], {"t5": target / "t5"}, endpoint=hub.url)
        assert started["started"]
        deadline = time.monotonic() + 10
        while manager.status()["phase"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert f"PID {holder.pid}" in manager.status()["message"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: no clean-up runs in the holder
        holder.wait()
    t0 = time.monotonic()
    status = manager.wait(30)
    assert status["state"] == "done", status["error"]
    assert time.monotonic() - t0 < 5
    assert (target / "t5" / LOCK_NAME).exists()  # the file stays; only the OS lock mattered


def test_waiting_for_another_process_can_be_cancelled(hub, manager, tmp_path):
    lock = FolderLock(tmp_path / "ELLA")
    assert lock.try_acquire()
    try:
        manager.start(["ella"], {"ella": tmp_path / "ELLA"}, endpoint=hub.url)
        deadline = time.monotonic() + 10
        while manager.status()["phase"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        manager.cancel()
        status = manager.wait(10)
        assert status["state"] == "error" and "cancelled" in status["error"]
        assert hub.downloads == [] and hub.listings == []
    finally:
        lock.release()


def test_a_folder_reached_through_a_link_shares_the_lock(tmp_path):
    real = tmp_path / "disk2"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    a, b = FolderLock(real), FolderLock(tmp_path / "link")
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert b.try_acquire()
    b.release()
