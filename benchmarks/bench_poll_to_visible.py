"""Poll to visible: how long after a device's poll its values show in the API (issue 15, item 5).

A real stack (`ews up` of the demo site with its simulator, on free ports, a fresh data folder, no demo
history, EWS_POLL_INTERVAL=--interval): NATS, Redis, simulator, poller, aggregator + gateway-api (chDB),
commands, auth. The script signs in as the administrator (factory PIN/PUK) and, for --seconds, asks
the API over and over while it reads every ``ReadingTaken`` of the site from JetStream (an ordered
consumer from the stream's first message: ``occurred_at`` is the poll time, the values are what the
poll read). All on one machine, one clock: times are wall-clock UTC in ms.

(a) Live values: ``GET /api/v1/devices`` (the whole list, every device) every --every seconds. A reading
    R of device D is *visible* at the first answer (its arrival) whose ``updated_at`` for D is R's
    ``occurred_at`` or later. Every reading of every device polled during the window is a sample.
(b) Consumption: ``GET /api/v1/consumption?scope=device:<D>&period=day&date=<today>`` for the chosen
    meters, in turn, every --every-consumption seconds. The data folder is fresh, so D's first reading in
    the stream is its counter's baseline and, within one local day, the day's total after R is accounted
    is exactly E(R) − E(first) (E = the reading's ``energy_active_import``, Wh; the aggregator spreads
    each interval over the hours, pieces summing to its delta). R is *included* at the first answer for D
    whose ``total.value`` ≥ E(R) − E(first) − 0.01 Wh. A sample is a reading whose counter rose by more
    than 0.02 Wh since D's previous reading (else no answer could tell it from the previous one).

Latency = arrival of that answer − ``occurred_at``: an upper bound that includes up to one observation
period (the script prints the periods achieved). Readings of the last --settle seconds are not samples
(their answers are still being watched). For reference it also prints when each reading reached this
script over NATS, and the aggregator's batches during the window (``GET /metrics``: how many, mean
store time). Goals: (a) p99 ≤ 1 s, (b) p99 ≤ 2 s; exit 1 when one is missed.

    .venv/bin/python benchmarks/bench_poll_to_visible.py [--seconds 70] [--interval 1] [--every 0.05]
        [--every-consumption 0.05] [--meters pm-premium,m1,mccb-it]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from ews_runtime.servers import free_port  # noqa: E402
from nats.js.api import DeliverPolicy  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.browser.product import START_TIMEOUT, is_ready, tail  # noqa: E402
from tests.helpers import clean_env, demo_site_on_port, start_ews, stop  # noqa: E402

SITE = "demo"
TIMEZONE = ZoneInfo("Europe/Paris")  # the demo site's
PIN, PUK = "99999", "00000 9999 00000"  # the administrator's factory codes
ENERGY = "energy_active_import"
TOLERANCE_WH = 0.01  # the API rounds to 6 digits, the aggregator stores milli-Wh
GOAL_LIVE_S = 1.0
GOAL_CONSUMPTION_S = 2.0


def ms(value: str | None) -> int | None:
    if value is None:
        return None
    return int(round(datetime.fromisoformat(value).timestamp() * 1000))


def local_day(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(TIMEZONE).date().isoformat()


async def store_metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """The aggregator's batch counters from ``GET /metrics`` (summed over processes): count, sum, buckets."""
    r = await client.get("/metrics")
    found: dict[str, float] = {}
    if r.status_code != 200:
        return found
    for family in text_string_to_metric_families(r.text):
        if family.name != "ews_aggregator_store_seconds":
            continue
        for sample in family.samples:
            key = sample.name.rsplit("_", 1)[1] + sample.labels.get("le", "")
            found[key] = found.get(key, 0.0) + sample.value
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Observed:
    readings: dict[str, list[tuple[int, dict[str, float]]]] = field(default_factory=dict)  # device -> polls
    on_nats: list[tuple[int, float]] = field(default_factory=list)  # (occurred_at ms, arrival here)
    # (arrival, device -> updated_at ms) per GET /api/v1/devices
    live: list[tuple[float, dict[str, int | None]]] = field(default_factory=list)
    totals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # meter -> (arrival, total Wh)
    live_took: list[float] = field(default_factory=list)
    consumption_took: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    store: tuple[dict[str, float], dict[str, float]] = ({}, {})  # /metrics at the window's start, end


async def follow_readings(nats_url: str, seen: Observed) -> nats.NATS:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()

    async def on_msg(msg) -> None:
        event = json.loads(msg.data)
        at = ms(event["occurred_at"])
        seen.on_nats.append((at, time.time()))
        seen.readings.setdefault(event["device"], []).append((at, event.get("values", {})))

    await js.subscribe(
        f"ews.{SITE}.reading.>", cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    return nc


async def watch_live(client: httpx.AsyncClient, seen: Observed, until: float, every: float) -> None:
    while time.time() < until:
        sent = time.time()
        r = await client.get("/api/v1/devices")
        arrived = time.time()
        if r.status_code != 200:
            seen.errors.append(f"GET /api/v1/devices: HTTP {r.status_code}")
        else:
            seen.live.append((arrived, {d["id"]: ms(d.get("updated_at")) for d in r.json()["devices"]}))
            seen.live_took.append(arrived - sent)
        await asyncio.sleep(max(0.0, every - (time.time() - sent)))


async def watch_consumption(
    client: httpx.AsyncClient, seen: Observed, meters: list[str], day: str, until: float, every: float
) -> None:
    n = 0
    while time.time() < until:
        meter = meters[n % len(meters)]
        n += 1
        sent = time.time()
        r = await client.get(
            "/api/v1/consumption", params={"scope": f"device:{meter}", "period": "day", "date": day}
        )
        arrived = time.time()
        if r.status_code != 200:
            seen.errors.append(f"GET /api/v1/consumption {meter}: HTTP {r.status_code}")
        else:
            seen.totals.setdefault(meter, []).append((arrived, float(r.json()["total"]["value"])))
            seen.consumption_took.append(arrived - sent)
        await asyncio.sleep(max(0.0, every - (time.time() - sent)))


def live_latencies(seen: Observed, start: float, end: float) -> list[float]:
    """(a): for each reading polled in [start, end), seconds from its poll to the first list showing it."""
    out: list[float] = []
    for device, polls in seen.readings.items():
        answers = [(arrived, shown.get(device)) for arrived, shown in seen.live]
        i = 0
        for at, _ in sorted(polls):
            if not start * 1000 <= at < end * 1000:
                continue
            while i < len(answers) and (answers[i][1] is None or answers[i][1] < at):
                i += 1
            if i == len(answers):
                break
            out.append(answers[i][0] - at / 1000)
    return out


def consumption_latencies(
    seen: Observed, meters: list[str], day: str, start: float, end: float
) -> tuple[list[float], list[str], bool]:
    """(b): for each reading of the meters polled in [start, end) that raised the counter, seconds from its
    poll to the first day total that includes it; notes per meter; False when a meter's last total is not
    E(R) − E(first) for one of its readings R (the definition would not hold: no figure then)."""
    out: list[float] = []
    notes = []
    consistent = True
    for meter in meters:
        polls = sorted((at, v[ENERGY]) for at, v in seen.readings.get(meter, []) if ENERGY in v)
        answers = seen.totals.get(meter, [])
        if not polls or not answers:
            notes.append(f"{meter}: no {ENERGY} reading or no answer")
            consistent = False
            continue
        base_at, base = polls[0]
        if local_day(base_at) != day:
            notes.append(f"{meter}: first reading on another local day, left out")
            continue
        last_total = answers[-1][1]
        if not any(abs(energy - base - last_total) <= TOLERANCE_WH for _, energy in polls):
            notes.append(f"{meter}: last day total {last_total:.3f} Wh is no E(R) − E(first) (INCONSISTENT)")
            consistent = False
            continue
        i = 0
        samples = flat = 0
        for (_, before), (at, energy) in zip(polls, polls[1:], strict=False):
            if not start * 1000 <= at < end * 1000 or local_day(at) != day:
                continue
            if energy - before <= 2 * TOLERANCE_WH:
                flat += 1
                continue
            while i < len(answers) and answers[i][1] < energy - base - TOLERANCE_WH:
                i += 1
            if i == len(answers):
                break
            out.append(answers[i][0] - at / 1000)
            samples += 1
        notes.append(f"{meter}: {samples} samples, {flat} readings with a flat counter left out")
    return out, notes, consistent


def row(name: str, values: list[float], goal: float) -> tuple[str, bool]:
    if not values:
        return f"| {name} | 0 | n/a | n/a | n/a | n/a | p99 ≤ {goal:g} s | **FAIL** (no sample) |", False
    p99 = percentile(values, 0.99)
    ok = p99 <= goal
    cells = [
        name,
        str(len(values)),
        f"{statistics.median(values) * 1000:.0f}",
        f"{percentile(values, 0.95) * 1000:.0f}",
        f"{p99 * 1000:.0f}",
        f"{max(values) * 1000:.0f}",
        f"p99 ≤ {goal:g} s",
        "**PASS**" if ok else "**FAIL**",
    ]
    return "| " + " | ".join(cells) + " |", ok


async def measure(
    base: str, nats_url: str, args: argparse.Namespace
) -> tuple[Observed, list[str], str, float, float]:
    seen = Observed()
    nc = await follow_readings(nats_url, seen)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post("/api/v1/auth/login", json={"pin": PIN, "puk": PUK})
            r.raise_for_status()
            meters = [m for m in args.meters.split(",") if m]
            # warm-up: every meter polled and accounted (its day has data) before the window opens
            deadline = time.time() + 60
            day = local_day(int(time.time() * 1000))
            while True:
                missing = []
                for meter in meters:
                    r = await client.get(
                        "/api/v1/consumption",
                        params={"scope": f"device:{meter}", "period": "day", "date": day},
                    )
                    if r.status_code != 200 or not r.json().get("has_data"):
                        missing.append(meter)
                if not missing:
                    break
                if time.time() > deadline:
                    # a meter whose counter stayed flat (an idle load) has no consumption row yet: watch the others
                    meters = [m for m in meters if m not in missing]
                    if not meters:
                        raise SystemExit(f"no consumption for {missing} after 60 s (HTTP {r.status_code})")
                    print(f"left out: {', '.join(missing)} (no consumption after 60 s: counter flat)")
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(args.warmup)
            before = await store_metrics(client)
            start = time.time()
            until = start + args.seconds
            await asyncio.gather(
                watch_live(client, seen, until, args.every),
                watch_consumption(client, seen, meters, day, until, args.every_consumption),
            )
            seen.store = (before, await store_metrics(client))
    finally:
        await nc.close()
    return seen, meters, day, start, until


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=70, help="measuring window")
    parser.add_argument("--interval", default="1", help="EWS_POLL_INTERVAL of the stack (s)")
    parser.add_argument("--every", type=float, default=0.05, help="period of GET /api/v1/devices (s)")
    parser.add_argument(
        "--every-consumption", type=float, default=0.05, help="period of GET /api/v1/consumption (s)"
    )
    parser.add_argument(
        "--meters", default="pm-premium,m1,mccb-it", help="devices whose day total is watched, in turn"
    )
    parser.add_argument("--warmup", type=float, default=5, help="seconds after the first accounted readings")
    parser.add_argument("--settle", type=float, default=5, help="last seconds of the window not sampled")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ews-bench-visible-") as tmp:
        folder = Path(tmp)
        http_port = free_port()
        nats_url = f"nats://127.0.0.1:{free_port()}"
        env = clean_env(
            EWS_DATA_DIR=str(folder / "data"),
            EWS_SITE_FILE=str(demo_site_on_port(folder, free_port())),
            EWS_SIMULATE="1",
            EWS_DEMO_HISTORY="0",
            EWS_HTTP_PORT=str(http_port),
            NATS_URL=nats_url,
            REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            EWS_POLL_INTERVAL=args.interval,
        )
        base = f"http://127.0.0.1:{http_port}"
        log = folder / "ews-up.log"
        print("starting `ews up`…", file=sys.stderr)
        proc = start_ews(["up"], env, log)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"`ews up` exited with {proc.returncode}:\n{tail(log)}")
                try:
                    if is_ready(base):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"`ews up` not ready after {START_TIMEOUT:.0f} s:\n{tail(log)}")
                time.sleep(0.25)
            print(f"ready; measuring {args.seconds:g} s…", file=sys.stderr)
            seen, meters, day, start, until = asyncio.run(measure(base, nats_url, args))
        finally:
            stop(proc, signal.SIGINT, timeout=30)
        logged = log.read_text(errors="replace")

    end = until - args.settle
    live = live_latencies(seen, start, end)
    used, notes, consistent = consumption_latencies(seen, meters, day, start, end)
    nats = [arrived - at / 1000 for at, arrived in seen.on_nats if start * 1000 <= at < end * 1000]
    live_gaps = [b[0] - a[0] for a, b in zip(seen.live, seen.live[1:], strict=False)]
    total_gaps = [
        b[0] - a[0]
        for m in meters
        for a, b in zip(seen.totals.get(m, []), seen.totals.get(m, [])[1:], strict=False)
    ]

    print(f"\n## Poll to visible: demo site, EWS_POLL_INTERVAL={args.interval}, window {args.seconds:g} s\n")
    print("From a reading's poll (`occurred_at`) to the first API answer showing it (its arrival), ms:\n")
    print("| | samples | p50 | p95 | p99 | max | goal | |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    line_a, ok_a = row("(a) value in `GET /api/v1/devices`", live, GOAL_LIVE_S)
    line_b, ok_b = row(f"(b) in the day's consumption ({', '.join(meters)})", used, GOAL_CONSUMPTION_S)
    print(line_a)
    print(line_b)
    if nats:
        print(
            f"| for reference: the reading on NATS (this script's JetStream consumer) | {len(nats)} | "
            f"{statistics.median(nats) * 1000:.0f} | {percentile(nats, 0.95) * 1000:.0f} | "
            f"{percentile(nats, 0.99) * 1000:.0f} | {max(nats) * 1000:.0f} | | |"
        )
    print(f"\nsamples: readings polled from the window's start to {args.settle:g} s before its end")
    if live_gaps and seen.live_took:
        print(
            f"(a) GET /api/v1/devices ({len(seen.live[-1][1])} devices) every {statistics.median(live_gaps) * 1000:.0f} ms "
            f"(median gap, p99 {percentile(live_gaps, 0.99) * 1000:.0f}); answer p50 "
            f"{statistics.median(seen.live_took) * 1000:.1f} ms, p99 {percentile(seen.live_took, 0.99) * 1000:.1f} ms"
        )
    if total_gaps and seen.consumption_took:
        print(
            f"(b) each meter's day total every {statistics.median(total_gaps) * 1000:.0f} ms ({len(meters)} meters "
            f"in turn; p99 gap {percentile(total_gaps, 0.99) * 1000:.0f}); answer p50 "
            f"{statistics.median(seen.consumption_took) * 1000:.1f} ms, "
            f"p99 {percentile(seen.consumption_took, 0.99) * 1000:.1f} ms"
        )
    before, after = seen.store
    batches = after.get("count", 0) - before.get("count", 0)
    if batches:
        buckets = sorted(
            (float(k[len("bucket") :]), after[k] - before.get(k, 0)) for k in after if k.startswith("bucket")
        )
        slowest = next((le for le, n in buckets if n >= batches), float("inf"))
        print(
            f"(b) the aggregator meanwhile: {batches:.0f} batches (one per "
            f"{args.seconds / batches * 1000:.0f} ms; BATCH_TIMEOUT 0.5 s, checked every 0.25 s), "
            f"store time mean {(after['sum'] - before.get('sum', 0)) / batches * 1000:.0f} ms, "
            f"every batch ≤ {slowest * 1000:g} ms"
        )
    print(
        "(b) included: the first GET /api/v1/consumption?scope=device:<id>&period=day&date=<today> whose "
        f"total.value ≥ E(R) − E(first reading) − {TOLERANCE_WH} Wh (E = energy_active_import; fresh data "
        "folder, so the first reading is the counter's baseline); readings whose counter did not rise are left out"
    )
    print("(b) " + "; ".join(notes))
    if seen.errors:
        print(f"\n{len(seen.errors)} API errors, first: {seen.errors[0]}")
    if not consistent:
        print("\nFAIL: a meter's day total does not follow its readings; (b) is not measured")
    if "Traceback" in logged:
        print("\n`ews up` log has a traceback:\n" + logged[-3000:])
    sys.exit(0 if ok_a and ok_b and consistent and not seen.errors else 1)


if __name__ == "__main__":
    main()
