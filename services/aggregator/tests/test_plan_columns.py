"""Property-based: the columnar plan (``Aggregator.plan_columns``: whole-batch intervals for counters that
only grow their book, one by one otherwise) writes exactly what the reading-by-reading plan wrote — the
same rows of ``readings`` and ``counter_readings`` in the same order, the same hour corrections, the same
readings left to the store (older than the window), the same outcomes and the same book afterwards — for
any batches: late, duplicate and conflicting readings, resets, register rollovers, gaps, pulse meters,
several counters per reading, and windows small enough to be trimmed and overflowed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from ews_aggregator.aggregator import MILLI, Aggregator, counter_values
from ews_aggregator.columns import ReadingColumns, micros
from ews_aggregator.intervals import CounterBook, Outcome
from ews_contracts.events import ReadingTaken
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import Site
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the spring DST night in Paris
SITE = Site.model_validate(yaml.safe_load(BUNDLED_DEMO_SITE.read_text()))
PROFILES = load_profiles()


def sequential_plan(agg: Aggregator, readings: list[ReadingTaken]) -> dict:
    """The reading-by-reading plan this module replaced (its loop, verbatim in substance)."""
    hours: dict = {}
    outcomes: dict = {}
    raw, counters, old = [], [], []
    for reading in readings:
        ts = reading.occurred_at
        for q, v in reading.values.items():
            raw.append(("demo", reading.device, q, micros(ts), v, reading.profile, reading.event_id))
        ms = int(ts.timestamp() * 1000)
        dev = agg._devices.get(reading.device)
        if dev is not None and dev.pulse_weight is None:
            values = {q: v for q, v in reading.values.items() if q in COUNTERS}
        else:
            values = counter_values(reading, agg.site, dev)
        for quantity, value in values.items():
            if not math.isfinite(value):
                outcomes["invalid"] = outcomes.get("invalid", 0) + 1
                continue
            milli = round(value * MILLI)
            wrap = agg._wrap(reading.device, quantity)
            outcome = agg.book.apply(reading.device, quantity, ms, milli, wrap, hours)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome is Outcome.DUPLICATE:
                continue
            counters.append(("demo", reading.device, quantity, micros(ts), milli, wrap, agg.batch + 1))
            if outcome is Outcome.OLD:
                old.append((reading.device, quantity, ms))
    return {"hours": hours, "raw": raw, "counters": counters, "old": old, "outcomes": outcomes}


COUNTERS = {"energy_active_import", "energy_active_export", "water_volume", "gas_volume"}


def columnar_plan(agg: Aggregator, readings: list[ReadingTaken]) -> dict:
    plan = agg.plan_columns(ReadingColumns.from_readings(readings))
    raw = plan.raw.to_pydict()
    counters = plan.counters.to_pydict()
    return {
        "hours": plan.hours,
        "raw": list(
            zip(
                raw["site"],
                raw["device"],
                raw["quantity"],
                [micros(t) for t in raw["ts"]],
                raw["value"],
                raw["profile"],
                raw["event_id"],
                strict=True,
            )
        ),
        "counters": list(
            zip(
                counters["site"],
                counters["device"],
                counters["quantity"],
                [micros(t) for t in counters["ts"]],
                counters["value_milli"],
                counters["wrap_milli"],
                counters["batch"],
                strict=True,
            )
        ),
        "old": plan.old,
        "outcomes": plan.outcomes,
    }


def book_state(book: CounterBook) -> dict:
    return {k: (c.ts, c.values, c.wraps, c.complete) for k, c in book.counters.items()}


def nonzero(hours: dict) -> dict:
    return {k: v for k, v in hours.items() if v != [0, 0]}


# one reading: (device, seconds after the previous one (0: same time; negative: late), change, amount)
reading_step = st.tuples(
    st.sampled_from(["e2", "e2", "e2", "m1", "water", "unknown"]),
    st.one_of(
        st.integers(1, 600),
        st.integers(1, 600),
        st.integers(600, 3 * 3600),
        st.integers(-3600, -1),
        st.integers(-30_000, -3600),
        st.just(0),
    ),
    st.sampled_from(["use", "use", "use", "same", "reset", "wrap", "nan"]),
    st.integers(0, 50_000),
)
WRAP_WH = 2**32 * 10  # e2's and m1's Ea+: a uint32 of 10 Wh (energy-meter-rs485-3ph)


@st.composite
def batches(draw):
    steps = draw(st.lists(reading_step, min_size=1, max_size=150))
    clock = {d: T0 for d in ("e2", "m1", "water", "unknown")}
    value = {d: draw(st.sampled_from([0, 10**6, WRAP_WH - 3_000_000])) * 1.0 for d in clock}
    readings = []
    for device, seconds, change, amount in steps:
        if seconds:
            clock[device] += timedelta(seconds=seconds, milliseconds=draw(st.sampled_from([0, 0, 250, 999])))
        if change == "use":
            value[device] += amount / 10
        elif change == "reset":
            value[device] = amount / 100
        elif change == "wrap":  # past the top of the raw register: a rollover (or a reset if too far)
            value[device] = (value[device] + amount * 40) % WRAP_WH
        v = math.nan if change == "nan" else value[device]
        if device == "water":
            values = {"pulse_count": v}
        elif device == "m1":
            values = {"power_active": 5.0, "energy_active_import": v, "energy_active_export": v / 2}
        else:
            values = {"energy_active_import": v, "power_active": 1.0}
        readings.append(
            ReadingTaken(
                event_id=f"r{len(readings)}",
                site="demo",
                device=device,
                profile="p",
                occurred_at=clock[device],
                values=values,
            )
        )
    cuts = sorted(draw(st.lists(st.integers(0, len(readings)), max_size=4)))
    return [readings[a:b] for a, b in zip([0, *cuts], [*cuts, len(readings)], strict=True)]


def aggregators(window: int) -> tuple[Aggregator, Aggregator]:
    pair = []
    for _ in range(2):
        agg = Aggregator(store=None, database="x", site=SITE, profiles=PROFILES)  # type: ignore[arg-type]
        agg.book = CounterBook(agg.gap_ms, window=window)
        pair.append(agg)
    return pair[0], pair[1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from([2, 3, 5, 64]))
def test_columnar_plan_writes_what_the_sequential_plan_wrote(parts, window):
    reference, columnar = aggregators(window)
    for part in parts:
        want = sequential_plan(reference, part)
        got = columnar_plan(columnar, part)
        assert got["raw"] == want["raw"] or _same_nan(got["raw"], want["raw"])
        assert got["counters"] == want["counters"]
        assert nonzero(got["hours"]) == nonzero(want["hours"])
        assert got["old"] == want["old"]
        assert got["outcomes"] == want["outcomes"]
        assert book_state(columnar.book) == book_state(reference.book)
        reference.batch += 1
        columnar.batch += 1


def _same_nan(a: list, b: list) -> bool:
    norm = [tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in row) for row in a]
    return norm == [tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in row) for row in b]


def test_a_long_batch_of_new_readings_takes_the_bulk_path():
    reference, columnar = aggregators(64)
    readings = [
        ReadingTaken(
            event_id=f"r{i}",
            site="demo",
            device=f"{'e2' if i % 2 else 'm1'}",
            profile="p",
            occurred_at=T0 + timedelta(seconds=7 * i),
            values={"energy_active_import": 1000.0 + 3.3 * i, "power_active": 1.0},
        )
        for i in range(3000)
    ]
    for part in (readings[:1000], readings[1000:]):
        want, got = sequential_plan(reference, part), columnar_plan(columnar, part)
        assert nonzero(got["hours"]) == nonzero(want["hours"]) and got["counters"] == want["counters"]
        assert got["outcomes"] == want["outcomes"]
        assert book_state(columnar.book) == book_state(reference.book)
        reference.batch += 1
        columnar.batch += 1


@pytest.mark.parametrize("size,added", [(s, a) for s in range(0, 12) for a in range(0, 30)])
def test_window_after_matches_appending_one_by_one(size, added):
    from ews_aggregator.aggregator import _window_after

    window = 4
    length, trimmed = size, False
    for _ in range(added):
        length += 1
        if length >= 2 * window:
            length, trimmed = window, True
    assert _window_after(size, added, window) == (length, trimmed)
