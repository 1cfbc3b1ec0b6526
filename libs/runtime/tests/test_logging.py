"""One line per event: a client library's error (nats-py logs each lost connection with a traceback)
becomes one line naming the exception, unless EWS_LOG_LEVEL=DEBUG; our own tracebacks are kept."""

from __future__ import annotations

import io
import logging

import pytest
from ews_runtime.cli import _configure_logging


@pytest.fixture
def captured():
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def configure(level: str) -> io.StringIO:
        root.handlers = []
        _configure_logging(level, "test")
        stream = io.StringIO()
        root.handlers[0].setStream(stream)
        return stream

    yield configure
    root.handlers, root.level = saved


def _boom() -> None:
    raise ConnectionResetError("connection reset by peer")


@pytest.mark.parametrize("name", ["nats.aio.client", "redis.asyncio"])
def test_library_errors_are_one_line(captured, name: str) -> None:
    out = captured("INFO")
    try:
        _boom()
    except ConnectionResetError:
        logging.getLogger(name).error("nats: encountered error", exc_info=True)
    text = out.getvalue()
    assert text.count("\n") == 1, text
    assert "nats: encountered error: ConnectionResetError: connection reset by peer" in text
    assert "Traceback" not in text


def test_own_tracebacks_and_debug_are_kept(captured) -> None:
    out = captured("INFO")
    try:
        _boom()
    except ConnectionResetError:
        logging.getLogger("ews.poller").exception("unexpected")
    assert "Traceback" in out.getvalue()
    out = captured("DEBUG")
    try:
        _boom()
    except ConnectionResetError:
        logging.getLogger("nats.aio.client").error("nats: encountered error", exc_info=True)
    assert "Traceback" in out.getvalue()
