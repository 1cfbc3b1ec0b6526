"""Read one device once, through the bus owner, before it is saved (the Configuration "Test" button).

The poller answers ``ews.<site>.rpc-poller.test-device`` (core NATS request/reply): the device is read
with the read plan and decoder the polling loop uses. One owner per bus: when the gateway of the form
(configured or new, whatever its id) is on the line of a configured gateway (same host and port, or same
serial port), the read goes through that gateway's connection, whose lock serializes it between two poll
transactions (never a second connection to the bus; the configured timeout and retries apply). When it
would speak another way on that line (another transport, or other serial settings), the test read is
refused with the reason: save the gateway first. Only a gateway on a line no configured gateway uses gets
a connection of its own, for this one read, closed after it.
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
    shared = poller.shared_bus(gateway)
    own = shared is None
    if shared is None:
        client = ModbusGateway.for_gateway(gateway)
    else:
        configured, client = shared
        if _framing(configured) != _framing(gateway):
            return ProbeReply(
                ok=False,
                error=f"gateway {gateway.id!r} is on {gateway.endpoint} as {_framing_text(gateway)}, but the "
                f"poller holds it for gateway {configured.id!r} as {_framing_text(configured)}: save the "
                "gateway first, then test (the bus is never opened twice)",
            )
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


def _framing(gateway: Gateway) -> tuple[object, ...]:
    """How a client speaks on its line: the transport, and a serial line's settings."""
    serial = gateway.serial
    settings = (serial.baudrate, serial.parity, serial.stopbits, serial.bytesize) if serial else None
    return (gateway.transport, settings)


def _framing_text(gateway: Gateway) -> str:
    serial = gateway.serial
    if serial is None:
        return gateway.transport
    stop = f"{serial.stopbits} stop bit{'' if serial.stopbits == 1 else 's'}"
    return f"rtu ({serial.baudrate} baud, {serial.bytesize} data bits, parity {serial.parity}, {stop})"
