r"""Publish a reading to an energy web server site, per docs/asyncapi.json (nats-py only).

    python producer.py --site demo --device m1 --profile multifunction-meter-412045 \
        --value energy_active_import=1234567.5 --value power_active=820 [--at 2026-05-04T10:00:00Z] [--wait 5]

The reading is stored once JetStream acknowledges it; the product then checks it (the device and its profile
from GET /api/v1/devices, values in the quantities' units) and, when it is refused, publishes the reason on
ews.<site>.dead-letter.reading: --wait N watches that subject for N seconds and prints the verdict.

Publish at the site's own server: a single box, or in a multi-site deployment the site's edge (its stream
EWS_READINGS), never the hub: no stream at the hub stores readings (its EWS_READINGS_<site> only copies the
edge's; the document's `hub` server and x-ews-hub). --stream names the stream that must store the reading
(JetStream refuses the publish when another would).
"""

import argparse
import asyncio
import json
from datetime import UTC, datetime

import nats


async def publish_reading(url, site, device, profile, values, at, wait=0.0, stream="EWS_READINGS"):
    ms = int(at.timestamp() * 1000)
    event = {
        "event_id": f"{site}.{device}.{ms}",  # deterministic: a retry is dropped as a duplicate
        "site": site,
        "occurred_at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "schema_version": 1,
        "device": device,
        "profile": profile,
        "values": values,  # quantity -> number, in the quantity's unit (Wh, W, V, A, dm³ ...)
    }
    nc = await nats.connect(url)
    try:
        rejections = await nc.subscribe(f"ews.{site}.dead-letter.reading")
        ack = await nc.jetstream().publish(
            f"ews.{site}.reading.{device}",
            json.dumps(event).encode(),
            headers={"Nats-Msg-Id": event["event_id"]},
            stream=stream,  # the stream expected to store it (x-ews-stream.name of the channel)
        )
        verdict = f"stored as {ack.stream} #{ack.seq}" + (" (a duplicate)" if ack.duplicate else "")
        deadline = asyncio.get_running_loop().time() + wait
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                record = json.loads((await rejections.next_msg(timeout=left)).data)
            except TimeoutError:
                break
            if record["stream_sequence"] == ack.seq:
                return f"{verdict}, rejected ({record['cause']}): {record['reason']}"
        return verdict + (f", not rejected within {wait:g} s" if wait else "")
    finally:
        await nc.close()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--site", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--value", action="append", default=[], help="quantity=number (repeatable)")
    parser.add_argument("--at", default=None, help="when the values were read (ISO 8601 with offset; now)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to watch for a rejection")
    parser.add_argument(
        "--stream",
        default="EWS_READINGS",
        metavar="NAME",
        help="the stream that must store the reading: x-ews-stream.name of the ReadingTaken channel, "
        "EWS_READINGS on a single box and on a site's edge (the default). Not the hub's EWS_READINGS_<site>: "
        "publish at the site's edge",
    )
    args = parser.parse_args()
    values = {q: float(v) for q, v in (item.split("=", 1) for item in args.value)}
    at = datetime.fromisoformat(args.at) if args.at else datetime.now(UTC)
    print(
        asyncio.run(
            publish_reading(
                args.nats, args.site, args.device, args.profile, values, at, args.wait, args.stream
            )
        )
    )


if __name__ == "__main__":
    main()
