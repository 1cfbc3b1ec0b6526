"""One line per event: a client library's error (nats-py logs each lost connection with a traceback)
becomes one line naming the exception, unless EWS_LOG_LEVEL=DEBUG. The filter doing it leaves our own
records as our code wrote them: where our code logs a traceback (a command's unexpected failure in the
commands service, say) it is kept. An unhandled exception in a web request is logged by the gateway-api
itself on one line at ERROR with its traceback at DEBUG only (issue 12, item 2; tested with the real app in
services/gateway-api/tests/test_errors.py); here, that this convention survives the process's logging."""

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


def test_own_records_are_not_rewritten_and_debug_keeps_tracebacks(captured) -> None:
    out = captured("INFO")
    try:
        _boom()
    except ConnectionResetError:
        logging.getLogger("ews.commands").exception("command c1: unexpected error")
    assert "Traceback" in out.getvalue()  # the library filter is not a blanket traceback remover
    out = captured("DEBUG")
    try:
        _boom()
    except ConnectionResetError:
        logging.getLogger("nats.aio.client").error("nats: encountered error", exc_info=True)
    assert "Traceback" in out.getvalue()


def test_an_unhandled_request_error_is_one_line_with_its_traceback_at_debug(captured) -> None:
    """The gateway-api's convention for an unhandled exception in a request (app.unexpected_error): one
    ERROR line naming the request and the exception, the traceback in a DEBUG record."""

    def log_it() -> None:
        try:
            _boom()
        except ConnectionResetError as exc:
            log = logging.getLogger("ews.gateway-api")
            log.error("GET /api/v1/devices: unhandled %s: %s", type(exc).__name__, exc)
            log.debug("GET /api/v1/devices: traceback of the %s above", type(exc).__name__, exc_info=exc)

    out = captured("INFO")
    log_it()
    text = out.getvalue()
    assert text.count("\n") == 1 and "Traceback" not in text, text
    assert "ERROR" in text and "unhandled ConnectionResetError: connection reset by peer" in text
    out = captured("DEBUG")
    log_it()
    text = out.getvalue()
    assert "Traceback" in text and "in _boom" in text and text.count("ERROR") == 1
