"""Agent Scheduler (job queue): a queued task that ELLA stopped records ELLA's reason.

Its queue API maps a dict of named script arguments onto a list by the signature of the script's `process`
(scripts/ella.py gives it ELLA's arguments by name, `ELLAArgs.script_signature`). A task queued from the UI
runs through the WebUI's gradio wrapper, which turns ELLA's error into HTML that Agent Scheduler does not
keep: the task is FAILED with an empty result. ELLA remembers the reason of a job that fails while a queued
task runs and, when Agent Scheduler reports that task finished as failed without a result, writes the reason
into the task's `result` (what its history and task API return, as it does itself for API-queued tasks).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from ..logs import log
from .base import Companion


def task_runner() -> Any:
    """Agent Scheduler's running TaskRunner, if the extension is loaded and has made it."""
    module = sys.modules.get("agent_scheduler.task_runner")
    return getattr(getattr(module, "TaskRunner", None), "instance", None)


class AgentScheduler(Companion):
    name = "Agent Scheduler"

    def __init__(self):
        self._failure: Optional[tuple[str, str]] = None  # (task id, ELLA's reason) of the last failed job
        self._runner: Any = None  # the TaskRunner our callback is registered on (a reload makes a new one)

    def job_failed(self, p: Any, reason: str) -> None:
        runner = task_runner()
        task_id = getattr(runner, "current_task_id", None) if runner is not None else None
        if not task_id:
            return
        self._failure = (str(task_id), reason)
        if self._runner is not runner:
            runner.on_task_finished(self._task_finished)
            self._runner = runner

    def _task_finished(self, task_id: str, status: Any = None, task: Any = None, **_: Any) -> None:
        failure, self._failure = self._failure, None
        if failure is None or failure[0] != str(task_id):
            return
        if str(getattr(status, "value", status)) != "failed" or task is None or getattr(task, "result", None):
            return  # done, requeued, or Agent Scheduler kept a reason itself (API-queued tasks)
        db = sys.modules.get("agent_scheduler.db")
        manager = getattr(db, "task_manager", None)
        if manager is None:
            return
        task.result = failure[1]
        manager.update_task(task)
        log.info("ELLA: recorded why Agent Scheduler task %s failed: %s", task_id, failure[1])
