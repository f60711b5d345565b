"""ELLA's activity where the user looks while a job runs: the WebUI's progress text; and the interrupt flags."""

from __future__ import annotations

from typing import Any, Optional


class ProgressText:
    """ELLA's activity as the WebUI's progress text: `shared.state.textinfo`, which the UI shows before the
    progress bar's numbers and `/sdapi/v1/progress` returns (same in A1111, Forge and reForge).

    None puts back the text the WebUI had before ELLA's first line, so ELLA's words never outlive its work.
    """

    _UNSET = object()

    def __init__(self):
        self._before: Any = self._UNSET

    def __call__(self, text: Optional[str]) -> None:
        try:
            from modules import shared
        except ImportError:  # the library used outside a WebUI
            return
        state = getattr(shared, "state", None)
        if state is None:
            return
        if text is None:
            if self._before is not self._UNSET:
                state.textinfo, self._before = self._before, self._UNSET
            return
        if self._before is self._UNSET:
            self._before = getattr(state, "textinfo", None)
        state.textinfo = text


def interrupted() -> bool:
    """Whether the user interrupted or skipped the job (or asked to stop after this image)."""
    from modules import shared

    st = shared.state
    return bool(st.interrupted or st.skipped or getattr(st, "stopping_generation", False))
