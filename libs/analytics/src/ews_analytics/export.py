"""Raw readings as stored: the export of one device's readings over a period, and the lookup of stored
values the CSV import compares its lines with.

``plan_export(store, database, site, device, start, end)`` checks the device and the period, finds the
quantities the device has readings of in ``[start, end)`` and cuts the period into chunks of about
``CHUNK_VALUES`` values (one query per chunk: an export of years of readings is streamed with bounded
memory). ``export_rows(store, database, site, plan)`` then yields ``(epoch ms, {quantity: value})`` in time
order, one item per reading time. Values come from ``readings FINAL`` (a duplicate reading counts once).

``stored_values(store, database, site, device, quantities, times)`` gives the stored value of each
``(quantity, epoch ms)`` asked that exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ews_contracts.quantities import Quantity
from ews_contracts.site import Device, Site
from ews_contracts.store import Store

from .queries import MAX_DATE, MIN_DATE, N_, Problem
from .schema import READINGS, table

CHUNK_VALUES = 100_000  # values per export query (memory bound while streaming)
LOOKUP_TIMES = 1_000  # reading times per lookup query (query parameters stay small)
_ORDER = {str(q): i for i, q in enumerate(Quantity)}  # canonical order: energies, powers, voltages …
_WHERE = "site = {site:String} AND device = {device:String}"


def check_device(site: Site, device_id: str) -> Device:
    """The real device ``device_id``; Problem naming what is wrong (unknown, virtual)."""
    device = site.device(device_id)
    if device is not None:
        return device
    if site.virtual_device(device_id) is not None:
        raise Problem(
            "virtual-device",
            N_(
                "device %(device)s is virtual: raw readings exist only for real devices, use its master "
                "or slaves"
            ),
            device=repr(device_id),
        )
    raise Problem(
        "unknown-device",
        N_("unknown device %(value)s: use one of %(choices)s"),
        value=repr(device_id),
        choices=", ".join(d.id for d in site.devices),
    )


def check_period(site: Site, start: datetime, end: datetime) -> None:
    """Problem unless ``start < end`` (both aware), their local dates within MIN_DATE … MAX_DATE + 1 day
    (a period may end at the midnight after MAX_DATE)."""
    for moment, last in ((start, MAX_DATE), (end, MAX_DATE + timedelta(days=1))):
        if not MIN_DATE <= moment.astimezone(site.tz).date() <= last:
            raise Problem(
                "date-out-of-range",
                N_("date %(date)s is out of range: use a date from %(span)s"),
                date=moment.isoformat(),
                span=f"{MIN_DATE.isoformat()} to {MAX_DATE.isoformat()}",
            )
    if start >= end:
        raise Problem(
            "empty-period",
            N_("the period is empty: from %(start)s must come before to %(end)s"),
            start=start.isoformat(),
            end=end.isoformat(),
        )


def ordered_quantities(names: Iterable[str]) -> list[str]:
    """Quantities in the canonical order (energies, powers, voltages …); unknown names last, sorted."""
    return sorted(set(names), key=lambda q: (_ORDER.get(q, len(_ORDER)), q))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class ExportPlan:
    device: str
    start_ms: int
    end_ms: int
    quantities: list[str] = field(default_factory=list)
    chunks: list[tuple[int, int]] = field(default_factory=list)  # [from, to) epoch ms
    values: int = 0  # stored values in the period (duplicates not merged yet: an upper bound)


async def plan_export(
    store: Store, database: str, site: Site, device_id: str, start: datetime, end: datetime
) -> ExportPlan:
    """Check the device and ``[start, end)`` (aware datetimes), then find its quantities and chunks."""
    check_device(site, device_id)
    check_period(site, start, end)
    start_ms, end_ms = _ms(start), _ms(end)
    params: dict[str, Any] = {"site": site.site, "device": device_id, "a": start_ms, "b": end_ms}
    rows = await store.query(
        "SELECT toUnixTimestamp(toStartOfHour(ts)) AS h, count(), groupUniqArray(quantity) "
        f"FROM {table(database, READINGS)} WHERE {_WHERE} "
        "AND ts >= fromUnixTimestamp64Milli({a:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({b:Int64}, 'UTC') "
        "GROUP BY h ORDER BY h",
        params,
    )
    quantities: set[str] = set()
    chunks: list[tuple[int, int]] = []
    cut, pending, total = start_ms, 0, 0
    for hour, count, names in rows:
        hour_ms, count = int(hour) * 1000, int(count)
        if pending and pending + count > CHUNK_VALUES:
            chunks.append((cut, hour_ms))
            cut, pending = hour_ms, 0
        pending += count
        total += count
        quantities.update(str(n) for n in names)
    if pending:
        chunks.append((cut, end_ms))
    return ExportPlan(device_id, start_ms, end_ms, ordered_quantities(quantities), chunks, total)


async def export_rows(
    store: Store, database: str, site: Site, plan: ExportPlan
) -> AsyncIterator[tuple[int, dict[str, float]]]:
    """``(epoch ms, {quantity: value})`` per reading time of the plan, in time order."""
    for a, b in plan.chunks:
        rows = await store.query(
            "SELECT toUnixTimestamp64Milli(ts) AS t, quantity, value "
            f"FROM {table(database, READINGS)} FINAL WHERE {_WHERE} "
            "AND ts >= fromUnixTimestamp64Milli({a:Int64}, 'UTC') "
            "AND ts < fromUnixTimestamp64Milli({b:Int64}, 'UTC') ORDER BY t",
            {"site": site.site, "device": plan.device, "a": a, "b": b},
        )
        current: int | None = None
        values: dict[str, float] = {}
        for t, quantity, value in rows:
            t = int(t)
            if t != current:
                if current is not None:
                    yield current, values
                current, values = t, {}
            values[str(quantity)] = float(value)
        if current is not None:
            yield current, values


async def stored_values(
    store: Store, database: str, site: Site, device_id: str, quantities: Iterable[str], times: Iterable[int]
) -> dict[tuple[str, int], float]:
    """The stored value of every ``(quantity, epoch ms)`` of ``quantities`` × ``times`` that exists."""
    wanted = sorted(set(quantities))
    ordered = sorted(set(times))
    found: dict[tuple[str, int], float] = {}
    if not wanted:
        return found
    for i in range(0, len(ordered), LOOKUP_TIMES):
        part = ordered[i : i + LOOKUP_TIMES]
        rows = await store.query(
            "SELECT quantity, toUnixTimestamp64Milli(ts) AS t, value "
            f"FROM {table(database, READINGS)} FINAL WHERE {_WHERE} "
            "AND quantity IN {quantities:Array(String)} "
            "AND ts >= fromUnixTimestamp64Milli({a:Int64}, 'UTC') "
            "AND ts <= fromUnixTimestamp64Milli({b:Int64}, 'UTC') "
            "AND toUnixTimestamp64Milli(ts) IN {times:Array(Int64)}",
            {
                "site": site.site,
                "device": device_id,
                "quantities": wanted,
                "a": part[0],
                "b": part[-1],
                "times": part,
            },
        )
        for quantity, t, value in rows:
            found[(str(quantity), int(t))] = float(value)
    return found
