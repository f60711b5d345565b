"""ELLA's progress lines reach the console however the WebUI configured logging, and never twice."""

from __future__ import annotations

import io
import logging

import pytest

from ella_ext.logs import ConsoleHandler, log, show_on_console

LINE = "ELLA: loading the T5 encoder flan-tiny (2.8 GB on disk) in fp16 to cpu"
WARNING = "ELLA: T5 in fp16 produced inf/NaN for a prompt; re-encoding it in fp32."


@pytest.fixture
def host(monkeypatch):
    """configure(handler): the root logger at WARNING with only `handler` (pytest adds its capture handlers to
    the root for each test phase, so they are taken off inside the test), a fresh 'ella' logger, then ELLA's
    setup and one INFO and one WARNING line."""
    monkeypatch.setattr(log, "level", logging.NOTSET)
    monkeypatch.setattr(log, "handlers", [])

    def configure(handler=None, *, keep_pytest=False):
        if not keep_pytest:
            monkeypatch.setattr(logging.root, "handlers", [])
        monkeypatch.setattr(logging.root, "level", logging.WARNING)
        if handler is not None:
            logging.root.addHandler(handler)
        show_on_console()
        log.info(LINE)
        log.warning(WARNING)

    return configure


def test_default_webui_logging_unconfigured_root(host, capsys):
    """A1111 and Forge without --loglevel: no root handler, root at WARNING. INFO goes to stdout through ELLA's
    handler; the warning once, on stderr (ELLA's handler stands in for logging's last resort, which it disables)."""
    host()
    out, err = capsys.readouterr()
    assert out == LINE + "\n"
    assert err.count(WARNING) == 1 and LINE not in err


def test_root_handler_at_warning_gets_warnings_and_ella_prints_the_rest(host, capsys):
    """A console handler at WARNING on the root (a WebUI that configures logging that way)."""
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.setLevel(logging.WARNING)
    host(handler)
    out, err = capsys.readouterr()
    assert out == LINE + "\n" and err == ""
    assert console.getvalue() == WARNING + "\n"


def test_root_handler_that_shows_info_prints_everything_once(host, capsys):
    """`--loglevel INFO` (a root handler without a level of its own): the WebUI's handler shows ELLA's lines
    with its format, and ELLA's handler stays quiet."""
    console = io.StringIO()
    host(logging.StreamHandler(console))
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert console.getvalue() == f"{LINE}\n{WARNING}\n"


def test_records_still_propagate_and_setup_is_idempotent(host, caplog, capsys):
    """caplog's handler on the root shows everything: ELLA's handler prints nothing and caplog gets each line."""
    host(keep_pytest=True)
    show_on_console()
    assert sum(isinstance(h, ConsoleHandler) for h in log.handlers) == 1
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.INFO, LINE), (logging.WARNING, WARNING)]
    assert capsys.readouterr().out == ""


def test_a_level_set_by_the_user_is_kept(host, capsys):
    log.setLevel(logging.WARNING)
    host()
    out, _ = capsys.readouterr()
    assert out == ""


def test_the_extension_shows_its_lines(webui):
    """Loading the script (what the WebUI does) installs the handler on ELLA's logger."""
    assert any(isinstance(h, ConsoleHandler) for h in log.handlers)
    assert log.getEffectiveLevel() <= logging.INFO
