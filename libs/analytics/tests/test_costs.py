"""One rule for the hours before the first tariff: no price is in force before its ``effective_from``
(local date), so those hours cost 0 and carry no standing charge; from that local midnight on, the
tariff's prices, time-of-use windows and standing charges apply. The aggregator prices hours with
``PriceBook`` at ingest, the queries add ``standing_charges``: both follow ``tariff_in_force``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import yaml
from ews_analytics import PriceBook, priced_from, standing_charges, tariff_in_force
from ews_contracts.site import Site

EA, WATER, GAS = "energy_active_import", "water_volume", "gas_volume"

BASE = """
site: demo
name: Tariff edge cases
timezone: Europe/Paris
currency: EUR
gateways: [{id: gw1, host: 127.0.0.1}]
devices:
  - {id: m1, name: M1, profile: multifunction-meter-412045, gateway: gw1, address: 1}
"""


def site_with(tariffs: list[dict]) -> Site:
    return Site.model_validate({**yaml.safe_load(BASE), "tariffs": tariffs})


def epoch(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def per_kwh(book: PriceBook, quantity: str, hour_epoch: int) -> float:
    return round(book.per_unit(quantity, hour_epoch) * 1000, 9)


FIRST = {
    "electricity_per_kwh": 0.20,
    "water_per_m3": 4.0,
    "gas_per_m3": 1.0,
    "electricity_standing_per_day": 0.5,
    "gas_standing_per_day": 0.25,
    # the first tariff's windows apply from its date only, like its base prices
    "time_of_use": [{"name": "night", "start": "22:00", "end": "06:00", "electricity_per_kwh": 0.10}],
}


def test_hours_are_whole_the_last_hour_before_is_unpriced_the_first_after_priced():
    site = site_with([{"effective_from": "2026-05-04", **FIRST}])
    book = PriceBook(site)
    assert priced_from(site) == date(2026, 5, 4)
    assert tariff_in_force(site, date(2026, 5, 3)) is None
    assert tariff_in_force(site, date(2026, 5, 4)) is site.tariffs[0]
    # 2026-05-03 23:00 CEST (21:00 UTC) is in the night window, but no tariff is in force yet
    assert per_kwh(book, EA, epoch(2026, 5, 3, 21)) == 0.0
    assert per_kwh(book, WATER, epoch(2026, 5, 3, 21)) == 0.0
    assert per_kwh(book, GAS, epoch(2026, 5, 3, 21)) == 0.0
    # 2026-05-04 00:00 CEST (22:00 UTC the day before): the tariff's first hour, night window
    assert per_kwh(book, EA, epoch(2026, 5, 3, 22)) == 0.10
    assert per_kwh(book, WATER, epoch(2026, 5, 3, 22)) == 4.0
    assert per_kwh(book, EA, epoch(2026, 5, 4, 10)) == 0.20  # 12:00 local: base price
    # long before: nothing, whatever the hour
    assert all(per_kwh(book, EA, epoch(2020, 1, 1, h)) == 0.0 for h in range(24))


def test_standing_charges_follow_the_same_rule():
    site = site_with([{"effective_from": "2026-05-04", **FIRST}])
    charges = standing_charges(
        site, ("electricity", "gas"), date(2026, 5, 1), date(2026, 5, 8), today=date(2026, 5, 6)
    )
    assert charges == {date(2026, 5, 4): 0.75, date(2026, 5, 5): 0.75, date(2026, 5, 6): 0.75}


@pytest.mark.parametrize(
    ("effective_from", "last_unpriced_utc", "first_priced_utc"),
    [
        # spring forward: 2026-03-29 has 23 hours; its first hour is 00:00 CET = 23:00 UTC the day before
        ("2026-03-29", (2026, 3, 28, 22), (2026, 3, 28, 23)),
        # the day after spring forward: 00:00 CEST = 22:00 UTC
        ("2026-03-30", (2026, 3, 29, 21), (2026, 3, 29, 22)),
        # fall back: 2026-10-25 has 25 hours, all priced; 00:00 CEST = 22:00 UTC the day before
        ("2026-10-25", (2026, 10, 24, 21), (2026, 10, 24, 22)),
        # the day after fall back: all 25 hours of the 25th unpriced; 00:00 CET = 23:00 UTC
        ("2026-10-26", (2026, 10, 25, 22), (2026, 10, 25, 23)),
    ],
)
def test_dst_days(effective_from: str, last_unpriced_utc: tuple, first_priced_utc: tuple):
    site = site_with([{"effective_from": effective_from, "electricity_per_kwh": 0.2}])
    book = PriceBook(site)
    assert per_kwh(book, EA, epoch(*last_unpriced_utc)) == 0.0
    assert per_kwh(book, EA, epoch(*first_priced_utc)) == 0.2
    first = datetime(*first_priced_utc, tzinfo=UTC)
    local_day = first.astimezone(site.tz).date()
    assert local_day == date.fromisoformat(effective_from)
    hours = [first + timedelta(hours=h) for h in range(30)]
    day_hours = [h for h in hours if h.astimezone(site.tz).date() == local_day]
    assert len(day_hours) == {"2026-03-29": 23, "2026-10-25": 25}.get(effective_from, 24)
    assert all(per_kwh(book, EA, int(h.timestamp())) == 0.2 for h in day_hours)
    before = [first - timedelta(hours=h) for h in range(1, 30)]
    assert all(per_kwh(book, EA, int(h.timestamp())) == 0.0 for h in before)


def test_a_tariff_starting_mid_history_changes_prices_at_its_local_midnight():
    site = site_with(
        [
            {"effective_from": "2026-05-04", **FIRST},
            {"effective_from": "2026-06-01", "electricity_per_kwh": 0.30, "gas_per_m3": 1.5},
        ]
    )
    book = PriceBook(site)
    assert per_kwh(book, EA, epoch(2026, 5, 31, 10)) == 0.20
    assert per_kwh(book, EA, epoch(2026, 5, 31, 21)) == 0.10  # 23:00 CEST, May 31st: night window
    assert per_kwh(book, EA, epoch(2026, 5, 31, 22)) == 0.30  # 00:00 CEST, June 1st: the new tariff
    assert per_kwh(book, GAS, epoch(2026, 5, 31, 22)) == 1.5
    assert per_kwh(book, WATER, epoch(2026, 5, 31, 22)) == 0.0  # the new tariff does not price water
    charges = standing_charges(site, ("electricity",), date(2026, 5, 30), date(2026, 6, 3), date(2026, 6, 5))
    assert charges == {date(2026, 5, 30): 0.5, date(2026, 5, 31): 0.5}  # the new tariff has none


def test_a_first_tariff_in_the_future_prices_nothing_yet():
    today = date(2026, 5, 4)
    site = site_with([{"effective_from": "2027-01-01", **FIRST}])
    book = PriceBook(site)
    assert priced_from(site) == date(2027, 1, 1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert all(per_kwh(book, EA, int((start + timedelta(hours=h)).timestamp())) == 0.0 for h in range(3000))
    assert standing_charges(site, ("electricity", "gas"), date(2026, 1, 1), date(2027, 1, 1), today) == {}
    # once its date has come (the configuration never moves it before tomorrow), it prices as usual
    assert per_kwh(book, EA, epoch(2027, 1, 1, 11)) == 0.20
    assert standing_charges(site, ("gas",), date(2027, 1, 1), date(2027, 1, 2), date(2027, 1, 1)) == {
        date(2027, 1, 1): 0.25
    }


def test_in_a_half_hour_zone_an_hour_belongs_to_the_local_day_it_starts_in():
    """UTC hours are the storage grain: in Kolkata (UTC+05:30) the hour from 23:30 on the day before
    the first tariff is unpriced as a whole (it counts in that day), the next one (00:30) priced."""
    site = site_with([{"effective_from": "2026-05-04", "electricity_per_kwh": 0.2}])
    site = Site.model_validate({**site.model_dump(mode="json"), "timezone": "Asia/Kolkata"})
    book = PriceBook(site)
    assert per_kwh(book, EA, epoch(2026, 5, 3, 18)) == 0.0  # 23:30–00:30 local
    assert per_kwh(book, EA, epoch(2026, 5, 3, 19)) == 0.2  # 00:30–01:30 local, May 4th
