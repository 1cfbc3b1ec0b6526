"""Site files for the poller benchmarks (not a test; imported by bench_poller_*.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ews_contracts.profiles import load_profiles


def polled_profiles() -> list[str]:
    """Every bundled profile a device can use at an address of its own (not the pulse inputs)."""
    profiles = load_profiles()
    return sorted(
        p.id
        for p in profiles.values()
        if p.inputs is None and not any(r.position_stride for r in p.registers) and (p.registers or p.states)
    )


def write_site(path: Path, site_id: str, ports: list[int], devices: int, **gateway: object) -> Path:
    """``devices`` devices spread over one gateway per port (at most 32 addresses each), cycling through
    every profile."""
    names = polled_profiles()
    gateways = [
        {"id": f"gw{n + 1}", "host": "127.0.0.1", "port": port, "timeout": 1.0, "retries": 0, **gateway}
        for n, port in enumerate(ports)
    ]
    rows = []
    for i in range(devices):
        g = i % len(ports)
        address = i // len(ports) + 1
        rows.append(
            {
                "id": f"d{i + 1}",
                "name": f"Device {i + 1}",
                "profile": names[i % len(names)],
                "gateway": f"gw{g + 1}",
                "address": address,
                "exclude_from_total": True,
            }
        )
    data = {
        "site": site_id,
        "name": "benchmark",
        "tariffs": [{"effective_from": "2020-01-01", "electricity_per_kwh": 0.2}],
        "gateways": gateways,
        "devices": rows,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def meters_site(devices: int, **extra: object) -> dict:
    """Site data for the accounting benchmarks: ``devices`` RS485 energy meters d0… on gateways of 32."""
    data: dict = {
        "site": "bench",
        "name": "Benchmark site",
        "timezone": "Europe/Paris",
        "tariffs": [{"effective_from": "2015-01-01", "electricity_per_kwh": 0.25, "water_per_m3": 4.0}],
        "gateways": [{"id": f"gw{g}", "host": "127.0.0.1"} for g in range(devices // 32 + 1)],
        "devices": [
            {
                "id": f"d{i}",
                "name": f"Meter {i}",
                "profile": "energy-meter-rs485-3ph",
                "gateway": f"gw{i // 32}",
                "address": i % 32 + 1,
            }
            for i in range(devices)
        ],
    }
    data.update(extra)
    return data


def simulate(site_file: str, baud: int, delay: float) -> None:
    """Serve a site's devices from the simulator with RS485 timing (run in a child process)."""
    import asyncio

    from ews_contracts.site import load_site
    from ews_fieldbus import BusTiming
    from ews_simulator import SimulatedSite

    async def main() -> None:
        site = load_site(Path(site_file))
        timing = {g.id: BusTiming(baud, delay) for g in site.gateways}
        async with SimulatedSite(site, load_profiles(), timing=timing):
            await asyncio.Event().wait()

    asyncio.run(main())
