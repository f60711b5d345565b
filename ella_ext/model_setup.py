"""Getting the models onto disk: what is installed, what is missing, the Download action and the Check.

One object, `ModelSetup`, answers for both faces of it: the accordion's first-run row (a one-line
status, a Download button with a progress bar, a Check button) and the `/ella/v1` API
(`ella_ext/api.py`). Downloads go through the process-wide `downloads.MANAGER`, so a click in the UI,
a call to the API and a job with the auto-download setting never fetch the same files twice at once.
Nothing here downloads unless asked.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from .discovery import KNOWN_ELLA, KNOWN_T5, ModelRoots, list_ella_models, list_t5_encoders
from .downloads import MANAGER, DownloadManager
from .hub import ELLA_FILE, KINDS, REPO, offline_message, offline_reason
from .model_check import CheckReport, check_models

WHAT = {"ella": f"the ELLA model ({ELLA_FILE})", "t5": f"the T5 encoder ({KNOWN_T5})"}
README_MODELS = "README, section Models"


class ModelSetup:
    def __init__(
        self, roots: Callable[[], ModelRoots], manager: Optional[DownloadManager] = None, endpoint: Optional[str] = None
    ):
        self._roots = roots
        self.manager = manager or MANAGER
        self.endpoint = endpoint  # None: HF_ENDPOINT, else huggingface_hub's default
        self._repair: set[str] = set()  # kinds whose released files the last Check found damaged
        self._repair_found_at = 0.0

    # --- what is on disk ------------------------------------------------------------------------

    def roots(self) -> ModelRoots:
        return self._roots()

    def installed(self) -> dict[str, list[str]]:
        roots = self.roots()
        return {"models": list_ella_models(roots), "t5": list_t5_encoders(roots)}

    def missing(self, installed: Optional[dict] = None) -> list[str]:
        """The kinds with nothing installed: "ella" (no ELLA model file), "t5" (no T5 folder)."""
        installed = installed or self.installed()
        return [kind for kind, key in (("ella", "models"), ("t5", "t5")) if not installed[key]]

    def to_download(self, installed: Optional[dict] = None) -> list[str]:
        """What the Download button fetches: the missing kinds, and those the last Check found damaged (the
        download replaces a file that does not match the hub)."""
        missing, repair = self.missing(installed), self._repairs()
        return [kind for kind in KINDS if kind in missing or kind in repair]

    def _repairs(self) -> set[str]:
        status = self.manager.status()
        if status["state"] == "done" and (status["finished_at"] or 0) >= self._repair_found_at:
            self._repair -= set(status["kinds"])  # replaced by a verified download since the Check
        return set(self._repair)

    def targets(self) -> dict[str, Path]:
        """Where downloads go: the first ELLA folder and the first T5 folder (the defaults under models/ELLA)."""
        roots = self.roots()
        return {"ella": roots.ella[0], "t5": roots.t5[0]}

    # --- the download ---------------------------------------------------------------------------

    def start_download(self, kinds: Optional[Sequence[str]] = None) -> dict:
        """Start fetching `kinds` (default: `to_download()`). Returns the download status plus `started`,
        and `notice` where nothing new started (one already runs, or nothing is missing)."""
        if kinds is None:
            kinds = self.to_download()
            if not kinds:
                return dict(
                    self.manager.status(),
                    started=False,
                    notice="The ELLA model and the T5 encoder are installed; nothing to download.",
                )
        return self.manager.start(list(kinds), self.targets(), endpoint=self.endpoint)

    def download_status(self) -> dict:
        return self.manager.status()

    def wait(self, timeout: float) -> dict:
        return self.manager.wait(timeout)

    def cancel_download(self) -> dict:
        return self.manager.cancel()

    def follow_download(self, kinds: Optional[Sequence[str]] = None, poll: float = 0.5) -> Iterator[dict]:
        """Start (or join) a download and yield its status every `poll` seconds, ending with the final one."""
        status = self.start_download(kinds)
        yield status
        if status["state"] == "running":
            yield from self.manager.follow(poll)

    # --- the check ------------------------------------------------------------------------------

    def check(self, model: Optional[str], t5: Optional[str], *, timeout: float = 10.0) -> CheckReport:
        """The Check report for the named files; an empty name means what a job would use (the first one
        installed, else the released one). Reads and hashes the files the first time (about 10 s for the
        2.8 GB T5): call it off the UI thread."""
        if not model or not t5:
            installed = self.installed()
            model = model or (installed["models"][0] if installed["models"] else "")
            t5 = t5 or (installed["t5"][0] if installed["t5"] else "")
        report = check_models(model, t5, self.roots(), endpoint=self.endpoint, timeout=timeout)
        self._repair = {item.repair for item in report.items if not item.ok and item.repair}
        self._repair_found_at = time.time()
        return report

    # --- what the API lists ---------------------------------------------------------------------

    def describe(self) -> dict:
        installed = self.installed()
        targets = self.targets()
        roots = self.roots()
        reason = offline_reason()
        return {
            "models": installed["models"],
            "t5": installed["t5"],
            "missing": self.missing(installed),
            "to_download": self.to_download(installed),
            "folders": {"ella": [str(p) for p in roots.ella], "t5": [str(p) for p in roots.t5]},
            "download_targets": {k: str(v) for k, v in targets.items()},
            "released": {"ella": KNOWN_ELLA, "t5": KNOWN_T5, "repo": REPO},
            "downloads_allowed": reason is None,
            "offline_reason": reason,
            "download": self.download_status(),
        }

    # --- the accordion's status line ------------------------------------------------------------

    def status_html(self, status: Optional[dict] = None, installed: Optional[dict] = None) -> str:
        """One line for the accordion: the download's progress while one runs, else what is missing and the
        fix, else the outcome of a download that just ended, else nothing (everything installed)."""
        status = status if status is not None else self.download_status()
        if status["state"] == "running":  # every 0.5 s while the Download button follows it: no disk scan
            return _progress_html(status)
        if status.get("notice"):  # a click that started nothing: say why
            return _line(status["notice"], "done")
        missing = self.missing(installed)
        repair = self._repairs()
        if not missing and repair:
            names = " and ".join(WHAT[k] for k in KINDS if k in repair)
            return _line(
                f"Check found {names} damaged (see the report). Press Download to replace "
                f"{'them' if len(repair) > 1 else 'it'} with the verified released files.",
                "error",
            )
        if status["state"] == "error" and missing:
            return _line(f"Download failed: {status['error']} Press Download to try again (it resumes).", "error")
        if missing:
            targets = self.targets()
            needed = " and ".join(f"{WHAT[k]} in '{targets[k]}'" for k in missing)
            reason = offline_reason()
            if reason:
                return _line(f"ELLA needs {needed}. {offline_message(reason)}", "missing")
            return _line(
                f"ELLA needs {needed}. Press Download to fetch {'them' if len(missing) > 1 else 'it'} "
                f"from {REPO} on the Hugging Face hub, or put {'them' if len(missing) > 1 else 'it'} "
                f"there by hand ({README_MODELS}).",
                "missing",
            )
        if status["state"] == "done" and status.get("finished_at") and time.time() - status["finished_at"] < 3600:
            return _line(f"{status['message']} ELLA is ready.", "done")  # the manager's "Downloaded and verified: ..."
        return ""


def _line(text: str, kind: str) -> str:
    color = "var(--error-text-color, #c00)" if kind == "error" else "var(--body-text-color)"
    return f'<div class="ella-models-status ella-{kind}" style="color: {color}">{html.escape(text)}</div>'


def _progress_html(status: dict) -> str:
    total, done = status["bytes_total"], status["bytes_done"]
    fraction = min(done / total, 1.0) if total else 0.0
    percent = f"{fraction * 100:.0f}%" if total else ""
    return (
        '<div class="ella-models-status ella-running">'
        '<div style="height: 0.6em; border-radius: 0.3em; background: var(--background-fill-secondary, #ddd); '
        'overflow: hidden; margin: 0.2em 0">'
        f'<div class="ella-progress-bar" style="width: {fraction * 100:.1f}%; height: 100%; '
        'background: var(--color-accent, #f97316)"></div></div>'
        f"<span>{html.escape(percent + ' ' if percent else '')}{html.escape(status['message'])}</span></div>"
    )
