"""Read one device once, through the bus owner, before it is saved (the Configuration "Test" button).

The poller answers ``ews.<site>.rpc-poller.test-device`` (core NATS request/reply): the device is read
with the read plan and decoder the polling loop uses. On a configured gateway whose settings are
unchanged the read goes through the poller's own connection, whose lock serializes it between two poll
transactions (never a second connection to the bus); a gateway that is new or changed in the form gets
a connection of its own for this one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from ews_contracts.events import ProbeReply, ProbeRequest
from ews_contracts.profiles import ProfileError, check_device
from ews_contracts.site import Device, Gateway
from ews_contracts.siteconfig import ConfigInvalid, field_path
from ews_contracts.subjects import poller_rpc
from ews_contracts.text import one_line
from ews_fieldbus import FieldbusError, ModbusGateway
from pydantic import ValidationError

from .decode import RegisterImage, decode_device
from .plan import ALL_TIERS, gap_worth_bridging, plan_reads

if TYPE_CHECKING:
    from .service import Poller

log = logging.getLogger("ews.poller")


def _model(kind: type, data: object, where: str):
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigInvalid(
            field_path((where, *err["loc"])), err["msg"].removeprefix("Value error, ")
        ) from None


async def test_device(poller: Poller, request: ProbeRequest) -> ProbeReply:
    try:
        device: Device = _model(Device, request.device, "device")
        if request.gateway is not None:
            gateway: Gateway = _model(Gateway, request.gateway, "gateway")
        else:
            known = [g for g in poller.site.gateways if g.id == device.gateway]
            if not known:
                raise ConfigInvalid("device.gateway", f"unknown gateway {device.gateway!r}")
            gateway = known[0]
        try:
            profile = check_device(device, poller.profiles)
        except ProfileError as exc:
            raise ConfigInvalid("device.profile", str(exc)) from None
    except ConfigInvalid as exc:
        return ProbeReply(ok=False, error=str(exc))
    reads = plan_reads(profile, device, max_gap=gap_worth_bridging(gateway.bus_baudrate))
    if not reads:
        return ProbeReply(ok=False, error=f"profile {profile.id!r} has nothing to read")
    configured = next((g for g in poller.site.gateways if g.id == gateway.id), None)
    client = poller._gateways.get(gateway.id) if configured == gateway else None
    own = client is None
    if own:
        client = ModbusGateway.for_gateway(gateway)
    try:
        blocks = {}
        for block in reads:
            blocks[block] = await client.read(device.address, block.fc, block.address, block.count)
    except FieldbusError as exc:
        return ProbeReply(ok=False, error=one_line(exc), transactions=len(blocks))
    except Exception as exc:  # anything pymodbus lets through
        return ProbeReply(ok=False, error=f"{type(exc).__name__}: {one_line(exc)}", transactions=len(blocks))
    finally:
        if own:
            with contextlib.suppress(Exception):
                await client.close()
    try:
        decoded = decode_device(profile, device, RegisterImage(blocks), ALL_TIERS)
    except ValueError as exc:
        return ProbeReply(ok=False, error=f"bad answer: {one_line(exc)}", transactions=len(blocks))
    return ProbeReply(
        ok=True, values=decoded.values, states=decoded.states, problems=decoded.problems, transactions=len(blocks)
    )


async def serve_requests(poller: Poller, nats_url: str) -> None:
    """Answer test reads until cancelled (connects, and reconnects, by itself)."""
    import nats

    while True:
        try:
            nc = await nats.connect(nats_url, name="poller-rpc", max_reconnect_attempts=-1, reconnect_time_wait=0.5)
            break
        except Exception:
            await asyncio.sleep(1.0)

    async def handle(msg) -> None:
        try:
            request = ProbeRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            reply = ProbeReply(ok=False, error=f"bad request: {one_line(exc)}")
        else:
            try:
                reply = await test_device(poller, request)
            except Exception as exc:  # never leave the caller waiting for its timeout
                log.error("poller: test read failed: %s", one_line(exc))
                reply = ProbeReply(ok=False, error=f"{type(exc).__name__}: {one_line(exc)}")
        with contextlib.suppress(Exception):
            await msg.respond(reply.model_dump_json().encode())

    try:
        # the site id never changes (subjects are keyed by it), so one subscription serves every version
        await nc.subscribe(poller_rpc(poller.site.site, "test-device"), cb=handle)
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
