"""Helpers of the hub tests: sites as the hub holds them (``EWS_READINGS_<site>``, ``EWS_CONFIG_<site>``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ews_contracts.events import ReadingTaken
from ews_contracts.hub import hub_stream_name
from ews_contracts.site import load_site
from ews_contracts.siteconfig import ConfigStore
from ews_contracts.streams import CONFIG, READINGS
from nats.js.api import StreamConfig

HERE = Path(__file__).parent
EA = "energy_active_import"
T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
METERS = ("main", "m1", "e2")


def site_file(folder: Path, site: str) -> Path:
    """The accounting test site under another id."""
    text = (HERE / "site_accounting.yaml").read_text().replace("site: acct", f"site: {site}", 1)
    path = folder / f"{site}.yaml"
    path.write_text(text)
    return path


async def add_hub_site(js, folder: Path, site: str) -> None:  # noqa: ANN001
    """A site's streams at the hub made directly (with subjects, as if sourced) and its configuration."""
    for spec in (READINGS, CONFIG):
        subjects = spec.subjects_of(site)
        await js.add_stream(StreamConfig(name=hub_stream_name(spec, site), subjects=subjects))
    path = site_file(folder, site)
    await ConfigStore(js, site, hub_stream_name(CONFIG, site)).open(load_site(path), path.read_bytes(), path)


def readings(site: str, first: int, n: int, step_s: int = 60) -> list[ReadingTaken]:
    """``n`` readings of each meter of the site, from the ``first``-th on (counters in Wh)."""
    out = []
    for k, device in enumerate(METERS):
        for i in range(first, first + n):
            t = T0 + timedelta(seconds=i * step_s)
            out.append(
                ReadingTaken(
                    event_id=ReadingTaken.id_for(site, device, t),
                    site=site,
                    device=device,
                    profile="energy-meter-rs485-3ph",
                    occurred_at=t,
                    values={EA: 1000.0 * (k + 1) + i * (3 + k), "power_active": 100.0},
                )
            )
    return out


async def publish(js, events: list[ReadingTaken], stream: str | None = None) -> None:  # noqa: ANN001
    for i in range(0, len(events), 500):
        await asyncio.gather(
            *(
                js.publish(e.subject, e.model_dump_json().encode(), stream=stream, headers=e.headers())
                for e in events[i : i + 500]
            )
        )


def stored_events(dsn: str, database: str) -> list[tuple[str, str]]:
    """(event_id, quantity) of every stored reading row, duplicates kept (chDB: in a process of its own)."""
    code = (
        "import json, sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn=sys.argv[1])\n"
        "dbs = {r[0] for r in c.query('SHOW DATABASES').result_rows}\n"
        "rows = c.query(f'SELECT event_id, quantity FROM {sys.argv[2]}.readings').result_rows "
        "if sys.argv[2] in dbs else []\n"
        "print(json.dumps([list(r) for r in rows]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, dsn, database], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [tuple(r) for r in json.loads(out.stdout)]
