"""Weekly load curves: a rate (W, or dm³/h) as a function of time, and its exact integral.

A curve is a table of one value per minute of a week in the site's *standard* local time (the zone's
offset without daylight saving, so the curve is periodic in UTC and its integral is a closed form),
linearly interpolated in between. ``total(t)`` is the exact integral of ``rate`` from the epoch (a
Monday, 00:00 standard local time, 2020-01-06) to ``t``: counters built on it never run backwards,
and a restarted simulator continues from (about) where it was.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

MINUTES_PER_WEEK = 7 * 24 * 60
WEEK_SECONDS = MINUTES_PER_WEEK * 60.0
_EPOCH_LOCAL = datetime(2020, 1, 6)  # a Monday


def standard_offset(tz: ZoneInfo) -> timedelta:
    """The zone's offset from UTC without daylight saving time."""
    probe = datetime(2020, 1, 15, 12, tzinfo=tz)
    return (probe.utcoffset() or timedelta()) - (probe.dst() or timedelta())


def _gauss(x: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((x - centre) / width) ** 2)


def _smooth_window(h: float, start: float, end: float, edge: float = 0.75) -> float:
    """~1 between start and end, ~0 outside, with smooth edges."""
    rise = 1 / (1 + math.exp(-(h - start) / (edge / 4)))
    fall = 1 / (1 + math.exp((h - end) / (edge / 4)))
    return rise * fall


def _noise(seed: str, minute: int) -> float:
    """Deterministic pseudo-random number in [-1, 1] for one minute of a device's week."""
    digest = hashlib.blake2b(f"{seed}:{minute}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 0xFFFFFFFF * 2 - 1


@dataclass(frozen=True)
class Shape:
    """A daily shape: base rate plus morning/evening peaks and a working-hours plateau (rate units)."""

    base: float
    morning: float = 0.0  # peak around 08:00
    evening: float = 0.0  # peak around 19:00
    daytime: float = 0.0  # plateau 08:30–18:00
    weekend: float = 0.35  # factor applied to peaks and plateau on Saturday and Sunday
    noise: float = 0.04  # relative, per minute

    def rate(self, day: int, hour: float) -> float:
        factor = 1.0 if day < 5 else self.weekend
        value = self.base
        value += factor * self.morning * _gauss(hour, 8.0, 1.1)
        value += self.evening * (0.8 + 0.2 * factor) * _gauss(hour, 19.0, 1.4)
        value += factor * self.daytime * _smooth_window(hour, 8.5, 18.0)
        return value


class WeeklyCurve:
    """``rate(t)`` (units/h) and ``total(t)`` (units) for UTC datetimes."""

    def __init__(self, shape: Shape, tz: ZoneInfo, seed: str) -> None:
        self.offset = standard_offset(tz)
        self.epoch = (_EPOCH_LOCAL - self.offset).replace(tzinfo=UTC)
        self._epoch_ts = self.epoch.timestamp()
        rates: list[float] = []
        for minute in range(MINUTES_PER_WEEK):
            day, minute_of_day = divmod(minute, 24 * 60)
            value = shape.rate(day, minute_of_day / 60.0) * (1 + shape.noise * _noise(seed, minute))
            rates.append(max(0.0, value))
        rates.append(rates[0])  # periodic
        self._rates = rates
        # cumulative integral at each minute boundary, in units (rate is per hour, a minute is 1/60 h)
        cumulative = [0.0]
        for i in range(MINUTES_PER_WEEK):
            cumulative.append(cumulative[-1] + (rates[i] + rates[i + 1]) / 2 / 60.0)
        self._cumulative = cumulative
        self.per_week = cumulative[-1]

    def _position(self, t: datetime) -> tuple[int, float, float]:
        seconds = (t - self.epoch).total_seconds()
        weeks, within = divmod(seconds, WEEK_SECONDS)
        minute, frac = divmod(within / 60.0, 1.0)
        return int(weeks), frac, int(minute)

    def rate(self, t: datetime) -> float:
        _, frac, i = self._position(t)
        return self._rates[i] + (self._rates[i + 1] - self._rates[i]) * frac

    def total(self, t: datetime) -> float:
        weeks, frac, i = self._position(t)
        r0, r1 = self._rates[i], self._rates[i + 1]
        partial = (r0 * frac + (r1 - r0) * frac * frac / 2) / 60.0
        return weeks * self.per_week + self._cumulative[i] + partial

    def total_at(self, ts: float) -> float:
        """``total`` for a POSIX timestamp (seconds): the same number, without datetime arithmetic
        (the demo history evaluates it a few hundred thousand times)."""
        weeks, within = divmod(ts - self._epoch_ts, WEEK_SECONDS)
        minute, frac = divmod(within / 60.0, 1.0)
        i = int(minute)
        r0, r1 = self._rates[i], self._rates[i + 1]
        partial = (r0 * frac + (r1 - r0) * frac * frac / 2) / 60.0
        return weeks * self.per_week + self._cumulative[i] + partial

    def local_standard(self, t: datetime) -> tuple[int, float]:
        """(weekday 0=Monday, hour of day) in standard local time."""
        local = t.astimezone(UTC).replace(tzinfo=None) + self.offset
        return local.weekday(), local.hour + local.minute / 60 + local.second / 3600
