"""ELLA's logger, its console output, and warnings said once per process.

The WebUIs leave Python's logging unconfigured unless the user asks for a log level (A1111, Forge: no root
handler, so only warnings reach the console through logging's last resort; a root at WARNING drops INFO).
ELLA's progress lines ("ELLA: loading the T5 encoder …") are INFO and users look for them on the console, so
`show_on_console` gives ELLA's logger a handler of its own that prints exactly the records the host's
logging would not show: nothing is printed twice, and the records still propagate (pytest's caplog, a
user's log file and a WebUI that does show INFO see them as before).
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("ella")

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def host_shows(logger: logging.Logger, record: logging.LogRecord, ignore: logging.Handler | None = None) -> bool:
    """Whether the handlers `record` propagates to from `logger` other than `ignore` print it, as
    `Logger.callHandlers` decides: logging's last resort (stderr, WARNING) prints where no handler at all is
    reached, `ignore` included."""
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found = True
            if handler is not ignore and record.levelno >= handler.level:
                return True
        if not current.propagate:
            break
        current = current.parent
    last_resort = logging.lastResort
    return not found and last_resort is not None and record.levelno >= last_resort.level


class ConsoleHandler(logging.Handler):
    """Prints ELLA's records the host's logging would drop: INFO to stdout (where the WebUI prints its own
    lines), warnings and errors to stderr. Looks the streams up at each line, so a WebUI (or a test) that
    replaces sys.stdout gets the lines; above a tqdm progress bar, writes through tqdm so the bar stays whole."""

    def __init__(self, logger: logging.Logger):
        super().__init__(logging.INFO)
        self.logger = logger
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return super().filter(record) and not host_shows(self.logger, record, ignore=self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None and getattr(tqdm, "_instances", None):
                tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


def show_on_console(logger: logging.Logger = log) -> ConsoleHandler:
    """Make ELLA's INFO lines reach the console whatever the host's log level (idempotent). A level set on
    ELLA's logger by the user (e.g. `logging.getLogger("ella").setLevel(logging.WARNING)`) is kept."""
    for handler in logger.handlers:
        if isinstance(handler, ConsoleHandler):
            return handler
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    handler = ConsoleHandler(logger)
    logger.addHandler(handler)
    return handler
