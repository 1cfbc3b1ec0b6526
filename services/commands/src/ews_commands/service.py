"""Commands service: consumes CommandRequested from JetStream, checks it, executes it, records the outcome.

- Durable pull consumer ``commands`` on ``EWS_COMMANDS``, subject ``ews.<site>.command-requested.*``; a new
  consumer starts with the requests published from then on (the stream is the audit log: history is
  never re-executed), and a restarted service resumes where it stopped.
- Each request is checked against the site and the device profile (``ews_contracts.commandcheck``),
  then queued on its gateway's queue (FIFO) and asked of the bus owner, the poller, which executes it
  between two poll transactions (``executor.py``): this service never opens a bus.
- Every command has a deadline (``deadline`` in the request, else ``occurred_at`` + EWS_COMMAND_DEADLINE):
  it is executed before it, or it ends as CommandExpired and is never executed afterwards.
- The outcome (CommandCompleted / CommandFailed / CommandExpired) has ``event_id = <command_id>.outcome``:
  a redelivered request cannot record two outcomes. The request is acked only after its outcome is
  published; when publishing fails it is nacked and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict

import nats
import nats.errors
from ews_contracts.bus import ensure_streams, jstream, make_broker, publish_event
from ews_contracts.commandcheck import CommandRejected, plan_command
from ews_contracts.events import CommandRequested
from ews_contracts.profiles import Profile, load_profiles
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.siteconfig import LiveSite
from ews_contracts.streams import COMMANDS
from ews_contracts.subjects import Kind, pattern
from ews_contracts.text import one_line
from faststream import AckPolicy
from faststream.nats import NatsBroker, NatsMessage, PullSub
from faststream.nats.annotations import NatsMessage as NatsMessageParam
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import Counter
from pydantic import ValidationError

from .executor import Executor, NoResponders, Outcome, failed

log = logging.getLogger("ews.commands")

OUTCOMES = Counter("ews_commands_outcomes_total", "Command outcomes recorded: completed, failed, expired", ["outcome"])
DURABLE = "commands"  # + "-<site>": one durable consumer per site on a shared (hub) stream
_REMEMBERED = 1024  # outcomes kept to answer redeliveries without writing again


class CommandsService:
    """The service's state; ``start()`` / ``stop()`` (``serve`` wraps them)."""

    def __init__(
        self,
        settings: Settings,
        *,
        site: Site | None = None,
        profiles: dict[str, Profile] | None = None,
    ) -> None:
        self.settings = settings
        self.site = site or settings.site
        self.profiles = profiles if profiles is not None else load_profiles(settings.profiles_dir)
        self.executor = Executor(self.site.site, list(self.site.gateways), self._ask)
        self.broker: NatsBroker = make_broker(settings.nats_url, "commands")
        self._nc: nats.aio.client.Client | None = None
        self._done: OrderedDict[str, Outcome] = OrderedDict()
        self._pending: set[str] = set()

        async def on_request(msg: NatsMessageParam) -> None:
            await self.handle(msg)

        self.broker.subscriber(
            pattern(self.site.site, Kind.COMMAND_REQUESTED),
            stream=jstream(COMMANDS),
            durable=f"{DURABLE}-{self.site.site}",
            pull_sub=PullSub(batch_size=1, timeout=5.0),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_wait=120, max_deliver=10),
            ack_policy=AckPolicy.MANUAL,
            title="commands:CommandRequested",
            description="Executes device commands (serialized per gateway, verified by read-back).",
        )(on_request)

    async def _ask(self, subject: str, payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        """One request to the bus owner (see executor.ask_owner)."""
        if self._nc is None or self._nc.is_closed:
            raise NoResponders("not connected to NATS")
        try:
            msg = await self._nc.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoResponders(subject) from None
        except TimeoutError:
            raise
        except nats.errors.Error as exc:  # closed, stale, buffer full: not sent, try again
            raise NoResponders(one_line(exc) or type(exc).__name__) from None
        return msg.data

    async def start(self) -> None:
        self._nc = await nats.connect(
            self.settings.nats_url, name="commands-rpc", max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        await self.broker.connect()
        await ensure_streams(self.broker)
        self.executor.start()
        await self.broker.start()
        log.info("commands: consuming %s", pattern(self.site.site, Kind.COMMAND_REQUESTED))

    async def apply_site(self, site: Site) -> None:
        """A new configuration, live: commands are checked against the new devices and profiles from now
        on, and gateways' connections follow their new settings."""
        self.site = site
        await self.executor.apply(list(site.gateways))

    async def stop(self) -> None:
        try:
            await self.broker.stop()
        finally:
            await self.executor.close()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()

    # --- one message -------------------------------------------------------------------------------

    async def handle(self, msg: NatsMessage) -> None:
        """Never raises: a bad message is answered (when it names a command) and dropped."""
        try:
            await self._handle(msg)
        except Exception:
            log.exception("commands: unexpected error handling a request; it will be redelivered")
            await _settle(msg.nack(delay=2.0))

    async def _handle(self, msg: NatsMessage) -> None:
        body: bytes = msg.body
        try:
            request = CommandRequested.model_validate_json(body)
        except ValidationError as exc:
            await self._refuse_malformed(msg, body, exc)
            return
        if request.site != self.site.site:
            await self._finish(
                msg, request, failed(request, f"site {request.site!r} is not this site ({self.site.site!r})")
            )
            return
        if request.command_id in self._done:  # redelivered after we executed it: same outcome, no new write
            await self._finish(msg, request, self._done[request.command_id])
            return
        if request.command_id in self._pending:  # redelivered while still queued: the queued one will ack
            return
        deadline = request.deadline_or(self.settings.command_deadline)
        try:
            plan = plan_command(self.site, self.profiles, request.device, request.action, request.value)
        except CommandRejected as exc:
            await self._finish(msg, request, failed(request, str(exc)))
            return
        self._pending.add(request.command_id)

        async def on_outcome(req: CommandRequested, outcome: Outcome) -> None:
            self._pending.discard(req.command_id)
            await self._finish(msg, req, outcome)

        log.info(
            "command %s: %s %s=%s queued on %s (deadline %s)",
            request.command_id,
            request.device,
            request.action,
            plan.value,
            plan.device.gateway,
            deadline.isoformat(timespec="milliseconds"),
        )
        # (even past its deadline it is asked once: the bus owner answers the outcome when it ran it
        # before a restart of this service, else records it as expired)
        self.executor.submit(request, plan, deadline, on_outcome)

    async def _finish(self, msg: NatsMessage, request: CommandRequested, outcome: Outcome) -> None:
        """Publish the outcome, then ack; when publishing fails, nack (redelivery republishes it)."""
        if request.command_id not in self._done:  # counted once, not again for a redelivery
            OUTCOMES.labels(outcome.KIND.removeprefix("command-")).inc()
        self._remember(request.command_id, outcome)
        try:
            await publish_event(self.broker, outcome)
        except Exception as exc:
            log.warning(
                "command %s: publishing its outcome failed (%s); will retry",
                request.command_id,
                one_line(str(exc) or type(exc).__name__),
            )
            await _settle(msg.nack(delay=2.0))
            return
        error = getattr(outcome, "error", None)
        if error:
            log.info("command %s: %s: %s", request.command_id, outcome.KIND.removeprefix("command-"), error)
        else:
            log.info("command %s: completed (%s)", request.command_id, getattr(outcome, "readback", None))
        await _settle(msg.ack())

    def _remember(self, command_id: str, outcome: Outcome) -> None:
        self._done[command_id] = outcome
        self._done.move_to_end(command_id)
        while len(self._done) > _REMEMBERED:
            self._done.popitem(last=False)

    async def _refuse_malformed(self, msg: NatsMessage, body: bytes, exc: ValidationError) -> None:
        """Not a valid CommandRequested: answer with CommandFailed when it names a command, then drop it."""
        reason = one_line(f"malformed CommandRequested: {_first_error(exc)}")
        log.warning("commands: %s", reason)
        try:
            raw = json.loads(body)
        except ValueError:
            raw = None
        if isinstance(raw, dict) and all(
            isinstance(raw.get(k), str) for k in ("command_id", "device", "action")
        ):
            stub = CommandRequested.model_construct(
                site=self.site.site,
                command_id=raw["command_id"],
                device=raw["device"],
                action=raw["action"],
                value=raw["value"] if isinstance(raw.get("value"), str) else None,
            )
            try:
                outcome = failed(stub, reason)
                await publish_event(self.broker, outcome)
            except Exception as pub_exc:  # e.g. ids that cannot form a subject: nothing to answer
                log.warning("commands: cannot answer a malformed request: %s", one_line(str(pub_exc)))
        await _settle(msg.reject())


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    err = errors[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {err.get('msg', 'invalid')}{more}"


async def _settle(action) -> None:
    try:
        await action
    except Exception as exc:  # the connection may be gone; JetStream redelivers after ack_wait
        log.warning("commands: ack/nack failed: %s", one_line(str(exc) or type(exc).__name__))


async def serve(settings: Settings) -> None:
    """Target ``commands``: runs until cancelled."""
    live = await LiveSite.connect(settings.nats_url, settings.site_path, "commands")
    service = CommandsService(settings, site=live.site)
    try:
        await service.start()
        live.on_change(lambda site, event: service.apply_site(site))  # noqa: ARG005
        await live.follow()
        await asyncio.Event().wait()
    finally:
        await live.close()
        await service.stop()
