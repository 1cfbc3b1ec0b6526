"""Site files: valid ones load, invalid ones give one line naming the file, the line and the field."""

from pathlib import Path

import pytest
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import load_site
from ews_contracts.yamlfile import ConfigFileError

DEMO = BUNDLED_DEMO_SITE.read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_bundled_demo_site_loads():
    site = load_site(BUNDLED_DEMO_SITE)
    assert site.site == "demo"
    assert {"m1", "e2", "water", "gas", "ev1"} <= {d.id for d in site.devices}
    assert site.tz.key == "Europe/Paris"


@pytest.mark.parametrize(
    ("change", "line_hint", "field_hint"),
    [
        (("timezone: Europe/Paris", "timezone: Mars/Olympus"), 4, "timezone"),
        (("address: 8,", "address: 300,"), None, "devices.4.address"),
        (
            ("profile: ev-station-greenup, gateway: gw1", "profile: ev-station-greenup, gateway: gw9"),
            31,
            "devices.4.gateway",
        ),
        (("currency: EUR", "currency: euro"), 5, "currency"),
    ],
)
def test_invalid_site_names_line_and_field(tmp_path, change, line_hint, field_hint):
    old, new = change
    assert old in DEMO
    path = write(tmp_path, DEMO.replace(old, new))
    with pytest.raises(ConfigFileError) as info:
        load_site(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and field_hint in message
    if line_hint:
        assert f"{path}:{line_hint}:" in message


def test_duplicate_address_on_a_gateway_is_refused(tmp_path):
    path = write(tmp_path, DEMO.replace("address: 2,", "address: 1,"))
    with pytest.raises(ConfigFileError, match="address 1 is already used on gateway 'gw1'"):
        load_site(path)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "site: demo\nname: [unclosed\n")
    with pytest.raises(ConfigFileError, match=r"site\.yaml:\d+: not valid YAML"):
        load_site(path)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read it"):
        load_site(tmp_path / "nope.yaml")


def test_more_than_32_addresses_on_a_gateway(tmp_path):
    devices = "\n".join(
        f"  - {{id: d{i}, name: D{i}, profile: energy-meter-rs485-3ph, gateway: gw1, address: {i}}}"
        for i in range(1, 34)
    )
    head = DEMO.split("devices:")[0]
    path = write(tmp_path, head + "devices:\n" + devices + "\n")
    with pytest.raises(ConfigFileError, match="more than 32 addresses"):
        load_site(path)


def test_tariff_in_force_by_date(tmp_path):
    text = DEMO.replace(
        "  - {effective_from: 2020-01-01, electricity_per_kwh: 0.2516, water_per_m3: 4.15, gas_per_m3: 1.21}",
        "  - {effective_from: 2020-01-01, electricity_per_kwh: 0.20}\n  - {effective_from: 2026-02-01, electricity_per_kwh: 0.30}",
    )
    site = load_site(write(tmp_path, text))
    from datetime import date

    assert site.tariff_on(date(2019, 5, 1)).electricity_per_kwh == 0.20
    assert site.tariff_on(date(2026, 1, 31)).electricity_per_kwh == 0.20
    assert site.tariff_on(date(2026, 2, 1)).electricity_per_kwh == 0.30


def test_the_site_id_hub_is_reserved_for_the_hub(tmp_path):
    path = write(tmp_path, DEMO.replace("site: demo", "site: hub", 1))
    with pytest.raises(ConfigFileError) as info:
        load_site(path)
    message = str(info.value)
    assert "\n" not in message and "site" in message and "names the hub" in message


GATEWAY = '  - {id: gw1, name: "Gateway TCP/RS485 – main board", host: 127.0.0.1, port: 5020, timeout: 1.0}\n'


@pytest.mark.parametrize(
    ("second", "field", "endpoint"),
    [
        ("{id: gw2, host: 127.0.0.1, port: 5020}", "gateways.1.port", "127.0.0.1:5020"),
        (  # another transport on the same host and port is still the same connection
            "{id: gw2, transport: rtu-over-tcp, host: 127.0.0.1, port: 5020}",
            "gateways.1.port",
            "127.0.0.1:5020",
        ),
        (  # a serial line reached through a pyserial socket:// URL
            "{id: gw2, transport: rtu, serial: {port: 'socket://127.0.0.1:5020'}}",
            "gateways.1.serial.port",
            "socket://127.0.0.1:5020",
        ),
    ],
    ids=["tcp", "rtu-over-tcp", "socket-url"],
)
def test_two_gateways_on_one_tcp_endpoint_are_refused(tmp_path, second, field, endpoint):
    assert GATEWAY in DEMO
    path = write(tmp_path, DEMO.replace(GATEWAY, GATEWAY + f"  - {second}\n"))
    with pytest.raises(ConfigFileError) as info:
        load_site(path)
    message = str(info.value)
    assert "\n" not in message and f"{path}:12:" in message and field in message
    assert f"gateway 'gw2' is on {endpoint}, already gateway 'gw1''s" in message, message


def test_two_gateways_on_one_serial_port_are_refused(tmp_path):
    serial = "{id: %s, transport: rtu, serial: {port: /dev/ttyUSB0, baudrate: %d}}"
    lines = f"  - {serial % ('rs1', 9600)}\n  - {serial % ('rs2', 19200)}\n"
    path = write(tmp_path, DEMO.replace(GATEWAY, GATEWAY + lines))
    with pytest.raises(ConfigFileError) as info:
        load_site(path)
    message = str(info.value)
    assert "\n" not in message and "gateways.2.serial.port" in message
    assert "gateway 'rs2' is on /dev/ttyUSB0, already gateway 'rs1''s" in message, message


def test_gateways_on_other_ports_or_hosts_load(tmp_path):
    others = (
        "  - {id: gw2, host: 127.0.0.1, port: 5021}\n"
        "  - {id: gw3, host: 10.0.0.2, port: 5020}\n"
        "  - {id: rs1, transport: rtu, serial: {port: /dev/ttyUSB0}}\n"
        "  - {id: rs2, transport: rtu, serial: {port: /dev/ttyUSB1}}\n"
    )
    site = load_site(write(tmp_path, DEMO.replace(GATEWAY, GATEWAY + others)))
    assert len({g.line for g in site.gateways}) == 5
