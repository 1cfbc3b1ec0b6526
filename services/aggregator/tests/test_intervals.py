"""Unit tests of the pure interval logic: split, baseline, late/duplicate readings, resets, rollovers, gaps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from ews_aggregator.intervals import (
    GAP_MS,
    HOUR_MS,
    CounterBook,
    Outcome,
    hour_totals,
    interval_delta,
    split_hours,
)

EA = "energy_active_import"
T0 = int(datetime(2026, 5, 4, 10, 30, tzinfo=UTC).timestamp() * 1000)  # 10:30 UTC
H10 = T0 - 30 * 60_000


def at(minutes: float) -> int:
    return T0 + int(minutes * 60_000)


def test_split_within_one_hour():
    assert split_hours(at(0), at(20), 100) == [(H10, 100)]


def test_split_pro_rata_across_hours_adds_up_exactly():
    # 10:30 -> 12:15 = 105 min: 30 min in hour 10, 60 in hour 11, 15 in hour 12
    pieces = split_hours(at(0), at(105), 210_000)
    assert pieces == [(H10, 60_000), (H10 + HOUR_MS, 120_000), (H10 + 2 * HOUR_MS, 30_000)]
    odd = split_hours(at(0), at(105), 7)
    assert sum(p for _, p in odd) == 7 and all(p >= 0 for _, p in odd)


def test_split_ends_exactly_on_the_hour():
    assert split_hours(at(0), at(30), 50) == [(H10, 50)]
    with pytest.raises(ValueError):
        split_hours(at(10), at(10), 1)


def test_interval_delta_rules():
    assert interval_delta(100, 150, 0) == (50, Outcome.INTERVAL)
    assert interval_delta(5000, 3, 0) == (0, Outcome.RESET)  # reset / replaced meter
    wrap = 2**32 * 10 * 1000  # uint32 register, 10 Wh per count, in mWh
    assert interval_delta(wrap - 20_000, 30_000, wrap) == (50_000, Outcome.ROLLOVER)
    assert interval_delta(wrap // 2, 1000, wrap) == (0, Outcome.RESET)  # not near the top: a reset


def apply(book: CounterBook, minutes: float, value: int, wrap: int = 0):
    out: dict = {}
    outcome = book.apply("m1", EA, at(minutes), value, wrap, out)
    return outcome, {k[2]: v for k, v in out.items()}


def test_baseline_then_intervals():
    book = CounterBook()
    assert apply(book, 0, 1_000_000) == (Outcome.BASELINE, {})
    outcome, out = apply(book, 15, 1_000_500)
    assert outcome is Outcome.INTERVAL and out == {H10: [500, 0]}


def test_duplicates_change_nothing_and_a_larger_value_at_the_same_time_wins():
    book = CounterBook()
    apply(book, 0, 100)
    apply(book, 10, 200)
    assert apply(book, 10, 200) == (Outcome.DUPLICATE, {})
    assert apply(book, 10, 150) == (Outcome.DUPLICATE, {})
    outcome, out = apply(book, 10, 260)
    assert outcome is Outcome.REPLACED and out == {H10: [60, 0]}


def test_late_reading_splits_an_interval_without_changing_the_total():
    book = CounterBook(gap_ms=10 * HOUR_MS)
    apply(book, 0, 0)  # 10:30
    apply(book, 60, 600_000)  # 11:30: 300 000 in hour 10, 300 000 in hour 11
    outcome, out = apply(book, 15, 300_000)  # 10:45 arrives late
    # now 0 -> 300 000 over 10:30-10:45 (hour 10) and 300 000 -> 600 000 over 10:45-11:30 (15 + 30 min)
    assert outcome is Outcome.LATE
    assert out == {H10: [100_000, 0], H10 + HOUR_MS: [-100_000, 0]}
    assert sum(v[0] for v in out.values()) == 0  # the total never changes


def test_late_reading_moves_energy_between_hours():
    book = CounterBook(gap_ms=10 * HOUR_MS)
    apply(book, 0, 0)
    apply(book, 60, 600)  # 300/300
    _, out = apply(book, 20, 600)  # 10:50: everything before it -> hour 10 gets 600, hour 11 gets 0
    assert out == {H10: [300, 0], H10 + HOUR_MS: [-300, 0]}
    outcome, out = apply(book, 50, 600)  # 11:20 (flat): a late reading inside a long interval
    assert outcome is Outcome.LATE and all(v == [0, 0] for v in out.values())


def test_reset_counts_zero_and_continues_from_the_new_value():
    book = CounterBook()
    apply(book, 0, 5000)
    apply(book, 10, 5100)
    assert apply(book, 20, 3) == (Outcome.RESET, {})
    outcome, out = apply(book, 25, 10)
    assert outcome is Outcome.INTERVAL and out == {H10: [7, 0]}


def test_rollover_of_a_raw_register_counts_the_wrapped_delta():
    wrap = 65536 * 1000  # uint16 counter, 1 unit per count, milli-units
    book = CounterBook()
    apply(book, 0, wrap - 400, wrap)
    outcome, out = apply(book, 10, 600, wrap)
    assert outcome is Outcome.ROLLOVER and out == {H10: [1000, 0]}


def test_gap_is_spread_and_marked_estimated():
    book = CounterBook()
    apply(book, 0, 0)
    outcome, out = apply(book, 90, 9000)  # 10:30 -> 12:00: 90 min > 15 min gap
    assert GAP_MS == 15 * 60_000
    assert outcome is Outcome.INTERVAL
    assert out == {H10: [3000, 3000], H10 + HOUR_MS: [6000, 6000]}


def test_window_trims_and_older_readings_go_to_the_store_path():
    book = CounterBook(window=4)
    for i in range(8):
        apply(book, i, i * 10)
    counter = book.counters[("m1", EA)]
    assert len(counter.ts) == 4 and not counter.complete
    assert apply(book, 0.5, 5) == (Outcome.OLD, {})
    outcome, _ = apply(book, 6.5, 65)  # inside the window: handled in memory
    assert outcome is Outcome.LATE


def test_hour_totals_of_a_set_is_order_independent():
    readings = [(at(0), 0, 0), (at(10), 200, 0), (at(20), 300, 0), (at(10), 250, 0), (at(25), 10, 0)]
    assert hour_totals(readings) == hour_totals(list(reversed(readings)))
    assert hour_totals(readings) == {H10: [300, 0]}  # 250 wins at 10:40; 10 at 10:55 is a reset
    gap = [(at(0), 0, 0), (at(40), 400, 0)]  # 40 min without a reading: estimated
    assert hour_totals(gap) == {H10: [300, 300], H10 + HOUR_MS: [100, 100]}


def test_counters_are_independent_per_device_and_quantity():
    book = CounterBook()
    out: dict = {}
    book.apply("m1", EA, at(0), 10, 0, out)
    book.apply("m2", EA, at(0), 500, 0, out)
    book.apply("m1", "water_volume", at(0), 7, 0, out)
    book.apply("m1", EA, at(10), 15, 0, out)
    book.apply("m2", EA, at(10), 520, 0, out)
    book.apply("m1", "water_volume", at(10), 9, 0, out)
    assert sorted((k[0], k[1], v[0]) for k, v in out.items()) == [
        ("m1", EA, 5),
        ("m1", "water_volume", 2),
        ("m2", EA, 20),
    ]
