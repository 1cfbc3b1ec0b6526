"""Read one device once, through the bus owner, before it is saved (the Configuration "Test" button).

The poller answers ``ews.<site>.rpc-poller.test-device`` (core NATS request/reply): the device is read
with the read plan and decoder the polling loop uses. On a configured gateway whose settings are
unchanged, or changed in the form but on the same host and port (or serial port), the read goes through
the poller's own connection, whose lock serializes it between two poll transactions (never a second
connection to the bus); a gateway that is new in the form gets a connection of its own for this one read.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from ews_contracts.events import ProbeReply, ProbeRequest
from ews_contracts.profiles import ProfileError, check_device
from ews_contracts.site import Device, Gateway
from ews_contracts.siteconfig import ConfigInvalid, field_path
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
    client = poller.shared_bus(gateway)
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
        ok=True,
        values=decoded.values,
        states=decoded.states,
        problems=decoded.problems,
        transactions=len(blocks),
    )
