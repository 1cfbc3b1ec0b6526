"""Faulty devices do not flood the logs: a real poller (real nats-server, redis-server, the simulator over
Modbus TCP) polls five faulty devices and a healthy one every second, with the product's logging
configuration and the fault log's summary interval shortened to 2 s. Per device and cause: one line when
it starts failing, at most one summary line per interval while it lasts, one line when it recovers; no
pymodbus line (no frame dump) and no multi-line record."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from ews_contracts.settings import Settings
from ews_fieldbus import FaultLog
from ews_poller.service import Poller
from ews_runtime.cli import _configure_logging
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite
from ews_simulator.site import Fault

from .test_bus import PROFILES, site

pytestmark = pytest.mark.integration

SUMMARY_EVERY = 2.0
FAULTY = {
    "t": Fault("timeout"),
    "g": Fault("gone"),
    "x4": Fault("exception", 4),
    "x6": Fault("exception", 6),
    "z": Fault("garbage"),
}
WINDOW = 8.0  # seconds the faults last


@pytest.fixture
def product_logging(caplog):
    """The product's logging levels (pymodbus quiet unless DEBUG), undone afterwards; records captured."""
    saved = {name: logging.getLogger(name).level for name in ("pymodbus", "asyncio", "httpx")}
    _configure_logging("INFO", "poller")
    caplog.set_level(logging.INFO)
    yield caplog
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def lines(records: list[logging.LogRecord], device: str) -> list[str]:
    """The lines about ``device``: the fault log's and its status changes ("poller: device …: a -> b")."""
    return [
        r.getMessage().removeprefix("poller: ")
        for r in records
        if r.getMessage().removeprefix("poller: ").startswith(f"device {device}:")
    ]


async def until(condition, within: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def test_faulty_devices_log_a_line_when_they_start_a_summary_per_interval_and_recovery(
    nats_url: str, redis_clean: str, tmp_path, product_logging
) -> None:
    devices = [
        {"id": d, "name": d, "profile": "energy-meter-rs485-1ph", "gateway": "gw1", "address": n + 1}
        for n, d in enumerate([*FAULTY, "ok"])
    ]
    s = site([{"id": "gw1", "host": "127.0.0.1", "port": free_port(), "timeout": 0.1, "retries": 0}], devices)
    settings = Settings(NATS_URL=nats_url, REDIS_URL=redis_clean, EWS_DATA_DIR=str(tmp_path))
    poller = Poller(settings, site=s, profiles=PROFILES, poll_interval=1.0)
    poller.complaints = FaultLog(logging.getLogger("ews.poller"), summary_every=SUMMARY_EVERY)
    state = {t.device.id: t for t in poller.targets["gw1"]}
    async with SimulatedSite(s, PROFILES) as sim:
        await poller.start()
        try:
            await until(lambda: all(t.live.state == "on" for t in state.values()), 10, "every device on")
            product_logging.clear()
            for device, fault in FAULTY.items():
                sim.inject(device, fault)
            began = time.monotonic()
            rounds = poller.rounds["gw1"]
            await asyncio.sleep(WINDOW)  # the faults last this long: what is measured is the log meanwhile
            polled = poller.rounds["gw1"] - rounds
            during = list(product_logging.records)
            elapsed = time.monotonic() - began
            for device in FAULTY:
                sim.inject(device, None)
            await until(lambda: all(t.live.state == "on" for t in state.values()), 10, "every device back")
            after = product_logging.records[len(during) :]
        finally:
            await poller.stop()

    assert polled >= WINDOW - 1  # polled every second meanwhile
    records = product_logging.records
    assert not [r for r in records if r.name.startswith("pymodbus")]  # no frame dumps
    assert not [r.getMessage() for r in records if "\n" in r.getMessage()]
    # a summary at the first failure at least SUMMARY_EVERY after the last line: every 2 to 3 s here
    most, least = int(elapsed // SUMMARY_EVERY), int(elapsed // (SUMMARY_EVERY + 1)) - 1
    for device in FAULTY:
        mine = lines(during, device)
        first, *rest = mine
        assert "still failing" not in first and " -> " not in first, mine  # the line when it starts
        status = [m for m in rest if " -> " in m]
        summaries = [m for m in rest if "still failing" in m]
        assert len(status) == 1 and status[0].startswith(f"device {device}: on -> comm-error ("), mine
        assert len(rest) == len(status) + len(summaries), mine  # nothing else
        assert least <= len(summaries) <= most, mine
        for line in summaries:
            assert re.search(r"still failing: \d+ failures? in the last [23] s: ", line), line
        recovered = [m for m in lines(after, device) if "answering again" in m]
        assert len(recovered) == 1, lines(after, device)
        assert re.search(r"answering again after \d+ failures over \d+ s", recovered[0]), recovered
    assert lines(during, "ok") == []
    per_second = len([r for r in during if r.name.startswith("ews")]) / elapsed
    # 5 devices: a start line, a status line, and a summary every 2 s each: ~4 lines a second at first,
    # 2.5 a second after; never one line per failed poll (5 a second here, 26 a second before)
    assert per_second <= (2 * len(FAULTY) + len(FAULTY) * elapsed / SUMMARY_EVERY) / elapsed + 0.01, (
        per_second
    )
    print(f"\n{len(during)} lines in {elapsed:.1f} s for {len(FAULTY)} faulty devices ({per_second:.2f}/s)")
