"""Consumptions (C1–C5): five modes × four periods, as pages.

``/consumption/<mode>?period=day|month|year|decade&date=YYYY-MM-DD`` with the modes
``total-electricity`` (stacked by circuit, with the Data table of today … last year),
``total-global`` (electricity, gas, water in units and money; pie on money), ``partial`` (circuits by
zone: ``zone=``, ``circuit=``; a circuit mixing media is shown like total-global: money stacked by
medium, with each medium's units and money), ``comparison`` (``a=``, ``b=``, ``detail=total|detailed``)
and ``details`` (``by=zones|circuits|all``, ``device=``: energy and the other measured quantities).
Every chart draws the previous period beside the current one; a bucket no reading covered is a gap,
and a period without data says so. ``view=data`` shows the figures as a table instead of the chart.
Figures with consumption from before the first tariff say in a short note that it is not priced.

The figures come from ``domain.consumption`` (the functions behind ``/api/v1/consumption``), so the
page, the JSON and ``datalogger.csv`` (the download link) always agree.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from ews_analytics import Bucket, Consumption, resolve_scope
from ews_contracts.roles import Permission
from ews_contracts.site import Site
from litestar import Request, Router, get
from litestar.params import Parameter
from litestar.response import Template

from .. import vocabulary as _labels
from ..domain.consumption import (
    load_comparison,
    load_consumption,
    load_quantity_series,
    load_summary,
    parse_day,
)
from ..domain.devices import device_views
from ..domain.language import language_of
from ..errors import ApiError, unknown
from ..guards import requires
from ..i18n import N_, Formats, gettext_callables, scale_for
from ..sites import site_state
from ._page import formats, redirect, render
from .installation import profile_of

VIEW = [requires(Permission.VIEW_CONSUMPTION)]

MODES: dict[str, str] = {
    "total-electricity": N_("Total – Electricity"),
    "total-global": N_("Total – Global"),
    "partial": N_("Partial – Zones and circuits"),
    "comparison": N_("Comparison"),
    "details": N_("Details"),
}
PERIODS: dict[str, str] = {
    "day": N_("Day"),
    "month": N_("Month"),
    "year": N_("Year"),
    "decade": N_("10 years"),
}
PREVIOUS: dict[str, str] = {
    "day": N_("Previous day"),
    "month": N_("Previous month"),
    "year": N_("Previous year"),
    "decade": N_("Previous 10 years"),
}
DETAIL_LISTS: dict[str, str] = {"zones": N_("Zones"), "circuits": N_("Circuits"), "all": N_("All devices")}
MEDIUM_COLORS = {"electricity": "#e67e22", "gas": "#27ae60", "water": "#2e86de"}
MEDIUM_NAMES = {"electricity": N_("Electricity"), "gas": N_("Gas"), "water": N_("Water")}
CIRCUIT_COLORS = (
    "#e67e22", "#2e86de", "#8e44ad", "#16a085", "#c0392b", "#f1c40f", "#2c3e50", "#d35400", "#27ae60",
    "#7f8c8d", "#1abc9c", "#9b59b6",
)  # fmt: skip
PREVIOUS_COLOR = "#b8c2cc"
DETAIL_QUANTITIES = ("power_active", "power_reactive", "power_apparent", "power_factor")


def shift(period: str, day: date, steps: int) -> date:
    """The same position ``steps`` periods later (earlier when negative); the 1st for months/years."""
    if period == "day":
        return day + timedelta(days=steps)
    if period == "month":
        index = day.year * 12 + day.month - 1 + steps
        return date(index // 12, index % 12 + 1, 1)
    years = steps * (10 if period == "decade" else 1)
    return date(day.year + years, 1, 1)


def period_label(fmt: Formats, period: str, day: date) -> str:
    if period == "day":
        return fmt.date(day, "full")
    if period == "month":
        return fmt.skeleton(day, "yMMMM")
    if period == "year":
        return fmt.skeleton(day, "y")
    return f"{fmt.skeleton(date(day.year - 9, 1, 1), 'y')} – {fmt.skeleton(day, 'y')}"


def category(fmt: Formats, period: str, start: datetime) -> str:
    if period == "day":
        return fmt.skeleton(start, "H")
    if period == "month":
        return fmt.skeleton(start, "d")
    if period == "year":
        return fmt.skeleton(start, "MMM")
    return fmt.skeleton(start, "y")


def display_unit(unit: str, values: list[float]) -> tuple[float, str]:
    """(divisor, unit) for a chart: the largest value decides (kWh, MWh, m³ …)."""
    peak = max((abs(v) for v in values), default=0.0)
    return scale_for(unit, peak)


def _values(buckets: list[Bucket], divisor: float) -> list[float | None]:
    return [None if b.no_data else round(b.value / divisor, 6) for b in buckets]


class Chart:
    """The JSON a ``[data-chart]`` element is drawn from (see static/js/charts.js)."""

    def __init__(self, kind: str = "bar", categories: list[str] | None = None, unit: str = "") -> None:
        self.spec: dict[str, Any] = {"type": kind, "categories": categories or [], "unit": unit, "series": []}

    def add(
        self,
        name: str,
        values: list[float | None],
        color: str | None = None,
        stack: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.spec["series"].append(
            {"name": name, "values": values, "color": color, "stack": stack, "kind": kind}
        )

    def json(self) -> str:
        # '</' cannot close the <script type="application/json"> it travels in
        return json.dumps(self.spec, ensure_ascii=False).replace("</", "<\\/")


def history_chart(
    fmt: Formats, t: Any, period: str, result: Consumption, name: str, color: str, series: bool = False
) -> Chart:
    """Current period (stacked by circuit when ``series``) and the previous period beside it."""
    current = [b.value for b in result.buckets if not b.no_data]
    previous = [b.value for b in result.previous.buckets if not b.no_data]
    money = result.unit == result.currency
    divisor, unit = (1.0, result.currency) if money else display_unit(result.unit, current + previous)
    chart = Chart("bar", [category(fmt, period, b.start) for b in result.buckets], unit)
    chart.add(
        t(PREVIOUS[period]), _values(result.previous.buckets, divisor)[: len(result.buckets)], PREVIOUS_COLOR
    )
    if series and result.series:
        for n, s in enumerate(result.series):
            values = [None if v is None else round(v / divisor, 6) for v in s.values]
            if s.key.startswith("medium:"):  # electricity orange, gas green, water blue (C4)
                label, colour = t(MEDIUM_NAMES[s.name]), MEDIUM_COLORS[s.name]
            else:
                label, colour = s.name or t("Not in a circuit"), CIRCUIT_COLORS[n % len(CIRCUIT_COLORS)]
            chart.add(label, values, colour, "current")
        if money:  # standing charges belong to no medium: their own part of the stack
            rest = [
                None if b.no_data else round(b.value - sum(x.values[i] or 0 for x in result.series), 6)
                for i, b in enumerate(result.buckets)
            ]
            if any(r for r in rest if r and abs(r) > 1e-6):
                chart.add(t("Standing charges"), rest, "#95a5a6", "current")
    else:
        chart.add(name, _values(result.buckets, divisor), color)
    return chart


SUMMARY_TTL = 60.0  # seconds the Data table's six totals are reused (it says "as of" when)


async def cached_summary(state: Any, scope: str) -> tuple[Any, datetime]:
    """The Data table's totals (today … last year: three queries), computed at most once a minute per
    scope: a dashboard reloaded by many people costs one computation, and the table shows its time."""
    cache: dict[tuple[str, str], tuple[float, Any, datetime]] | None = getattr(state, "summary_cache", None)
    if cache is None:
        cache = state.summary_cache = {}
    now = time.monotonic()
    key = (state.site.site, scope)  # one entry per site and scope (sites.forget_summaries)
    hit = cache.get(key)
    if hit is not None and hit[0] > now and hit[1].day == datetime.now(state.site.tz).date():
        return hit[1], hit[2]
    summary = await load_summary(state, scope)
    at = datetime.now(UTC)
    cache[key] = (now + SUMMARY_TTL, summary, at)
    return summary, at


COUNTERS = ("energy_active_import", "water_volume", "gas_volume")


def meters_energy(request: Request[Any, Any, Any], device: Any) -> bool:
    """Whether a device has consumption to show (an energy, water or gas counter; virtual devices do)."""
    if device.kind == "virtual":
        return True
    profile = profile_of(request, device)
    return profile is not None and any(str(r.quantity) in COUNTERS for r in profile.registers)


def _csv_link(scope: str, period: str, day: date) -> str:
    return "/api/v1/consumption/datalogger.csv?" + urlencode(
        {"scope": scope, "period": period, "date": day.isoformat()}
    )


def _link(mode: str, params: dict[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v not in (None, "")}
    if isinstance(merged.get("date"), date):
        merged["date"] = merged["date"].isoformat()
    query = urlencode(merged)
    return f"/consumption/{mode}" + (f"?{query}" if query else "")


def _scopes(site: Site) -> list[tuple[str, list[tuple[str, str]]]]:
    """What the Comparison can compare: (group label msgid, [(scope, name)])."""
    devices = [(f"device:{d.id}", d.name) for d in site.devices] + [
        (f"device:{v.id}", v.name) for v in site.virtual_devices
    ]
    return [
        (N_("Zones"), [(f"zone:{z.id}", z.name) for z in site.zones]),
        (N_("Circuits"), [(f"circuit:{c.id}", c.name) for c in site.circuits]),
        (N_("Devices"), devices),
    ]


@dataclass
class Ask:
    """One consumption page request: what every mode reads, and ``params``, the query it keeps in its
    links (a mode adds its own choices: zone, circuit, a, b, detail, by, device)."""

    request: Request[Any, Any, Any]
    period: str
    day: date
    view: str
    fmt: Formats
    t: Any
    args: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> Any:
        return site_state(self.request)

    @property
    def site(self) -> Site:
        return site_state(self.request).site


@dataclass
class Shown:
    """What a mode shows: its scope (the datalogger.csv link), its figures and chart, and the rest of
    its template's context."""

    scope: str | None = None
    result: Consumption | None = None
    chart: Chart | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def total_electricity(ask: Ask) -> Shown:
    scope = "total-electricity"
    result = await load_consumption(ask.state, scope, ask.period, ask.day, split="circuit")
    name = ask.t("Total – Electricity")
    chart = history_chart(ask.fmt, ask.t, ask.period, result, name, MEDIUM_COLORS["electricity"], series=True)
    extra: dict[str, Any] = {}
    if ask.view == "data":  # the Data table: today … last year (three more queries, only when shown)
        extra["summary"], extra["summary_at"] = await cached_summary(ask.state, scope)
    return Shown(scope, result, chart, extra)


async def total_global(ask: Ask) -> Shown:
    scope = "total-global"
    result = await load_consumption(ask.state, scope, ask.period, ask.day, split="medium")
    chart = history_chart(ask.fmt, ask.t, ask.period, result, ask.t("Total – Global"), "#34495e", series=True)
    pie = Chart("pie")
    pie.spec["slices"] = [
        {
            "name": ask.t(MEDIUM_NAMES[p.medium]),
            "value": round(p.cost, 6),
            "color": MEDIUM_COLORS[p.medium],
            "label": ask.fmt.money(p.cost),
        }
        for p in result.parts
        if p.cost > 0
    ]
    return Shown(
        scope, result, chart, {"parts": result.parts, "pie_json": pie.json() if pie.spec["slices"] else None}
    )


def in_money(site: Site, scope: str) -> bool:
    """Whether a scope is summed in money (it mixes media); False for a scope the load will refuse."""
    try:
        return resolve_scope(site, scope).in_currency
    except ValueError:
        return False


async def partial(ask: Ask) -> Shown:
    zone, circuit = ask.args["zone"], ask.args["circuit"]
    zones = ask.site.zones
    if zone is not None and zone not in {z.id for z in zones}:
        raise unknown(
            "unknown-zone", N_("unknown zone %(value)s: use %(choices)s"), zone, [z.id for z in zones]
        )
    circuits = [c for c in ask.site.circuits if zone is None or c.zone == zone]
    circuit = circuit or (circuits[0].id if circuits else None)
    ask.params.update(zone=zone, circuit=circuit)
    shown = Shown(extra={"zones": zones, "circuits": circuits, "zone": zone, "circuit": circuit})
    if circuit is not None:  # an unknown circuit: the analytics name it (400)
        shown.scope = f"circuit:{circuit}"
        money = in_money(ask.site, shown.scope)  # several media: like total-global, stacked by medium
        split = "medium" if money else None
        shown.result = await load_consumption(ask.state, shown.scope, ask.period, ask.day, split=split)
        name = next(c.name for c in ask.site.circuits if c.id == circuit)
        color = "#34495e" if money else MEDIUM_COLORS["electricity"]
        shown.chart = history_chart(ask.fmt, ask.t, ask.period, shown.result, name, color, series=money)
        shown.extra.update(scope_name=name, parts=shown.result.parts)
    return shown


async def comparison(ask: Ask) -> Shown:
    choices = _scopes(ask.site)
    names_of = {key: name for _, items in choices for key, name in items}
    known = list(names_of)
    a = ask.args["a"] or (known[0] if known else None)
    b = ask.args["b"] or (known[1] if len(known) > 1 else a)
    detail = ask.args["detail"]
    ask.params.update(a=a, b=b, detail=detail)
    shown = Shown(extra={"choices": choices, "a": a, "b": b, "detail": detail})
    if not (a and b):
        return shown
    compared = await load_comparison(ask.state, a, b, ask.period, ask.day, detail)  # checks detail too
    names = (names_of.get(a, a), names_of.get(b, b))
    sides = (compared.a, compared.b)
    money = compared.mode == "currency"
    if detail == "detailed":
        values = [bk.value for side in sides for bk in side.buckets if not bk.no_data]
        divisor, unit = (1.0, compared.currency) if money else display_unit(compared.unit, values)
        chart = Chart("bar", [category(ask.fmt, ask.period, bk.start) for bk in compared.a.buckets], unit)
        for side, name, color, faded in zip(
            sides, names, ("#2e86de", "#e67e22"), ("#aed6f1", "#f5cba7"), strict=True
        ):  # each side's previous period beside it, faded
            previous_values = _values(side.previous.buckets, divisor)[: len(side.buckets)]
            chart.add(f"{name} – {ask.t(PREVIOUS[ask.period])}", previous_values, faded)
            chart.add(name, _values(side.buckets, divisor), color)
    else:
        totals = [side.total for side in sides] + [side.previous.total for side in sides]
        divisor, unit = (
            (1.0, compared.currency) if money else display_unit(compared.unit, [x.value for x in totals])
        )

        def shown_value(total: Any) -> float | None:
            return None if total.no_data else round(total.value / divisor, 6)

        chart = Chart("bar", list(names), unit)
        chart.add(
            ask.t(PREVIOUS[ask.period]), [shown_value(side.previous.total) for side in sides], PREVIOUS_COLOR
        )
        chart.add(
            period_label(ask.fmt, ask.period, ask.day), [shown_value(side.total) for side in sides], "#2e86de"
        )
    shown.extra.update(
        comparison=compared, names=names, has_data=any(not side.total.no_data for side in sides)
    )
    shown.chart = chart
    return shown


def _device_groups(site: Site, views: list[Any], by: str) -> list[tuple[str, list[Any]]]:
    if by == "zones":
        circuit_zone = {c.id: c.zone for c in site.circuits}
        return [
            (
                z.name,
                [d for d in views if d.zone == z.id or (d.circuit and circuit_zone.get(d.circuit) == z.id)],
            )
            for z in site.zones
        ]
    if by == "circuits":
        return [(c.name, [d for d in views if d.circuit == c.id]) for c in site.circuits]
    return [("", views)]


def _power_chart(ask: Ask, lines: Any) -> str:
    """The Details mode's power curves (active, reactive, apparent) in one scaled unit per kind."""
    power = [ln for ln in lines.series if ln.quantity != "power_factor"]
    peak = max((abs(v) for ln in power for v in ln.values if v is not None), default=0.0)
    divisor, _ = scale_for("W", peak)
    units = list(dict.fromkeys(scale_for(ln.unit, peak)[1] for ln in power))
    chart = Chart("line", [category(ask.fmt, ask.period, start) for start in lines.starts], ", ".join(units))
    for line in power:
        values = [None if v is None else round(v / divisor, 4) for v in line.values]
        chart.add(_labels.quantity_label(line.quantity, ask.t), values, kind="line")
    return chart.json()


async def details(ask: Ask) -> Shown:
    by, device = ask.args["by"], ask.args["device"]
    if by not in DETAIL_LISTS:
        raise unknown("unknown-list", N_("unknown list %(value)s: use %(choices)s"), by, DETAIL_LISTS)
    views = [d for d in await device_views(ask.state) if meters_energy(ask.request, d)]
    groups = _device_groups(ask.site, views, by)
    chosen = (
        next((d for d in views if d.id == device), None)
        if device
        else next((d for _, ds in groups for d in ds), None)
    )
    if device is not None and chosen is None:
        raise ApiError(400, "unknown-device", N_("unknown device %(device)s"), device=repr(device))
    ask.params.update(by=by, device=chosen.id if chosen else None)
    shown = Shown(
        extra={"lists": DETAIL_LISTS, "by": by, "groups": groups, "device": chosen.id if chosen else None}
    )
    if chosen is None:
        return shown
    shown.scope = f"device:{chosen.id}"
    shown.result = await load_consumption(ask.state, shown.scope, ask.period, ask.day)
    medium = chosen.medium if chosen.medium in MEDIUM_COLORS else "electricity"
    shown.chart = history_chart(ask.fmt, ask.t, ask.period, shown.result, chosen.name, MEDIUM_COLORS[medium])
    shown.extra.update(chosen=chosen, scope_name=chosen.name)
    wanted = [q for q in DETAIL_QUANTITIES if q in chosen.values]
    if wanted and chosen.kind == "device":
        lines = await load_quantity_series(ask.state, chosen.id, wanted, ask.period, ask.day)
        if lines.has_data:
            shown.extra["quantity_chart_json"] = _power_chart(ask, lines)
    return shown


MODE_VIEWS = {
    "total-electricity": total_electricity,
    "total-global": total_global,
    "partial": partial,
    "comparison": comparison,
    "details": details,
}


def unpriced_from(shown: Shown) -> date | None:
    """The first tariff's date when the figures shown hold consumption from before it (not priced)."""
    compared = shown.extra.get("comparison")
    if compared is not None:
        sides = (compared.a, compared.b)
        totals = [t for side in sides for t in (side.total, side.previous.total)]
        return compared.priced_from if any(t.unpriced for t in totals) else None
    result = shown.result
    if result is not None and (result.total.unpriced or result.previous.total.unpriced):
        return result.priced_from
    return None


@get("/consumption", guards=VIEW, operation_id="pageConsumptionHome", include_in_schema=False, tags=["pages"])
async def consumption_home() -> Any:
    return redirect("/consumption/total-electricity")


@get(
    "/consumption/{mode:str}",
    guards=VIEW,
    operation_id="pageConsumption",
    include_in_schema=False,
    tags=["pages"],
)
async def consumption_page(
    request: Request[Any, Any, Any],
    mode: str,
    period: str = "day",
    day_raw: str | None = Parameter(str, query="date", default=None, required=False),
    view: str = "chart",
    zone: str | None = None,
    circuit: str | None = None,
    a: str | None = None,
    b: str | None = None,
    detail: str = "detailed",
    by: str = "zones",
    device: str | None = None,
) -> Template:
    show = MODE_VIEWS.get(mode)
    if show is None:
        raise unknown(
            "unknown-mode", N_("unknown consumption mode %(value)s: use %(choices)s"), mode, MODES, 404
        )
    if period not in PERIODS:
        raise unknown("unknown-period", N_("unknown period %(value)s: use %(choices)s"), period, PERIODS)
    if view not in ("chart", "data"):
        raise unknown("unknown-view", N_("unknown view %(value)s: use %(choices)s"), view, ("chart", "data"))
    day = parse_day(day_raw, site_state(request).site)
    language = await language_of(request)  # the charts' words and numbers: the page's language
    t = gettext_callables(language)["_"]
    ask = Ask(
        request, period, day, view, formats(request, language), t,
        {"zone": zone, "circuit": circuit, "a": a, "b": b, "detail": detail, "by": by, "device": device},
        {"period": period, "date": day},
    )  # fmt: skip
    shown = await show(ask)
    params = ask.params
    keep_view = view if view != "chart" else None
    context: dict[str, Any] = {
        "mode": mode,
        "period": period,
        "day": day,
        "modes": MODES,
        "periods": PERIODS,
        "view": view,
        "period_label": period_label(ask.fmt, period, day),
        "labels": _labels,
        "medium_names": MEDIUM_NAMES,
        "scope": shown.scope,
        "csv_url": _csv_link(shown.scope, period, day) if shown.scope and mode != "comparison" else None,
        "previous_url": _link(mode, params, date=shift(period, day, -1), view=keep_view),
        "next_url": _link(mode, params, date=shift(period, day, 1), view=keep_view),
        "period_urls": {p: _link(mode, params, period=p) for p in PERIODS},
        "mode_urls": {m: _link(m, {"period": period, "date": day}) for m in MODES},
        "data_url": _link(mode, params, view="data" if view == "chart" else None),
        "hidden_params": {k: v for k, v in params.items() if k != "date" and v not in (None, "")},
        "link": lambda **changes: _link(mode, params, **changes),
        "previous_name": t(PREVIOUS[period]),
    }
    if shown.result is not None:
        context.update(result=shown.result, has_data=shown.result.has_data)
    context["unpriced_from"] = unpriced_from(shown)
    if shown.chart is not None:
        context.update(chart_json=shown.chart.json(), chart_unit=shown.chart.spec["unit"])
    context.update(shown.extra)
    return await render(request, f"consumption/{mode}.html", **context)


router = Router(path="/", route_handlers=[consumption_home, consumption_page])
