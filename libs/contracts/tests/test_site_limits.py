"""S1–S2 limits checked when the site file loads: 32 addresses or pulse meters per gateway, 255 devices per
site (a warning above 128), each a clear one-line error naming the line and the fix."""

from __future__ import annotations

import logging

import pytest
import yaml
from ews_contracts.site import load_site
from ews_contracts.yamlfile import ConfigFileError

HEAD = {
    "site": "s",
    "name": "S",
    "tariffs": [{"effective_from": "2020-01-01", "electricity_per_kwh": 0.2}],
    "gateways": [{"id": f"gw{n}", "host": "10.0.0.1", "port": 502 + n} for n in range(1, 10)],
}


def write(tmp_path, devices: list[dict]) -> object:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({**HEAD, "devices": devices}, sort_keys=False))
    return path


def meters(count: int, gateways: int = 8) -> list[dict]:
    return [
        {
            "id": f"d{i}",
            "name": f"D{i}",
            "profile": "energy-meter-rs485-3ph",
            "gateway": f"gw{i % gateways + 1}",
            "address": i // gateways + 1,
        }
        for i in range(count)
    ]


def test_up_to_128_devices_quietly_then_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ews.site")
    load_site(write(tmp_path, meters(128)))
    assert not caplog.records
    site = load_site(write(tmp_path, meters(129)))
    assert len(site.devices) == 129
    (record,) = caplog.records
    assert (
        record.levelname == "WARNING" and "129 devices: more than the 128 recommended" in record.getMessage()
    )


def test_more_than_255_devices_is_refused(tmp_path):
    load_site(write(tmp_path, meters(255)))
    with pytest.raises(ConfigFileError) as info:
        load_site(write(tmp_path, meters(256, gateways=9)))
    message = str(info.value)
    assert "256 devices: a site manages at most 255; split it into two sites" in message
    assert "\n" not in message


def test_32_addresses_per_gateway_counting_shared_addresses_once(tmp_path):
    devices = meters(32, gateways=1)
    # a pulse meter on a concentrator at a new address: the 33rd address
    pulse = {
        "id": "p1",
        "name": "P",
        "profile": "pulse-concentrator-004687",
        "gateway": "gw1",
        "address": 40,
        "position": 1,
        "medium": "water",
        "pulse_weight": 10,
    }
    with pytest.raises(
        ConfigFileError,
        match=r"site\.yaml:\d+: field 'devices\.32\.address': gateway 'gw1': more than 32 addresses",
    ):
        load_site(write(tmp_path, [*devices, pulse]))
    # the same pulse meter on the concentrator at an address already counted is fine
    devices[-1] = {**pulse, "id": "p0", "address": 32}
    load_site(write(tmp_path, [*devices, {**pulse, "address": 32, "position": 2}]))


def test_32_pulse_meters_per_gateway(tmp_path):
    pulses = [
        {
            "id": f"p{i}",
            "name": "P",
            "profile": "pulse-concentrator-004687",
            "gateway": "gw1",
            "address": 1 + i // 7,
            "position": 1 + i % 7,
            "medium": "gas",
            "pulse_weight": 1,
        }
        for i in range(33)
    ]
    load_site(write(tmp_path, pulses[:32]))
    with pytest.raises(
        ConfigFileError, match="more than 32 pulse meters .*move pulse meters to another gateway"
    ):
        load_site(write(tmp_path, pulses))


def test_serial_line_gateway(tmp_path):
    path = tmp_path / "site.yaml"
    data = {
        **HEAD,
        "gateways": [
            {
                "id": "bus1",
                "transport": "rtu",
                "serial": {"port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E", "stopbits": 1},
            }
        ],
        "devices": meters(1, gateways=1),
    }
    data["devices"][0]["gateway"] = "bus1"
    path.write_text(yaml.safe_dump(data))
    gateway = load_site(path).gateways[0]
    assert gateway.bus_baudrate == 9600 and gateway.endpoint == "/dev/ttyUSB0"
    data["gateways"][0]["serial"]["baudrate"] = 7
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigFileError, match=r"field 'gateways\.0\.serial\.baudrate'"):
        load_site(path)
