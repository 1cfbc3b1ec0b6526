"""Demo history: on the first start of the bundled demo site, ten years of plausible readings.

A fresh demo would show one bar (today) in every chart. So on the first start of a data folder, before
the simulator serves its gateways (``ews up`` starts the poller once they answer), this module publishes
``ReadingTaken`` events for every demo device with counters (meters, pulse meters, EV stations) through
the normal path: the same model, subjects and ``Nats-Msg-Id`` (``<site>.<device>.<epoch ms>``) as the
poller, into ``EWS_READINGS``, where the aggregator accounts them like live readings.

- **When**: only for the bundled demo site (never for a site file of one's own), only when the data
  folder's marker (``demo-history.json``) says nothing was done yet *and* the stream holds no reading of
  the site (a data folder from before this feature keeps its counters: ``skipped``). The marker is
  written ``publishing`` first and ``done`` at the end, so an interrupted run publishes again on the next
  start (deterministic ids: JetStream drops the duplicates, the aggregator ignores them) and a finished
  one never does. ``EWS_DEMO_HISTORY=0`` turns it off.
- **Counters**: the simulated meters count from the history's origin (1 January of the first year of the
  decade chart: this year and the nine before; the marker keeps it, so restarts count from the same
  origin) instead of the curves' 2020 epoch; a demo without history keeps the epoch. The
  history ends at the simulator's own counters at ``end`` (decoded from the register image as a poller
  would), and the live simulator, built later, continues from there: counters only go up, from 0 at the
  origin, far below every register's range.
- **Shape**: the same weekly load curves as the live simulator (``curves.py``), weighted day by day by a
  season (gas and the heat pump in winter, water in summer), the weather, office holidays and a slow
  efficiency trend, then scaled so the whole history adds up exactly to the counter at ``end``. EV
  stations charge in sessions (arrival in the morning, a few hours at 16 A or 32 A, more stations used
  as the years go by).
- **Resolution**: a reading every 15 minutes for the last 13 months and the current one (intervals of
  15 minutes are not "estimated" for the aggregator), one a day (local midnight) before: those older
  hours are spread evenly over each day and honestly marked estimated. Only the active energy of the
  electricity meters (and the volume of pulse meters): ~750,000 readings, ~1.7 million hourly rows.
- **Pace**: the publisher waits while the aggregator is more than ``BACKLOG_*`` readings behind (a daily
  reading makes 24 hourly rows): a flood would outlast the aggregator's ack wait and be redelivered.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ews_contracts.profiles import Profile
from ews_contracts.quantities import Quantity
from ews_contracts.rebuild import AGGREGATOR_DURABLE
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import Device, Site
from ews_contracts.streams import READINGS
from ews_contracts.subjects import Kind, pattern, subject

from .curves import standard_offset
from .site import SimulatedSite
from .twins import DAILY_ENERGY, ElectricMeterTwin, EvStationTwin, PulseTwin, _chance, station_usage

log = logging.getLogger("ews.simulator.history")

MARKER = "demo-history.json"
YEARS = 10  # the origin: 1 January of the first year of the decade chart (this year and the 9 before)
DENSE_MONTHS = 13  # a reading every DENSE_STEP from the 1st of the month DENSE_MONTHS months ago
DENSE_STEP = 900  # seconds: the aggregator's gap threshold (15 min) — these hours are not estimated
RAMP_DAYS = 7.0  # the season fades out over the last days: the live simulator's curves have none
MAX_PENDING = 20_000  # publishes waiting for their JetStream ack
ACK_EVERY = 50  # one publish in ACK_EVERY asks for JetStream's ack (it confirms the ones before)
# Readings stored in the stream but not yet accounted by the aggregator: beyond this the publisher waits.
# The aggregator takes up to 4 batches at once and JetStream redelivers what it has not acked within 15 s,
# so a flood would be delivered again and again; a daily reading (24 hourly rows) costs ~20× the work
# of a 15-minute one.
BACKLOG_SPARSE = 12_000
BACKLOG_DENSE = 150_000  # 15-minute readings are cheap: 4 batches of them take a few seconds
STALL = 30.0  # seconds without progress of the aggregator before the publisher stops waiting for it
NO_CONSUMER = 120.0  # seconds to wait for the aggregator's consumer to appear (it starts in parallel)
ACCOUNTED_TIMEOUT = 600.0  # seconds the end line waits for the aggregator

# Only the active energy of the electricity meters (reactive and apparent energy start with the live
# readings): every counter costs the aggregator ~90,000 hourly rows over ten years.
ELECTRIC_COUNTERS = (Quantity.ENERGY_ACTIVE_IMPORT,)
PULSES = str(Quantity.PULSE_COUNT)
MEDIUM_QUANTITY = {"water": Quantity.WATER_VOLUME, "gas": Quantity.GAS_VOLUME}


# --- when ------------------------------------------------------------------------------------------


def is_bundled_demo(settings: Settings) -> bool:
    """The site is the bundled demo (no EWS_SITE_FILE, or the bundled file itself)."""
    return settings.site_path.resolve() == BUNDLED_DEMO_SITE.resolve()


def eligible(settings: Settings) -> bool:
    return bool(settings.demo_history) and is_bundled_demo(settings)


def marker_path(settings: Settings) -> Path:
    return settings.data_dir / MARKER


def read_marker(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(marker_path(settings).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("demo history: %s unreadable (%s): left as it is", marker_path(settings), exc)
        return {"state": "unreadable"}


def write_marker(settings: Settings, marker: dict[str, Any]) -> None:
    path = marker_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def origin_for(now: datetime, site: Site, years: int = YEARS) -> datetime:
    """1 January (site time) of the first of the ``years`` years ending with ``now``'s, in UTC."""
    year = now.astimezone(site.tz).year - years + 1
    return datetime(year, 1, 1, tzinfo=site.tz).astimezone(UTC)


@dataclass
class HistoryPlan:
    """What the simulator does on this start: count from ``origin``; publish when ``publish``."""

    origin: datetime | None
    end: datetime | None = None
    publish: bool = False


async def _site_has_readings(settings: Settings, site: str) -> bool:
    import nats

    nc = await nats.connect(
        settings.nats_url,
        name="simulator-history",
        connect_timeout=3,
        max_reconnect_attempts=2,
        reconnect_time_wait=0.5,
    )
    try:
        js = nc.jetstream()
        from ews_contracts.bus import ensure_streams_with

        await ensure_streams_with(js)
        info = await js.stream_info(READINGS.name, subjects_filter=pattern(site, Kind.READING))
        return bool(info.state.subjects)
    finally:
        await nc.close()


async def plan(settings: Settings, now: datetime | None = None) -> HistoryPlan:
    """Decide from the marker (and, on a data folder without one, the readings stream)."""
    if not eligible(settings):
        return HistoryPlan(origin=None)
    marker = read_marker(settings)
    if marker is not None:
        state = marker.get("state")
        origin = datetime.fromisoformat(marker["origin"]) if marker.get("origin") else None
        if state == "publishing" and origin is not None and marker.get("end"):
            return HistoryPlan(origin, datetime.fromisoformat(marker["end"]), publish=True)
        return HistoryPlan(origin)
    site = settings.site
    try:
        existing = await _site_has_readings(settings, site.site)
    except Exception as exc:  # NATS not reachable: decide on a later start
        log.warning("demo history: cannot check the readings stream (%s): not generated this time", exc)
        return HistoryPlan(origin=None)
    if existing:  # a data folder from before the demo history: its counters stay as they were
        write_marker(settings, {"state": "skipped", "reason": "the stream already holds readings"})
        return HistoryPlan(origin=None)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    origin = origin_for(now, site)
    write_marker(settings, {"state": "publishing", "origin": origin.isoformat(), "end": now.isoformat()})
    return HistoryPlan(origin, now, publish=True)


# --- how much, and when ----------------------------------------------------------------------------


def grid(site: Site, origin: datetime, end: datetime) -> list[int]:
    """Reading times (POSIX seconds): local midnights from ``origin``, then every ``DENSE_STEP`` from the
    1st of the month ``DENSE_MONTHS`` months before ``end``'s month, then ``end`` itself."""
    tz = site.tz
    local_end = end.astimezone(tz)
    months = local_end.year * 12 + local_end.month - 1 - DENSE_MONTHS
    dense_from = datetime(months // 12, months % 12 + 1, 1, tzinfo=tz)
    times: list[int] = []
    day = origin.astimezone(tz).date()
    while day < dense_from.date():
        times.append(int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()))
        day += timedelta(days=1)
    t, end_ts = int(dense_from.timestamp()), int(end.timestamp())
    while t < end_ts:
        times.append(t)
        t += DENSE_STEP
    times.append(end_ts)
    return times


@dataclass(frozen=True)
class Season:
    """Day-by-day weight of a device's load curve."""

    amplitude: float  # + more in winter (peak mid-January), − more in summer
    weather: float  # day-to-day variation
    holidays: float  # factor on office holidays (3 weeks of August, Christmas to New Year)
    trend: float  # per year back: older years used a little more (efficiency gains)


ELECTRICITY = Season(0.15, 0.05, 0.7, 0.015)
HEATING = Season(0.55, 0.12, 0.85, 0.02)  # the heat pump, and the HVAC feeder it is part of
GAS = Season(0.85, 0.2, 0.8, 0.02)  # the boiler: heating
WATER = Season(-0.15, 0.08, 0.6, 0.01)
SEASONS = {"gen1": HEATING, "m1": Season(0.3, 0.08, 0.75, 0.015)}


def season_of(device: Device) -> Season:
    if device.medium == "gas":
        return GAS
    if device.medium == "water":
        return WATER
    return SEASONS.get(device.id, ELECTRICITY)


def holiday(day: date) -> bool:
    return (
        (day.month == 8 and day.day <= 21)
        or (day.month == 12 and day.day >= 24)
        or (day.month == 1 and day.day == 1)
    )


@functools.lru_cache(maxsize=8192)
def _weather(ordinal: int) -> float:
    """A day's weather in [-1, 1] (shared by every device: a cold day is cold for all), smoothed."""
    return (
        2 * _chance("weather", ordinal) + _chance("weather", ordinal - 1) + _chance("weather", ordinal + 1)
    ) / 2 - 1


class DayFactors:
    """Cached ``Season`` factor per local day."""

    def __init__(self, season: Season, device_id: str, end: date) -> None:
        self.season, self.device_id, self.end = season, device_id, end
        self.cache: dict[int, float] = {}

    def __call__(self, ordinal: int) -> float:
        f = self.cache.get(ordinal)
        if f is None:
            s, day = self.season, date.fromordinal(ordinal)
            years_back = (self.end.toordinal() - ordinal) / 365.25
            seasonal = s.amplitude * math.cos(2 * math.pi * (day.timetuple().tm_yday - 15) / 365.25)
            weather = s.weather * (0.7 * _weather(ordinal) + 0.3 * (2 * _chance(self.device_id, ordinal) - 1))
            f = (1 + s.trend * years_back) * (1 + seasonal + weather) * (s.holidays if holiday(day) else 1.0)
            f = self.cache[ordinal] = max(0.05, f)
        return f


def weighted_ratios(
    totals: list[float], times: list[int], factors: DayFactors, offset_s: float
) -> list[float]:
    """Share (0 … 1) of the history's energy consumed by each reading time: the curve's integral over each
    interval weighted by the day's factor (faded out over the last ``RAMP_DAYS``), cumulated, normalised."""
    end = times[-1]
    ramp = RAMP_DAYS * 86_400
    fade_from = end - ramp
    cumulative = [0.0]
    acc = 0.0
    day, f = None, 1.0
    for k in range(1, len(times)):
        mid = (times[k - 1] + times[k]) / 2
        d = int((mid + offset_s) // 86_400)  # the local (standard time) day
        if d != day:
            day, f = d, factors(d + 719_163)  # days since 1970-01-01 -> date ordinal
        w = f if mid < fade_from else 1 + (f - 1) * (end - mid) / ramp
        step = totals[k] - totals[k - 1]
        if step > 0:
            acc += step * w
        cumulative.append(acc)
    return [c / acc for c in cumulative] if acc > 0 else [0.0] * (len(times) - 1) + [1.0]


def ev_sessions(device: Device, offset_s: float, first: date, last: date) -> list[tuple[float, float, float]]:
    """Charging sessions (start, end POSIX seconds, power W) of one station side, day by day."""
    usage = station_usage(device.id)
    shift = 1.5 if device.side == "B" else 0.0
    sessions = []
    day = first
    while day <= last:
        o = day.toordinal()
        years_back = (last.toordinal() - o) / 365.25
        weekday = day.weekday() < 5
        p = (0.92 - 0.045 * years_back) if weekday else 0.12  # more electric cars as the years go by
        if holiday(day):
            p *= 0.4
        if _chance(device.id, "plug", o) < p:
            arrive = (
                (7.5 + 1.5 * _chance(device.id, "arrive", o) + shift)
                if weekday
                else 10 + 3 * _chance(device.id, "arrive", o)
            )
            leave = 18.0 - shift
            winter = 1 + 0.12 * math.cos(2 * math.pi * (day.timetuple().tm_yday - 15) / 365.25)
            energy = DAILY_ENERGY * usage * 7 / 5 * (0.45 + _chance(device.id, "energy", o)) * winter
            power = 229.0 * (32 if _chance(device.id, "priority", o) < 0.2 else 16)
            hours = min(energy / power, leave - arrive)
            midnight = (o - 719_163) * 86_400 - offset_s
            start = midnight + arrive * 3600
            sessions.append((start, start + hours * 3600, power))
        day += timedelta(days=1)
    return sessions


def ev_ratios(sessions: list[tuple[float, float, float]], times: list[int]) -> list[float]:
    cumulative, done, j, n = [], 0.0, 0, len(sessions)
    for t in times:
        while j < n and sessions[j][1] <= t:
            done += (sessions[j][1] - sessions[j][0]) * sessions[j][2]
            j += 1
        partial = (t - sessions[j][0]) * sessions[j][2] if j < n and sessions[j][0] < t else 0.0
        cumulative.append(done + partial)
    total = cumulative[-1]
    return [c / total for c in cumulative] if total > 0 else [0.0] * (len(times) - 1) + [1.0]


@dataclass
class Series:
    """The history of one device: counter values at every reading time."""

    device: Device
    profile: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def tail(self, skip: int) -> Series:
        return Series(self.device, self.profile, {q: c[skip:] for q, c in self.values.items()})


def build(
    site: Site, profiles: dict[str, Profile], origin: datetime, end: datetime
) -> tuple[list[int], list[Series]]:
    """Reading times and every counter device's series, ending at the simulator's counters at ``end``
    (a simulator counting from ``origin``, decoded from its registers as a poller would)."""
    times = grid(site, origin, end)
    simulated = SimulatedSite(site, profiles, start_time=end, origin=origin)
    offset_s = standard_offset(site.tz).total_seconds()
    end_day = end.astimezone(site.tz).date()
    out: list[Series] = []
    for device in site.devices:
        member = simulated._image(device.id).members[device.id]
        twin = member.twin
        series = Series(device, member.profile.id)
        if isinstance(twin, PulseTwin):
            ends = {PULSES: simulated.counter(device.id, PULSES)}
            totals = [twin.curve.total_at(t) for t in times]
            ratios = weighted_ratios(
                totals, times, DayFactors(season_of(device), device.id, end_day), offset_s
            )
        elif isinstance(twin, ElectricMeterTwin):
            ends = {
                str(q): simulated.counter(device.id, q)
                for q in ELECTRIC_COUNTERS
                if str(q) in member.registers
            }
            totals = [twin.curve.total_at(t) for t in times]
            ratios = weighted_ratios(
                totals, times, DayFactors(season_of(device), device.id, end_day), offset_s
            )
        elif isinstance(twin, EvStationTwin) and str(Quantity.ENERGY_ACTIVE_IMPORT) in member.registers:
            ends = {
                str(Quantity.ENERGY_ACTIVE_IMPORT): simulated.counter(
                    device.id, Quantity.ENERGY_ACTIVE_IMPORT
                )
            }
            first = origin.astimezone(site.tz).date()
            ratios = ev_ratios(ev_sessions(device, offset_s, first, end_day), times)
        else:
            continue
        for quantity, last in ends.items():
            if quantity == PULSES:
                column = [float(math.floor(last * r)) for r in ratios]
            else:
                column = [int(last * r * 1000) / 1000 for r in ratios]  # Wh to the mWh, never above ``last``
            column[-1] = last  # exactly what the simulator serves at ``end``
            series.values[quantity] = column
        if PULSES in series.values and device.medium in MEDIUM_QUANTITY:
            weight = device.pulse_weight or 1.0
            series.values[str(MEDIUM_QUANTITY[device.medium])] = [p * weight for p in series.values[PULSES]]
        out.append(series)
    return times, out


def readings(site: Site, times: list[int], series: list[Series]) -> Iterator[tuple[str, str, bytes]]:
    """(subject, event id, JSON payload) of every event, oldest first (every device at one time, then the
    next time). The JSON is exactly ``ReadingTaken.model_dump_json()`` (tested), written by hand: pydantic
    takes ~16 µs an event, a quarter of the whole budget for 750,000 of them."""
    parts = []
    for s in series:
        parts.append(
            (
                subject(site.site, Kind.READING, s.device.id),
                f"{site.site}.{s.device.id}.",
                '{"event_id":"' + f"{site.site}.{s.device.id}.",
                '","site":' + json.dumps(site.site) + ',"occurred_at":"',
                '","schema_version":1,"device":'
                + json.dumps(s.device.id)
                + ',"profile":'
                + json.dumps(s.profile)
                + ',"values":{',
                [(json.dumps(q) + ":", column) for q, column in s.values.items()],
            )
        )
    for k, t in enumerate(times):
        ms = t * 1000
        at = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for subj, id_prefix, open_id, mid, tail, columns in parts:
            values = ",".join(name + repr(column[k]) for name, column in columns)
            yield subj, f"{id_prefix}{ms}", f'{open_id}{ms}{mid}{at}{tail}{values}}},"states":{{}}}}'.encode()


# --- publishing ------------------------------------------------------------------------------------


@dataclass
class Published:
    readings: int = 0
    devices: int = 0
    seconds: float = 0.0
    last_seq: int = 0
    paced: float = 0.0  # of ``seconds``, waiting for the aggregator


async def publish(
    settings: Settings, profiles: dict[str, Profile], origin: datetime, end: datetime
) -> Published:
    """Generate and publish the history; every event is acked by JetStream (or published again)."""
    import nats

    site = settings.site
    started = time.monotonic()
    times, series = await asyncio.to_thread(build, site, profiles, origin, end)
    log.info(
        "demo history: publishing %d readings of %d devices, %s to %s (first start of this data folder)",
        len(times) * len(series),
        len(series),
        origin.astimezone(site.tz).date(),
        end.astimezone(site.tz).strftime("%Y-%m-%d %H:%M"),
    )
    nc = await nats.connect(
        settings.nats_url, name="simulator-history", connect_timeout=5, pending_size=16 * 1024 * 1024
    )
    try:
        publisher = Publisher(nc)
        await publisher.start()
        first_dense = next((k for k in range(len(times) - 1) if times[k + 1] - times[k] <= DENSE_STEP), 0)
        skip = await _already_stored(nc, site, times, series)
        if skip:
            log.info("demo history: an interrupted run stored %d of %d times: continuing", skip, len(times))
        sparse = max(0, first_dense - skip) * len(series)
        await publisher.publish_all(
            list(readings(site, times[skip:], [s.tail(skip) for s in series])),
            lambda i: BACKLOG_SPARSE if i < sparse else BACKLOG_DENSE,
        )
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return Published(
        publisher.acked, len(series), time.monotonic() - started, publisher.last_seq, publisher.paced
    )


async def _already_stored(nc: Any, site: Site, times: list[int], series: list[Series]) -> int:
    """How many reading times an interrupted run already stored for every device (the times before the
    oldest of the devices' last stored readings; that one is published again, harmlessly)."""
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    last: list[int] = []
    for s in series:
        try:
            msg = await js.get_last_msg(READINGS.name, subject(site.site, Kind.READING, s.device.id))
        except NotFoundError:
            return 0
        last.append(int(datetime.fromisoformat(json.loads(msg.data)["occurred_at"]).timestamp()))
    return bisect.bisect_left(times, min(last))


class Publisher:
    """JetStream publishing at the rate the server stores it, acknowledged by blocks: plain publishes, the
    last of every ``ACK_EVERY`` with a reply subject on one wildcard inbox subscription. JetStream stores
    one connection's messages of a stream in order, so that ack confirms its block. (nats-py's
    ``publish_async`` makes a future, a NUID, a random token and a semaphore wait per message: ~3,000
    messages/s on this machine, against ~35,000 with a reply per message and more with one per block.)
    At most ``window`` messages wait for their ack; a block not acked after a pause is sent again (the
    ``Nats-Msg-Id`` makes that harmless). The durable consumer named ``consumer`` (the aggregator's) sets the
    pace: at most ``backlog(i)`` readings in the stream that it has not acked yet."""

    def __init__(
        self,
        nc: Any,
        consumer: str = AGGREGATOR_DURABLE,
        window: int = MAX_PENDING,
        ack_timeout: float = 30.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.consumer = consumer
        self.pacing = True
        self.paced = 0.0  # seconds spent waiting for the aggregator
        self.floor = 0
        self.window = max(1, window // ACK_EVERY)  # in blocks
        self.ack_timeout = ack_timeout
        self.inbox = nc.new_inbox()
        self.acked = 0  # messages
        self.last_seq = 0
        self.errors: list[str] = []
        self._done = bytearray()
        self._sizes: list[int] = []
        self._blocks_acked = 0
        self._in_flight = 0
        self._room = asyncio.Event()
        self._all_acked = asyncio.Event()

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_ack, pending_msgs_limit=4 * self.window + 100)

    async def _on_ack(self, msg: Any) -> None:
        b = int(msg.subject.rpartition(".")[2])
        if self._done[b]:
            return
        try:
            ack = json.loads(msg.data)
        except ValueError:
            ack = {"error": {"description": msg.data[:200].decode(errors="replace")}}
        if "error" in ack:
            if len(self.errors) < 5:
                self.errors.append(str(ack["error"].get("description", ack["error"])))
        else:
            self._done[b] = 1
            self._blocks_acked += 1
            self.acked += self._sizes[b]
            self.last_seq = max(self.last_seq, int(ack.get("seq", 0)))
            if self._blocks_acked >= len(self._done):
                self._all_acked.set()
        self._in_flight -= 1
        if self._in_flight <= self.window // 2:
            self._room.set()

    async def _consumer_floor(self) -> int | None:
        """The aggregator's ack floor (stream sequence); None while it has no consumer."""
        floors = [
            info.ack_floor.stream_seq or 0
            for info in await self.js.consumers_info(READINGS.name)
            if info.name == self.consumer
        ]
        return min(floors) if floors else None

    async def _pace(self, backlog: int) -> None:
        """Wait until the aggregator is at most ``backlog / 2`` readings behind (it stalls: stop pacing)."""
        if not self.pacing or self.last_seq - self.floor <= backlog:
            return
        progress_at = waited_from = time.monotonic()
        while self.last_seq - self.floor > backlog // 2:
            try:
                floor = await self._consumer_floor()
            except Exception:
                floor = None
            if floor is not None and floor > self.floor:
                self.floor, progress_at = floor, time.monotonic()
            elif time.monotonic() - progress_at > (STALL if floor is not None else NO_CONSUMER):
                log.warning(
                    "demo history: the aggregator %s for %.0f s: publishing the rest without waiting for it",
                    "has not progressed" if floor is not None else "is not consuming",
                    STALL if floor is not None else NO_CONSUMER,
                )
                self.pacing = False
                break
            await asyncio.sleep(0.1)
        self.paced += time.monotonic() - waited_from

    async def publish_all(
        self,
        messages: list[tuple[str, str, bytes]],
        backlog: Any = lambda i: BACKLOG_DENSE,
        attempts: int = 3,
    ) -> None:
        n = len(messages)
        blocks = range(0, n, ACK_EVERY)
        self._done = bytearray(len(blocks))
        self._sizes = [min(ACK_EVERY, n - lo) for lo in blocks]
        self._all_acked.clear()
        if not n:
            return
        publish, inbox = self.nc.publish, self.inbox
        todo: Any = range(len(blocks))
        for attempt in range(1, attempts + 1):
            for b in todo:
                lo = b * ACK_EVERY
                await self._pace(backlog(lo))
                if self._in_flight >= self.window:
                    self._room.clear()
                    try:
                        await asyncio.wait_for(self._room.wait(), self.ack_timeout)
                    except TimeoutError:
                        self._in_flight = 0  # acks lost: the blocks are sent again below
                hi = lo + self._sizes[b] - 1
                for subj, event_id, data in messages[lo:hi]:
                    await publish(subj, data, headers={"Nats-Msg-Id": event_id})
                subj, event_id, data = messages[hi]
                self._in_flight += 1
                await publish(subj, data, reply=f"{inbox}.{b}", headers={"Nats-Msg-Id": event_id})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_acked.wait(), self.ack_timeout)
            if self.acked == n:
                return
            todo = [b for b, done in enumerate(self._done) if not done]
            self._in_flight = 0
            log.warning(
                "demo history: %d readings not acked (attempt %d%s), sending them again",
                n - self.acked,
                attempt,
                f": {self.errors[0]}" if self.errors else "",
            )
        raise RuntimeError(f"{n - self.acked} readings not stored by JetStream ({'; '.join(self.errors)})")


async def accounted(settings: Settings, last_seq: int, limit_s: float = ACCOUNTED_TIMEOUT) -> float | None:
    """Seconds until a consumer of the site's readings (the aggregator) has acked ``last_seq``; None when
    that did not happen within ``limit_s``."""
    import nats

    started = time.monotonic()
    nc = await nats.connect(settings.nats_url, name="simulator-history", connect_timeout=5)
    try:
        js = nc.jetstream()
        while time.monotonic() - started < limit_s:
            with contextlib.suppress(Exception):
                for info in await js.consumers_info(READINGS.name):
                    if info.name == AGGREGATOR_DURABLE and (info.ack_floor.stream_seq or 0) >= last_seq:
                        return time.monotonic() - started
            await asyncio.sleep(0.5)
        return None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def run(settings: Settings, profiles: dict[str, Profile], history: HistoryPlan) -> Published | None:
    """Publish the planned history and mark it done; None (and a one-line error) when it failed: the
    marker stays ``publishing`` and the next start tries again."""
    assert history.origin is not None and history.end is not None
    try:
        result = await publish(settings, profiles, history.origin, history.end)
    except Exception as exc:
        log.error(
            "demo history: publishing failed (%s: %s); it is tried again on the next start",
            type(exc).__name__,
            exc,
        )
        return None
    write_marker(
        settings,
        {
            "state": "done",
            "origin": history.origin.isoformat(),
            "end": history.end.isoformat(),
            "readings": result.readings,
            "devices": result.devices,
            "published_s": round(result.seconds, 1),
            "waited_for_aggregator_s": round(result.paced, 1),
        },
    )
    return result


async def report(settings: Settings, result: Published, started: float) -> None:
    """The end line, once the aggregator has accounted the whole history."""
    waited = await accounted(settings, result.last_seq)
    if waited is None:
        log.warning(
            "demo history: %d readings published in %.1f s, not yet accounted after %.0f s more",
            result.readings,
            result.seconds,
            ACCOUNTED_TIMEOUT,
        )
        return
    log.info(
        "demo history: %d readings of %d devices published in %.1f s and accounted %.1f s after the start "
        "(%.1f s of publishing spent waiting for the aggregator)",
        result.readings,
        result.devices,
        result.seconds,
        time.monotonic() - started,
        result.paced,
    )
