"""Every consumption answer of a site, as the API's JSON text: each scope (totals, zones, circuits, panels,
gateways, every device, virtual and retired ones included) × period (each day given, and the month, year and
decade around them), plus the "Data" summary of each scope and its comparison with the global total by month
(``datalogger.csv`` is the consumption answer's buckets written as CSV by the gateway-api). Two databases that give the same answers, byte
for byte, give the same figures everywhere.

Also a script (chDB opens one folder per process): ``python answers.py DSN DATABASE SITE.json TODAY DAY…``
prints the answers as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date

from ews_analytics import compare, consumption, summary
from ews_contracts.site import Site
from ews_contracts.store import Store, get_store


def scopes(site: Site) -> list[str]:
    return [
        "total-electricity",
        "total-global",
        *(f"zone:{z.id}" for z in site.zones),
        *(f"circuit:{c.id}" for c in site.circuits),
        *(f"panel:{p.id}" for p in site.panels),
        *(f"gateway:{g.id}" for g in site.gateways),
        *(f"device:{d.id}" for d in site.devices),
        *(f"device:{v.id}" for v in site.virtual_devices),
        *(f"device:{r.id}" for r in site.retired_devices),
    ]


async def _text(call) -> str:  # noqa: ANN001
    try:
        return (await call).model_dump_json()
    except ValueError as exc:  # a scope the query refuses: the refusal is an answer too
        return f"error: {exc}"


async def answers(store: Store, database: str, site: Site, today: date, days: list[date]) -> dict[str, str]:
    out: dict[str, str] = {}
    middle = days[len(days) // 2]
    for scope in scopes(site):
        for day in days:
            out[f"{scope} day {day}"] = await _text(
                consumption(store, database, site, scope, "day", day, today)
            )
        for period in ("month", "year", "decade"):
            out[f"{scope} {period} {middle}"] = await _text(
                consumption(store, database, site, scope, period, middle, today)
            )
        out[f"{scope} summary"] = await _text(summary(store, database, site, scope, today))
        out[f"{scope} compare total-global month {middle}"] = await _text(
            compare(store, database, site, "total-global", scope, "month", middle, today=today)
        )
    return out


if __name__ == "__main__":
    dsn, database, site_file, today, *days = sys.argv[1:]
    site = Site.model_validate(json.loads(open(site_file, encoding="utf-8").read()))  # noqa: ASYNC230, SIM115
    result = asyncio.run(
        answers(
            get_store(dsn), database, site, date.fromisoformat(today), [date.fromisoformat(d) for d in days]
        )
    )
    print(json.dumps(result))
