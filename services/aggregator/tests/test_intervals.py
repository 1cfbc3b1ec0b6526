"""Unit tests of the pure interval logic: pro rata split, baseline, duplicates, resets, redelivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ews_aggregator.intervals import CounterBook, CounterReading, HourRow, Outcome, split_hours

T0 = datetime(2026, 5, 4, 10, 30, tzinfo=UTC)
EA = "energy_active_import"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_split_within_one_hour():
    assert split_hours(at(0), at(20), 100.0) == [(datetime(2026, 5, 4, 10, tzinfo=UTC), 100.0)]


def test_split_pro_rata_across_hours():
    # 10:30 -> 12:15 = 105 min: 30 min in hour 10, 60 in hour 11, 15 in hour 12
    pieces = split_hours(at(0), at(105), 210.0)
    assert [h.hour for h, _ in pieces] == [10, 11, 12]
    assert [v for _, v in pieces] == pytest.approx([60.0, 120.0, 30.0])
    assert sum(v for _, v in pieces) == 210.0


def test_split_ends_exactly_on_the_hour():
    pieces = split_hours(at(0), at(30), 50.0)  # 10:30 -> 11:00: nothing in hour 11
    assert pieces == [(datetime(2026, 5, 4, 10, tzinfo=UTC), 50.0)]


def test_split_pieces_add_up_exactly():
    pieces = split_hours(at(0.001), at(60 * 7 + 0.37), 1 / 3)
    assert sum(v for _, v in pieces) == 1 / 3
    assert len(pieces) == 8


def test_split_rejects_empty_interval():
    with pytest.raises(ValueError):
        split_hours(at(5), at(5), 1.0)


def apply(book: CounterBook, minutes: float, value: float, changed=None):
    changed = {} if changed is None else changed
    return book.apply("m1", EA, at(minutes), value, changed), changed


def test_first_reading_is_the_baseline():
    book = CounterBook()
    step, changed = apply(book, 0, 1_000_000.0)
    assert step.outcome is Outcome.BASELINE and changed == {}
    assert book.counters[("m1", EA)] == CounterReading(at(0), 1_000_000.0)


def test_consecutive_readings_fill_the_open_hour():
    book = CounterBook()
    changed: dict = {}
    apply(book, 0, 1000.0, changed)
    apply(book, 10, 1100.0, changed)
    step, _ = apply(book, 20, 1250.0, changed)
    assert step.outcome is Outcome.INTERVAL and step.delta == 150.0
    hour = datetime(2026, 5, 4, 10, tzinfo=UTC)
    assert changed == {("m1", EA, hour): HourRow("m1", EA, hour, 250.0, at(20))}
    assert book.open_hours[("m1", EA)].value == 250.0


def test_interval_across_hours_creates_rows_per_hour():
    book = CounterBook()
    changed: dict = {}
    apply(book, 0, 0.0, changed)
    apply(book, 90, 90.0, changed)  # 10:30 -> 12:00: 30 in hour 10, 60 in hour 11
    values = {k[2].hour: r.value for k, r in changed.items()}
    assert values == pytest.approx({10: 30.0, 11: 60.0})
    assert book.open_hours[("m1", EA)].hour.hour == 11


def test_duplicate_and_late_readings_make_no_interval():
    book = CounterBook()
    apply(book, 0, 100.0)
    apply(book, 10, 200.0)
    step, changed = apply(book, 10, 200.0)  # same reading again
    assert step.outcome is Outcome.STALE and changed == {}
    step, changed = apply(book, 5, 150.0)  # late
    assert step.outcome is Outcome.STALE and changed == {}
    assert book.counters[("m1", EA)] == CounterReading(at(10), 200.0)
    assert book.open_hours[("m1", EA)].value == 100.0


def test_reset_counts_zero_and_continues_from_the_new_value():
    book = CounterBook()
    apply(book, 0, 5000.0)
    apply(book, 10, 5100.0)
    step, changed = apply(book, 20, 3.0)  # meter replaced
    assert step.outcome is Outcome.RESET and changed == {}
    step, changed = apply(book, 30, 10.0)
    assert step.outcome is Outcome.INTERVAL and step.delta == 7.0
    assert book.open_hours[("m1", EA)].value == 107.0


def test_not_a_number_is_ignored():
    book = CounterBook()
    apply(book, 0, 1.0)
    step, changed = apply(book, 10, float("nan"))
    assert step.outcome is Outcome.INVALID and changed == {}
    assert book.counters[("m1", EA)].value == 1.0


def test_redelivery_after_a_crash_is_not_counted_twice():
    """Hour rows were written up to 10:50 but the counter state only up to 10:30 (crash in between)."""
    hour = datetime(2026, 5, 4, 10, tzinfo=UTC)
    book = CounterBook(
        counters={("m1", EA): CounterReading(at(0), 100.0)},
        open_hours={("m1", EA): HourRow("m1", EA, hour, 70.0, at(20))},
    )
    step, changed = apply(book, 10, 130.0)
    assert step.outcome is Outcome.ALREADY_COUNTED and changed == {}
    step, changed = apply(book, 20, 170.0)
    assert step.outcome is Outcome.ALREADY_COUNTED and changed == {}
    step, changed = apply(book, 25, 180.0)
    assert step.outcome is Outcome.INTERVAL
    assert changed[("m1", EA, hour)].value == 80.0


def test_copy_leaves_the_original_untouched():
    book = CounterBook()
    apply(book, 0, 1.0)
    draft = book.copy()
    draft.apply("m1", EA, at(10), 2.0, {})
    assert book.counters[("m1", EA)].value == 1.0
    assert ("m1", EA) not in book.open_hours


def test_counters_are_independent_per_device_and_quantity():
    book = CounterBook()
    changed: dict = {}
    book.apply("m1", EA, at(0), 10.0, changed)
    book.apply("m2", EA, at(0), 500.0, changed)
    book.apply("m1", "water_volume", at(0), 7.0, changed)
    book.apply("m1", EA, at(10), 15.0, changed)
    book.apply("m2", EA, at(10), 520.0, changed)
    book.apply("m1", "water_volume", at(10), 9.0, changed)
    assert sorted((k[0], k[1], r.value) for k, r in changed.items()) == [
        ("m1", EA, 5.0),
        ("m1", "water_volume", 2.0),
        ("m2", EA, 20.0),
    ]
