"""The download's status as the UI and the API show it: numbers and the one line of text they read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class DownloadStatus:
    state: str = "idle"
    phase: str = ""
    kinds: list = field(default_factory=list)
    endpoint: str = ""
    current_file: Optional[str] = None
    files_done: int = 0
    files_total: int = 0
    bytes_base: int = 0  # bytes of the files finished in this job
    bytes_current: int = 0  # bytes of the current file on disk
    bytes_total: int = 0
    transferred: int = 0
    transfer_started: Optional[float] = None  # time.monotonic() of the first byte, and of the end
    transfer_ended: Optional[float] = None
    message: str = ""
    error: Optional[str] = None
    paths: dict = field(default_factory=dict)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None

    def to_dict(self) -> dict:
        done = self.bytes_base + self.bytes_current
        elapsed = (self.transfer_ended or time.monotonic()) - self.transfer_started if self.transfer_started else 0.0
        speed = self.transferred / elapsed if elapsed > 0 else 0.0
        remaining = max(self.bytes_total - done, 0)
        eta = 0.0 if self.state == "done" else remaining / speed if self.state == "running" and speed > 0 else None
        message = self.message
        name = (self.current_file or "").rsplit("/", 1)[-1]
        if self.state == "running":
            message = {
                "listing": "Asking the hub for the file list...",
                "verifying": f"Checking {name}...",
                "installing": "Moving the verified files into place...",
            }.get(self.phase, message)
        if self.state == "running" and self.phase == "downloading" and name:
            message = (
                f"Downloading {name} (file {self.files_done + 1} of {self.files_total}, "
                f"{human_size(done)} of {human_size(self.bytes_total)}"
                + (f", {human_size(speed)}/s" if speed else "")
                + (
                    f", about {eta / 60:.0f} min left"
                    if eta and eta >= 60
                    else f", about {eta:.0f} s left"
                    if eta
                    else ""
                )
                + ")"
            )
        return {
            "state": self.state,
            "phase": self.phase,
            "kinds": list(self.kinds),
            "endpoint": self.endpoint,
            "current_file": self.current_file,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": done,
            "bytes_total": self.bytes_total,
            "speed": speed,
            "eta": eta,
            "message": message,
            "error": self.error,
            "paths": dict(self.paths),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
