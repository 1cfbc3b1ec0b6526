"""Poller service: polls every enabled device of the site and publishes what it reads.

- One task per gateway (gateways in parallel); on a gateway, devices are polled one after the other, each
  as the fewest block reads its profile allows (``plan.py``), every ``poll_interval`` seconds.
- Each successful device poll -> one ``ReadingTaken`` (``event_id = ReadingTaken.id_for(site, device,
  occurred_at)``, sent as ``Nats-Msg-Id``) on ``ews.<site>.reading.<device>``; a status change
  (``status.py``) -> one ``DeviceStatusChanged`` on ``ews.<site>.status.<device>``.
- Events go through an outbox: one publisher task sends them in order and retries the same events (same
  ``Nats-Msg-Id``: JetStream drops a duplicate) while NATS is away, so polling never waits for NATS. The
  events waiting go out together, without waiting for each acknowledgement (``publish.py``; at most
  ``PUBLISH_WINDOW`` unacknowledged); after a failure the unacknowledged ones are sent again in order, the
  first alone until JetStream stores it. The outbox is bounded (besides the batch in flight); when it overflows the
  oldest events are dropped (logged).
- Live state: ``LiveDevice`` JSON at ``live_key(site, device)`` in Redis, written by its own task from the
  latest state of each device: the devices that changed in one command, a write every ``LIVE_EVERY``
  seconds at most (a Redis outage delays it, never the polls).
- Nothing stops a loop: Modbus timeouts, exception responses, short or garbled answers, NATS and Redis
  errors never stop polling; they are logged per device and cause (``ews_fieldbus.FaultLog``): one line
  when it starts, a summary a minute while it lasts, one line on recovery — never a line per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats.aio.client
import redis.asyncio as aioredis
from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import DeviceStatusChanged, Event, ReadingTaken
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.profiles import Profile, ProfileError, check_device, load_profiles
from ews_contracts.settings import Settings
from ews_contracts.site import Device, Gateway, Site
from ews_contracts.siteconfig import follow_configuration
from ews_contracts.text import one_line
from ews_fieldbus import FaultLog, FieldbusError, ModbusGateway
from prometheus_client import Counter, Gauge, Histogram

from .decode import CompiledDecoder, fault_states
from .execute import CommandJournal, CommandRunner
from .plan import ALL_TIERS, MAX_GAP, ReadBlock, gap_worth_bridging, plan_reads
from .publish import ACK_TIMEOUT, AckInbox, NotStored, Sent
from .rpc import serve_requests
from .status import FAILURE_THRESHOLD, StatusTracker, Transition

log = logging.getLogger("ews.poller")

# Prometheus (served by the gateway-api's /metrics under `ews up`, see ews_contracts.metrics)
TRANSACTIONS = Counter(
    "ews_poller_transactions_total",
    "Modbus transactions on a bus (polls, commands and test reads), by outcome",
    ["gateway", "outcome"],
)
CYCLE = Histogram(
    "ews_poller_cycle_seconds",
    "Wall time of one poll round of a bus",
    ["gateway"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
LAST_CYCLE = Gauge(
    "ews_poller_last_cycle_seconds",
    "The last poll round's wall time",
    ["gateway"],
    multiprocess_mode="mostrecent",
)
PUBLISHED = Counter(
    "ews_poller_events_published_total", "Events (readings, status changes) stored by JetStream"
)
OUTBOX = Gauge(
    "ews_poller_outbox_events", "Events waiting to be published (NATS away)", multiprocess_mode="mostrecent"
)

OUTBOX_LIMIT = 50_000
NATS_CONNECT_TIMEOUT = 5.0
PUBLISH_WINDOW = 1000  # events sent and not yet acknowledged, at most
PUBLISH_LINGER = 0.02  # s between two batches at least: the events of the devices polled meanwhile join
# s between two writes of the live state at least: every device that changed meanwhile in one MSET (a few
# writes a second whatever the number of devices; a value reaches the API ≤ 0.1 s later, see
# bench_poll_to_visible.py)
LIVE_EVERY = 0.1


@dataclass
class Target:
    """One device to poll."""

    device: Device
    profile: Profile
    reads: list[ReadBlock]  # every tier
    tracker: StatusTracker
    max_gap: int = MAX_GAP
    live: LiveDevice = field(init=False)
    _plans: dict[frozenset[str], list[ReadBlock]] = field(default_factory=dict, init=False)
    _decoders: dict[frozenset[str], CompiledDecoder] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.live = LiveDevice(device=self.device.id, state="comm-error", reason="not polled yet")
        self._plans[ALL_TIERS] = self.reads

    def reads_for(self, tiers: frozenset[str]) -> list[ReadBlock]:
        plan = self._plans.get(tiers)
        if plan is None:
            plan = self._plans[tiers] = plan_reads(
                self.profile, self.device, max_gap=self.max_gap, tiers=tiers
            )
        return plan

    def decoder_for(self, tiers: frozenset[str]) -> CompiledDecoder:
        decoder = self._decoders.get(tiers)
        if decoder is None:
            reads = self.reads_for(tiers)
            decoder = self._decoders[tiers] = CompiledDecoder(self.profile, self.device, reads, tiers)
        return decoder


def build_targets(
    site: Site,
    profiles: dict[str, Profile],
    *,
    threshold: int = FAILURE_THRESHOLD,
    max_gap: int | None = None,
) -> dict[str, list[Target]]:
    """Gateway id -> the devices polled on it: enabled (Off = not polled), with a profile that resolves
    and has something to read. Virtual devices are computed by the aggregator, never polled.
    ``max_gap``: unused registers a read may bridge (default: what is cheaper on the gateway's bus)."""
    targets: dict[str, list[Target]] = {g.id: [] for g in site.gateways}
    gaps = {
        g.id: max_gap if max_gap is not None else gap_worth_bridging(g.bus_baudrate) for g in site.gateways
    }
    for device in site.devices:
        if not device.enabled:
            log.info("poller: device %s is Off (enabled: false); not polled", device.id)
            continue
        try:
            profile = check_device(device, profiles)
        except ProfileError as exc:
            log.error("poller: %s; not polled", exc)
            continue
        gap = gaps[device.gateway]
        reads = plan_reads(profile, device, max_gap=gap)
        if not reads:
            log.info("poller: device %s (%s) has nothing to read; not polled", device.id, profile.id)
            continue
        tracker = StatusTracker(faults=fault_states(profile), threshold=threshold)
        targets[device.gateway].append(Target(device, profile, reads, tracker, gap))
    return targets


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Poller:
    """The service's state; ``start()`` / ``stop()`` (``serve`` wraps them)."""

    def __init__(
        self,
        settings: Settings,
        *,
        site: Site | None = None,
        profiles: dict[str, Profile] | None = None,
        poll_interval: float | None = None,
        failure_threshold: int = FAILURE_THRESHOLD,
        max_gap: int | None = None,
    ) -> None:
        self.settings = settings
        self.site = site or settings.site
        self.profiles = profiles if profiles is not None else load_profiles(settings.profiles_dir)
        self.poll_interval = poll_interval if poll_interval is not None else settings.poll_interval
        if self.poll_interval <= 0:
            raise ValueError("poll interval must be positive")
        self.failure_threshold = failure_threshold
        self.max_gap = max_gap
        self.targets = build_targets(self.site, self.profiles, threshold=failure_threshold, max_gap=max_gap)
        # a plain nats-py connection (publish.py sends on it directly): FastStream would cost ~18 MiB here
        self.nc = nats.aio.client.Client()
        self.redis = aioredis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.complaints = FaultLog(log)  # per device and cause: a first line, a summary a minute, recovery
        self._outbox: asyncio.Queue[Event] = asyncio.Queue()
        self._window: deque[Sent] = deque()  # taken from the outbox, not yet stored by JetStream
        self._acks: AckInbox | None = None
        self._dropped = 0
        self._dirty: dict[str, LiveDevice] = {}
        self._forget: set[str] = set()  # removed devices whose live state is deleted
        self._dirty_event = asyncio.Event()
        self._gateways: dict[str, ModbusGateway] = {}
        self._lines: dict[str, str] = {}  # gateway id -> the line its client opens (Gateway.line)
        self._retiring: dict[str, ModbusGateway] = {}  # line -> a client being closed (new configuration)
        self._polls: dict[str, asyncio.Task[None]] = {}  # gateway id -> its bus loop
        self._workers: list[asyncio.Task[None]] = []
        self._nats_connected = False
        self._nats_ready = False
        self.published = 0  # events acknowledged by JetStream (for tests and logs)
        self.rounds: dict[str, int] = {}  # gateway id -> poll rounds done
        self.commands = CommandRunner(self, CommandJournal(settings.data_dir / "poller" / "commands.jsonl"))

    # --- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._publisher(), name="poller-publisher"),
            asyncio.create_task(self._live_writer(), name="poller-live"),
        ]
        for gateway in self.site.gateways:
            self._start_gateway(gateway)

    def bus(self, gateway: Gateway) -> ModbusGateway:
        """The one client of a gateway's bus, opened when first needed: polls, commands and test reads all
        go through it (its lock serializes them), so the product never holds two connections to a bus. A
        client of a line whose previous client is still being closed (a new configuration) connects only
        once that one has closed."""
        client = self._gateways.get(gateway.id)
        if client is None:
            client = self._gateways[gateway.id] = ModbusGateway.for_gateway(gateway)
            self._lines[gateway.id] = gateway.line
            previous = self._retiring.get(gateway.line)
            if previous is not None:
                client.follows(previous)
        return client

    def shared_bus(self, gateway: Gateway) -> tuple[Gateway, ModbusGateway] | None:
        """For a gateway as edited in a form (any id, new or configured): the configured gateway on the same
        line (host and port, or serial port; one at most, the site refuses two) and its client, through
        which a test read goes; None when no configured gateway is on that line."""
        configured = next((g for g in self.site.gateways if g.line == gateway.line), None)
        if configured is None:
            return None
        return configured, self.bus(configured)

    def _start_gateway(self, gateway: Gateway) -> None:
        targets = self.targets.setdefault(gateway.id, [])
        if not targets:
            return
        client = self.bus(gateway)
        self._polls[gateway.id] = asyncio.create_task(
            self._poll_gateway(gateway, client, targets), name=f"poll-{gateway.id}"
        )
        fast, counter = self.periods(gateway)
        log.info(
            "poller: gateway %s (%s %s): %d devices, fast values every %.1f s, counters every %.1f s",
            gateway.id,
            gateway.transport,
            gateway.endpoint,
            len(targets),
            fast,
            counter,
        )

    async def _stop_gateways(self, gateway_ids: list[str]) -> None:
        """Stop these gateways' bus loops and close their connections, each between two transactions (a
        command holding the bus finishes first, a stuck transaction at most STOP_TIMEOUT); a transaction
        asked meanwhile on them fails "not sent" rather than opening the connection again, and a new client
        of the same line connects only once the old one has closed."""
        clients = []
        for gateway_id in gateway_ids:  # (no await before every one is marked: see bus())
            client = self._gateways.pop(gateway_id, None)
            line = self._lines.pop(gateway_id, None)
            if client is not None and line is not None:
                self._retiring[line] = client
                # a task of its own: it completes (and lets the line's next client connect) even if
                # this reconfiguration is cancelled
                clients.append((line, client, asyncio.ensure_future(client.retire(STOP_TIMEOUT))))
        try:
            await _cancel([t for t in (self._polls.pop(g, None) for g in gateway_ids) if t is not None])
            await asyncio.gather(*(closing for _, _, closing in clients), return_exceptions=True)
        finally:
            for line, client, _ in clients:
                if self._retiring.get(line) is client:
                    del self._retiring[line]

    async def apply_site(self, site: Site) -> None:
        """A new configuration, live: a gateway whose settings are unchanged keeps its bus loop and
        connection and gets its new device list before its next round (a new device is polled within one
        poll cycle, an Off or removed one is not polled again); a changed gateway restarts its loop; a
        removed one stops. Devices whose settings are unchanged keep their state (no new status event).
        The changed and removed gateways' connections are closed first (between two transactions, see
        ``_stop_gateways``), then the new and changed ones start: a gateway renamed or changed on the same
        line never holds two connections at once."""
        old_site, self.site = self.site, site
        fresh = build_targets(site, self.profiles, threshold=self.failure_threshold, max_gap=self.max_gap)
        before = {t.device.id: t for ts in self.targets.values() for t in ts}
        for targets in fresh.values():
            for n, target in enumerate(targets):
                kept = before.get(target.device.id)
                if (
                    kept is not None
                    and kept.device == target.device
                    and kept.profile is target.profile
                    and kept.reads == target.reads
                ):
                    targets[n] = kept
        polled = {t.device.id for ts in fresh.values() for t in ts}
        for device_id, target in before.items():
            if device_id in polled:
                continue
            device = site.device(device_id)
            if device is None:
                log.info("poller: device %s removed from the configuration; no longer polled", device_id)
                self._forget.add(device_id)
            else:
                log.info("poller: device %s is Off; no longer polled", device_id)
                self._switched_off(target)
        self._dirty_event.set()
        old_gateways = {g.id: g for g in old_site.gateways}
        new_ids = {g.id for g in site.gateways}
        removed = [gateway_id for gateway_id in old_gateways if gateway_id not in new_ids]
        stopping, starting = list(removed), []
        for gateway in site.gateways:
            targets = fresh[gateway.id]
            running = gateway.id in self._polls
            unchanged = old_gateways.get(gateway.id) == gateway
            if running and unchanged and targets:
                self.targets[gateway.id][:] = targets  # the loop reads it at its next round
                continue
            if running or not unchanged:  # (a bus opened only for commands is closed when it changes)
                stopping.append(gateway.id)
            starting.append((gateway, targets))
        # closed first, then started: a gateway renamed, or changed, on the same line never has its new
        # connection open while the old one still is
        await self._stop_gateways(stopping)
        for gateway_id in removed:
            self.targets.pop(gateway_id, None)
            log.info("poller: gateway %s removed from the configuration; its bus is closed", gateway_id)
        for gateway, targets in starting:
            self.targets[gateway.id] = targets
            self._start_gateway(gateway)

    def _switched_off(self, target: Target) -> None:
        at = _now_ms()
        previous = target.tracker.state
        self._outbox_put(
            DeviceStatusChanged(
                site=self.site.site,
                occurred_at=at,
                device=target.device.id,
                state="off",
                previous=previous,
                reason="switched Off in the configuration",
            )
        )
        target.live = target.live.model_copy(update={"state": "off", "reason": ""})
        self._mark_live(target)

    async def stop(self, drain: float = 2.0) -> None:
        await _cancel(list(self._polls.values()))
        self._polls = {}
        if self._nats_ready and (self._window or not self._outbox.empty()):  # a moment to get them out
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), drain)
        await _cancel(self._workers)
        self._workers = []
        if self._dirty or self._forget:  # the latest live state
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._write_live(), STOP_TIMEOUT)
        for client in self._gateways.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), STOP_TIMEOUT)
        self._gateways = {}
        self._lines = {}
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.nc.drain() if self.nc.is_connected else self.nc.close(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), STOP_TIMEOUT)

    # --- polling ------------------------------------------------------------------------------------

    def periods(self, gateway: Gateway) -> tuple[float, float]:
        """(fast values, counters) poll periods of a gateway, seconds."""
        return (gateway.fast_period or self.poll_interval, gateway.counter_period or self.poll_interval)

    async def _poll_gateway(self, gateway: Gateway, client: ModbusGateway, targets: list[Target]) -> None:
        """One bus: rounds of every device, each tier when its period is due; never stops."""
        loop = asyncio.get_running_loop()
        fast, counter = self.periods(gateway)
        period = {"fast": fast, "counter": counter}
        due_at = {"fast": loop.time(), "counter": loop.time()}
        self.rounds[gateway.id] = 0
        counted = (client.transactions, client.failures)
        while True:
            now = loop.time()
            tiers = frozenset(t for t, at in due_at.items() if at <= now + 0.001)
            try:
                await self.poll_round(client, targets, tiers)
            except Exception as exc:  # a bug in one round must not stop the gateway's polling
                log.error("poller: gateway %s: poll round failed: %s", gateway.id, one_line(exc))
            self.rounds[gateway.id] += 1
            took = loop.time() - now
            CYCLE.labels(gateway.id).observe(took)
            LAST_CYCLE.labels(gateway.id).set(took)
            failures = client.failures - counted[1]
            TRANSACTIONS.labels(gateway.id, "ok").inc(client.transactions - counted[0] - failures)
            TRANSACTIONS.labels(gateway.id, "failed").inc(failures)
            counted = (client.transactions, client.failures)
            OUTBOX.set(self._outbox.qsize())
            now = loop.time()
            for tier in tiers:
                due_at[tier] += period[tier]
                if due_at[tier] < now:  # overran: skip the missed slots
                    late = now - due_at[tier]
                    due_at[tier] += (late // period[tier] + 1) * period[tier]
                    self.complaints.complain(
                        f"gateway {gateway.id}", f"a poll round takes longer than {period[tier]:.1f} s"
                    )
            await asyncio.sleep(max(0.0, min(due_at.values()) - now))

    async def poll_round(
        self, client: ModbusGateway, targets: list[Target], tiers: frozenset[str] = ALL_TIERS
    ) -> None:
        """Poll every target once, in order (the registers of ``tiers``). When the gateway itself cannot be
        reached, the remaining devices fail with the same reason without another connection attempt each."""
        unreachable: str | None = None
        for target in list(targets):  # a new configuration may replace the list between two devices
            if unreachable is not None:
                self._failed(target, unreachable)
                continue
            reads = target.reads_for(tiers)
            if not reads:
                continue
            unit = target.device.address
            try:
                words = [await client.read(unit, block.fc, block.address, block.count) for block in reads]
            except FieldbusError as exc:
                reason = one_line(exc)
                self._failed(target, reason)
                if "cannot connect" in reason:
                    unreachable = reason
                continue
            except Exception as exc:  # anything pymodbus lets through (garbled frame, …)
                self._failed(target, f"{type(exc).__name__}: {one_line(exc)}")
                continue
            self._succeeded(target, words, _now_ms(), tiers)

    def _succeeded(
        self,
        target: Target,
        words: list[list[int]],
        at: datetime,
        tiers: frozenset[str] = ALL_TIERS,
    ) -> None:
        """``words``: what each read of ``target.reads_for(tiers)`` answered, in order."""
        device = target.device
        try:
            decoded = target.decoder_for(tiers).decode(words)
        except ValueError as exc:  # a block of the wrong length or with out-of-range words
            self._failed(target, f"bad answer: {one_line(exc)}")
            return
        if decoded.problems:
            self.complaints.complain(f"device {device.id} decode", "; ".join(decoded.problems))
        else:
            self.complaints.clear(f"device {device.id} decode")
        self.complaints.clear(f"device {device.id}", "answering again")
        transition = target.tracker.success(decoded.states) if "fast" in tiers else None
        if transition is not None:
            self._status(target, transition, at)
        self._outbox_put(
            ReadingTaken(
                event_id=ReadingTaken.id_for(self.site.site, device.id, at),
                site=self.site.site,
                occurred_at=at,
                device=device.id,
                profile=target.profile.id,
                values=decoded.values,
                states=decoded.states,
            )
        )
        target.live = LiveDevice(
            device=device.id,
            state=target.tracker.state or "on",
            reason=target.tracker.reason,
            updated_at=at,
            values=decoded.values if tiers == ALL_TIERS else {**target.live.values, **decoded.values},
            states=decoded.states if "fast" in tiers else target.live.states,
        )
        self._mark_live(target)

    def _failed(self, target: Target, reason: str) -> None:
        self.complaints.complain(f"device {target.device.id}", reason)
        transition = target.tracker.failure(reason)
        if transition is None:
            return
        self._status(target, transition, _now_ms())
        target.live = target.live.model_copy(update={"state": transition.state, "reason": reason})
        self._mark_live(target)

    def _status(self, target: Target, transition: Transition, at: datetime) -> None:
        device = target.device.id
        log.info(
            "poller: device %s: %s -> %s%s%s",
            device,
            transition.previous or "unknown",
            transition.state,
            f" ({transition.reason})" if transition.reason else "",
            f" {transition.states}" if transition.states else "",
        )
        self._outbox_put(
            DeviceStatusChanged(
                site=self.site.site,
                occurred_at=at,
                device=device,
                state=transition.state,
                previous=transition.previous,
                states=transition.states,
                reason=transition.reason,
            )
        )

    # --- NATS ---------------------------------------------------------------------------------------

    def _outbox_put(self, event: Event) -> None:
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            self._outbox.get_nowait()
            self._outbox.task_done()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "poller: outbox full (NATS away too long): %d oldest events dropped", self._dropped
                )
        self._outbox.put_nowait(event)

    async def _connect_nats(self) -> None:
        if not self._nats_connected:  # afterwards nats-py reconnects by itself (forever)
            await asyncio.wait_for(
                self.nc.connect(
                    self.settings.nats_url,
                    name="poller",
                    max_reconnect_attempts=-1,  # a service outlives NATS restarts
                    reconnect_time_wait=0.5,
                    connect_timeout=5,
                    error_cb=self._nats_error,
                ),
                NATS_CONNECT_TIMEOUT,
            )
            self._nats_connected = True
        await ensure_streams_with(self.nc.jetstream())
        if self._acks is None:
            acks = AckInbox(self.nc)
            await acks.open()
            self._acks = acks
        self._nats_ready = True

    async def _nats_error(self, exc: Exception) -> None:
        """nats-py's errors (a lost connection, a refused reconnection): the publisher says what they
        cause, one line per cause ("publishing failed, will retry"); the details at DEBUG."""
        log.debug("nats: %s", one_line(exc) or type(exc).__name__)

    async def _publisher(self) -> None:
        """Send the outbox's events in order, in batches: every event waiting (at most PUBLISH_WINDOW) in
        one write, at most one batch every PUBLISH_LINGER seconds, the next batch once JetStream has
        acknowledged the last one. An event leaves the outbox (``task_done``) once JetStream has stored it.
        On a failure (an error answer, no answer within ACK_TIMEOUT, NATS away) every unacknowledged event
        is sent again, in order, the first one alone until JetStream stores it."""
        delay = 0.2
        careful = False  # after a failure: one event at a time until one is stored
        window = self._window
        outbox = self._outbox
        clock = asyncio.get_running_loop().time
        sent_at = 0.0
        while True:
            try:
                if not window:  # the next batch
                    idle = outbox.empty()
                    window.append(Sent(await outbox.get()))
                    # the devices polled meanwhile go out in the same write
                    linger = PUBLISH_LINGER if idle else sent_at + PUBLISH_LINGER - clock()
                    if linger > 0:
                        await asyncio.sleep(linger)
                    while len(window) < PUBLISH_WINDOW and not outbox.empty():
                        window.append(Sent(outbox.get_nowait()))
                if not self._nats_ready:
                    await self._connect_nats()
                acks = self._acks
                assert acks is not None
                if await acks.send(window, 1 if careful else PUBLISH_WINDOW):
                    sent_at = clock()
                first = window[0]
                if not first.stored and first.error is None:
                    acks.settled.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(first.deadline):
                            await acks.settled.wait()
                stored = 0
                while window and window[0].stored:
                    window.popleft()
                    outbox.task_done()
                    stored += 1
                if stored:
                    self.published += stored
                    PUBLISHED.inc(stored)
                    self.complaints.clear("nats", "publishing again")
                    careful, delay = False, 0.2
                if window:
                    first = window[0]
                    if first.error is not None:
                        raise NotStored(first.error)
                    if first.token is not None and clock() >= first.deadline:  # (None: sent next round)
                        raise NotStored(f"no acknowledgement from JetStream within {ACK_TIMEOUT:.0f} s")
            except Exception as exc:
                self.complaints.complain("nats", f"publishing failed, will retry: {one_line(exc)}")
                # re-check the streams first next time (a NATS server restarted without its data)
                self._nats_ready = False
                if self._acks is not None:
                    self._acks.forget(window)
                careful = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- Redis live state ---------------------------------------------------------------------------

    def _mark_live(self, target: Target) -> None:
        self._dirty[target.device.id] = target.live
        self._dirty_event.set()

    async def _write_live(self) -> None:
        """Every live state changed since the last write (one MSET), and the removed devices' deleted."""
        batch, self._dirty = self._dirty, {}
        forget, self._forget = self._forget, set()
        site = self.site.site
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                states = {
                    live_key(site, device): live.model_dump_json()
                    for device, live in batch.items()
                    if device not in forget
                }
                if states:
                    pipe.mset(states)
                if forget:
                    pipe.delete(*(live_key(site, device) for device in forget))
                await pipe.execute()
        except BaseException:
            for device, live in batch.items():
                self._dirty.setdefault(device, live)  # unless a newer state arrived meanwhile
            self._forget |= forget
            raise

    async def _live_writer(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            try:
                await self._write_live()
            except Exception as exc:
                self.complaints.complain("redis", f"writing live state failed, will retry: {one_line(exc)}")
                await asyncio.sleep(1.0)
                self._dirty_event.set()
                continue
            self.complaints.clear("redis", "writing live state again")
            await asyncio.sleep(LIVE_EVERY)  # the states changing meanwhile go in the next write


STOP_TIMEOUT = 5.0  # seconds a task or a connection gets to finish when the poller stops


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait, bounded: a library call that does not honour cancellation must not hang stop()."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    for task in stuck:
        log.warning("poller: task %s did not stop within %.0f s; left behind", task.get_name(), STOP_TIMEOUT)


async def serve(settings: Settings) -> None:
    """Target ``poller``: runs until cancelled."""
    poller = Poller(settings)
    follower: asyncio.Task[None] | None = None
    rpc: asyncio.Task[None] | None = None
    try:
        await poller.start()
        rpc = asyncio.create_task(
            serve_requests(poller, poller.commands, settings.nats_url), name="poller-rpc"
        )
        # polling starts from the site file at once (readings queue while NATS is away); the stored
        # configuration takes over as soon as NATS answers, and every new version applies live
        follower = asyncio.create_task(
            follow_configuration(
                settings.nats_url, settings.site_path, "poller", lambda: poller.site, poller.apply_site
            ),
            name="poller-configuration",
        )
        await asyncio.Event().wait()
    finally:
        await _cancel([t for t in (follower, rpc) if t is not None])
        await poller.stop()
