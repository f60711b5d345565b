"""ELLA's logger, and warnings said once per process."""

from __future__ import annotations

import logging

log = logging.getLogger("ella")

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
