"""With the product's logging configuration, a faulty device costs no pymodbus log line (pymodbus logs
every failed transaction at ERROR with a hex dump of the last frames): the FieldbusError says it all, and
the services log it once per fault. At DEBUG, pymodbus's frame traces are back."""

import asyncio
import logging

import pytest
from ews_fieldbus import FieldbusError, ModbusGateway
from ews_runtime.cli import _configure_logging

NOISY = ("pymodbus", "uvicorn.access", "faststream.access", "httpx", "asyncio")


@pytest.fixture
def product_logging():
    """Apply ``_configure_logging`` and undo it afterwards (levels and root handlers)."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in NOISY}
    saved_root = (root.level, list(root.handlers))
    yield _configure_logging
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    root.setLevel(saved_root[0])
    for handler in root.handlers[:]:
        if handler not in saved_root[1]:
            root.removeHandler(handler)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with bytes that are no Modbus TCP frame (protocol id 0xffff)."""
    try:
        while await reader.read(256):
            writer.write(b"\x00\x01\xff\xff\x00\x05\x01\x03\x02\x00\x07")
            await writer.drain()
    finally:
        writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts the connection and never answers."""
    try:
        while await reader.read(256):
            pass
    finally:
        writer.close()


async def _closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hangs up on the first request."""
    await reader.read(256)
    writer.close()


async def _fail_three_times(handler) -> list[str]:
    tasks: list[asyncio.Task] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())
        try:
            await handler(reader, writer)
        except ConnectionError:
            pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateway = ModbusGateway("127.0.0.1", port, timeout=0.3, retries=0, name="gw-test")
    errors = []
    try:
        for _ in range(3):
            with pytest.raises(FieldbusError) as caught:
                await gateway.read(1, 3, 0, 2)
            errors.append(str(caught.value))
    finally:
        await gateway.close()
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)  # the client hung up
    return errors


@pytest.mark.parametrize("handler", [_garbage, _silent, _closes], ids=["garbage", "silent", "closes"])
@pytest.mark.parametrize("level", ["INFO", "WARNING"])
async def test_no_pymodbus_line_for_a_faulty_device(product_logging, caplog, handler, level):
    product_logging(level, "poller")
    errors = await _fail_three_times(handler)
    assert all(e.startswith("unit 1 FC3 @0+2: ") or "cannot connect" in e for e in errors), errors
    noisy = [r for r in caplog.records if r.name.startswith("pymodbus") and r.levelno >= logging.WARNING]
    assert noisy == [], [f"{r.levelname} {r.getMessage()}" for r in noisy]


async def test_pymodbus_speaks_at_debug(product_logging, caplog):
    product_logging("DEBUG", "poller")
    await _fail_three_times(_garbage)
    pymodbus = [r.getMessage() for r in caplog.records if r.name.startswith("pymodbus")]
    assert any(m.startswith("send: ") for m in pymodbus), pymodbus


async def test_no_pymodbus_line_for_a_refused_connection(product_logging, caplog):
    product_logging("INFO", "poller")
    server = await asyncio.start_server(_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there any more
    gateway = ModbusGateway("127.0.0.1", port, timeout=0.3, retries=0, name="gw-test")
    try:
        with pytest.raises(FieldbusError, match=f"gw-test: cannot connect to 127.0.0.1:{port}"):
            await gateway.read(1, 3, 0, 2)
    finally:
        await gateway.close()
    noisy = [r for r in caplog.records if r.name.startswith("pymodbus") and r.levelno >= logging.WARNING]
    assert noisy == [], [f"{r.levelname} {r.getMessage()}" for r in noisy]
