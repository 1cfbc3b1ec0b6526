"""Property-based: the incremental, order-independent book equals a plain reference implementation.

Arbitrary counter histories with resets, rollovers of the raw register, gaps, duplicates, conflicting
duplicates and any delivery order give, per hour and in total, exactly what the reference computes from
the sorted set of readings — and the total is the true consumption to the Wh.
"""

from __future__ import annotations

from fractions import Fraction

from ews_aggregator.intervals import GAP_MS, HOUR_MS, WRAP_FRACTION, CounterBook
from hypothesis import given, settings
from hypothesis import strategies as st

WRAP = 65536 * 1000  # a uint16 register, 1 unit per count, in milli-units
T0 = 1_790_000_000_000  # ms, some time in 2026


def reference(readings: list[tuple[int, int]]) -> tuple[int, dict[int, Fraction], dict[int, Fraction]]:
    """Plain reference: sort distinct readings (larger value wins at equal time), take consecutive
    pairs, delta = difference, or the wrapped difference when the register wrapped near its top, or 0
    (reset); spread each delta over the hours exactly (fractions); gaps count as estimated."""
    by_time: dict[int, int] = {}
    for ts, value in readings:
        by_time[ts] = max(value, by_time.get(ts, value))
    ordered = sorted(by_time.items())
    total = 0
    hours: dict[int, Fraction] = {}
    estimated: dict[int, Fraction] = {}
    for (t0, v0), (t1, v1) in zip(ordered, ordered[1:], strict=False):
        delta = v1 - v0
        if delta < 0:
            delta = delta + WRAP if 0 <= delta + WRAP <= WRAP / WRAP_FRACTION else 0
        total += delta
        t = t0
        while t < t1:
            hour = t // HOUR_MS * HOUR_MS
            end = min(t1, hour + HOUR_MS)
            piece = Fraction(delta * (end - t), t1 - t0)
            hours[hour] = hours.get(hour, Fraction(0)) + piece
            if t1 - t0 > GAP_MS:
                estimated[hour] = estimated.get(hour, Fraction(0)) + piece
            t = end
    return total, hours, estimated


# one step of the meter's life: (seconds since the previous reading, event, amount)
step = st.tuples(
    st.one_of(st.integers(1, 900), st.integers(900, 4 * 3600)),  # polls and gaps
    st.sampled_from(["use", "use", "use", "use", "reset", "rollover"]),
    st.integers(0, 400_000),
)


@st.composite
def histories(draw):
    """A counter's true history: readings in time order and the true consumption."""
    value = draw(st.integers(0, WRAP - 1))
    t = T0 + draw(st.integers(0, HOUR_MS))
    readings = [(t, value)]
    true_total = 0
    for seconds, event, amount in draw(st.lists(step, min_size=0, max_size=40)):
        t += seconds * 1000
        if event == "reset":  # meter replaced: a new index, lower than the old one (not near the top)
            value = draw(st.integers(0, max(0, min(value - 1, WRAP // 2))))
            if value >= readings[-1][1]:
                value = 0
            if readings[-1][1] - value > WRAP - WRAP // WRAP_FRACTION:  # would look like a wrap
                value = readings[-1][1]
        elif event == "rollover":  # the raw register passes its top
            gain = min(amount, WRAP // WRAP_FRACTION)
            true_total += gain
            value = (value + gain) % WRAP
        else:
            gain = amount % (WRAP // WRAP_FRACTION)
            if value + gain >= WRAP:  # a plain use step that wraps is a rollover too
                value = value + gain - WRAP
            else:
                value += gain
            true_total += gain
        readings.append((t, value))
    return readings, true_total


@settings(max_examples=300, deadline=None)
@given(history=histories(), data=st.data())
def test_book_equals_reference_whatever_the_order(history, data):
    readings, _ = history
    # deliveries: every reading at least once, some twice, some conflicting duplicates, any order
    delivered = list(readings)
    delivered += data.draw(st.lists(st.sampled_from(readings), max_size=10)) if readings else []
    conflicts = data.draw(st.lists(st.tuples(st.sampled_from(readings), st.integers(1, 50)), max_size=3))
    delivered += [(ts, max(0, value - d)) for (ts, value), d in conflicts]  # smaller: never wins
    order = data.draw(st.permutations(delivered))

    book = CounterBook()
    out: dict = {}
    for ts, value in order:
        book.apply("m1", "energy_active_import", ts, value, WRAP, out)

    total, hours, estimated = reference(readings)
    got = {k[2]: v for k, v in out.items()}
    assert sum(v[0] for v in got.values()) == total  # to the milli-unit
    for hour in set(hours) | set(got):
        value, est = got.get(hour, [0, 0])
        assert abs(value - hours.get(hour, 0)) < 1  # cumulative floor vs exact fraction: < 1 milli-unit
        assert abs(est - estimated.get(hour, 0)) < 1
        assert value >= 0 and est >= 0  # never a negative bar


@settings(max_examples=200, deadline=None)
@given(history=histories())
def test_in_order_total_is_the_true_consumption(history):
    readings, true_total = history
    book = CounterBook(window=8)  # trimming never matters in order
    out: dict = {}
    resets = 0
    for ts, value in readings:
        outcome = book.apply("m1", "energy_active_import", ts, value, WRAP, out)
        resets += outcome == "reset"
    counted = sum(v[0] for v in out.values())
    total, _, _ = reference(readings)
    assert counted == total
    assert counted <= true_total  # a reset loses at most its own interval, never adds a spike
    if resets == 0:
        assert counted == true_total
