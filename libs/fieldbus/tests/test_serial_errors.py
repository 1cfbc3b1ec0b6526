"""A serial line that does not open says which port, with which settings, and why, in one line (pymodbus
says "Failed to connect", or lets termios's bare "error: (22, 'Invalid argument')" through)."""

import os
import pty
import termios

import pytest
import serial
from ews_fieldbus import FieldbusError, ModbusGateway

SETTINGS = "9600 baud, 8 data bits, parity E, 1 stop bit"


def line(port: str, **kwargs) -> ModbusGateway:
    options = {"baudrate": 9600, "parity": "E", "stopbits": 1, "bytesize": 8, **kwargs}
    return ModbusGateway(None, transport="rtu", name="gw-b", serial_port=port, timeout=0.2, **options)


async def failure(gateway: ModbusGateway) -> str:
    try:
        with pytest.raises(FieldbusError) as caught:
            await gateway.read(1, 3, 0, 2)
    finally:
        await gateway.close()
    text = str(caught.value)
    assert "\n" not in text
    return text


async def test_a_missing_port_is_named(tmp_path):
    port = str(tmp_path / "ttyUSB7")
    assert await failure(line(port)) == (
        f"gw-b: cannot connect to serial port {port} ({SETTINGS}): "
        "[Errno 2] No such file or directory — no such serial port"
    )


@pytest.mark.parametrize(
    "refusal",
    [
        termios.error(22, "Invalid argument"),  # tcsetattr in pyserial's open: what pymodbus let through
        serial.SerialException(22, "could not open port: [Errno 22] Invalid argument"),
        OSError(22, "Invalid argument"),
    ],
    ids=["termios", "serialexception", "oserror"],
)
async def test_a_refused_setting_names_the_port_and_the_settings(monkeypatch, refusal):
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append((url, kwargs))
        raise refusal

    monkeypatch.setattr(serial, "serial_for_url", refuse)
    assert await failure(line("/dev/ttyUSB0")) == (
        f"gw-b: cannot connect to serial port /dev/ttyUSB0 ({SETTINGS}): "
        "[Errno 22] Invalid argument — the port or its driver refuses one of these settings"
    )
    # the probe opened the port the way pymodbus does (same settings, exclusive), then tried the one
    # setting that is not the default (parity N) alone: refused too, so no setting is named
    settings = [
        {k: kwargs[k] for k in ("baudrate", "parity", "stopbits", "bytesize", "exclusive")}
        for _, kwargs in calls
    ]
    assert {url for url, _ in calls} == {"/dev/ttyUSB0"}
    assert settings[-2:] == [
        {"baudrate": 9600, "parity": "E", "stopbits": 1, "bytesize": 8, "exclusive": True},
        {"baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8, "exclusive": True},
    ]


@pytest.mark.parametrize(
    ("options", "refused", "settings"),
    [
        ({"parity": "O"}, "parity O", "9600 baud, 8 data bits, parity O, 1 stop bit"),
        ({"parity": "N", "stopbits": 2}, "2 stop bits", "9600 baud, 8 data bits, parity N, 2 stop bits"),
        ({"parity": "N", "bytesize": 7}, "7 data bits", "9600 baud, 7 data bits, parity N, 1 stop bit"),
        ({"parity": "N", "baudrate": 14400}, "14400 baud", "14400 baud, 8 data bits, parity N, 1 stop bit"),
    ],
    ids=["parity", "stopbits", "bytesize", "baudrate"],
)
async def test_the_refused_setting_is_named(monkeypatch, options, refused, settings):
    """A driver that refuses one setting: each other value tried alone (and closed at once) finds it."""
    bad = {"parity": "O", "stopbits": 2, "bytesize": 7, "baudrate": 14400}
    opened = []

    class Port:
        def __init__(self, url, **kwargs):
            self.kwargs = kwargs
            self.timeout = self.write_timeout = None

        def close(self):
            opened.remove(self)

    def driver(url, *args, **kwargs):
        if any(kwargs.get(k) == v for k, v in bad.items()):
            raise termios.error(22, "Invalid argument")
        port = Port(url, **kwargs)
        opened.append(port)
        return port

    monkeypatch.setattr(serial, "serial_for_url", driver)
    gateway = line("/dev/ttyUSB0", **options)
    with pytest.raises(FieldbusError) as caught:
        await gateway._ensure_connected()
    assert str(caught.value) == (
        f"gw-b: cannot connect: serial port /dev/ttyUSB0 refuses {refused} ({settings}): "
        "[Errno 22] Invalid argument"
    )
    assert opened == []  # every port opened to find it was closed again


async def test_permission_denied_suggests_the_dialout_group(monkeypatch):
    def denied(url, *args, **kwargs):
        raise serial.SerialException(13, f"could not open port {url}: [Errno 13] Permission denied: {url!r}")

    monkeypatch.setattr(serial, "serial_for_url", denied)
    text = await failure(line("/dev/ttyUSB0", parity="N", stopbits=2, baudrate=19200))
    assert text.startswith(
        "gw-b: cannot connect to serial port /dev/ttyUSB0 (19200 baud, 8 data bits, parity N, 2 stop bits): "
        "[Errno 13] Permission denied — "
    ), text
    assert "dialout" in text


async def test_a_port_in_use(monkeypatch):
    def locked(url, *args, **kwargs):
        raise serial.SerialException(
            11, f"Could not exclusively lock port {url}: [Errno 11] Resource temporarily unavailable"
        )

    monkeypatch.setattr(serial, "serial_for_url", locked)
    text = await failure(line("/dev/ttyUSB0"))
    assert text.endswith("— the port is in use by another program"), text


async def test_an_invalid_setting_pyserial_rejects(monkeypatch):
    def invalid(url, *args, **kwargs):
        raise ValueError("Invalid parity: 'E'")

    monkeypatch.setattr(serial, "serial_for_url", invalid)
    assert await failure(line("/dev/ttyUSB0")) == (
        f"gw-b: cannot connect to serial port /dev/ttyUSB0 ({SETTINGS}): "
        "Invalid parity: 'E' — one of these settings is not valid for this port"
    )


@pytest.fixture
def pty_port():
    """A pseudo-terminal: a serial port without parity (Linux drops PARENB, then refuses the next
    tcsetattr with EINVAL, like a USB adapter that cannot do parity E)."""
    controller, device = pty.openpty()
    yield os.ttyname(device)
    os.close(device)
    os.close(controller)


async def test_a_pty_refusing_parity_names_the_port_and_the_settings(pty_port):
    gateway = line(pty_port)
    expected = f"gw-b: cannot connect: serial port {pty_port} refuses parity E ({SETTINGS}): [Errno 22] Invalid argument"
    try:
        for _ in range(3):  # and again: the port pymodbus opened before failing is not left locked
            with pytest.raises(FieldbusError) as caught:
                await gateway.read(1, 3, 0, 2)
            assert str(caught.value) == expected
    finally:
        await gateway.close()


async def test_a_port_that_opens_is_no_open_error(pty_port):
    text = await failure(line(pty_port, parity="N"))
    assert "cannot connect" not in text and text.startswith("unit 1 FC3 @0+2: "), text
