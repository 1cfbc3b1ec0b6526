"""Follow a site's events with a durable JetStream consumer, per docs/asyncapi.json (nats-py only).

    python consumer.py --site demo --durable my-app [--kind reading --kind dead-letter] [--idle 10]
    python consumer.py --nats nats://HUB:4222 --stream '{stream}_{site}' --site demo --durable my-app

Prints one JSON line per message ({subject, headers, event}) and acknowledges it after printing. The durable
consumer (one per kind, named <durable>-<kind>) lives in the stream: stopped and started again, it resumes
where it stopped. Delivery is at least once (dedupe by event_id) and readings may come out of time order
(order by occurred_at). --idle N stops after N seconds without a message. On a single box or a site's edge
the streams have the names of the document's x-ews-stream.name (the default); at a hub each site has its
own (x-ews-stream.hub_name, e.g. EWS_READINGS_demo): pass --stream '{stream}_{site}'.
"""

import argparse
import asyncio
import json

import nats

STREAMS = {  # the x-ews-stream.name of each channel of docs/asyncapi.json (a single box, an edge)
    "reading": "EWS_READINGS",
    "status": "EWS_READINGS",
    "command-requested": "EWS_COMMANDS",
    "command-completed": "EWS_COMMANDS",
    "command-failed": "EWS_COMMANDS",
    "command-expired": "EWS_COMMANDS",
    "audit": "EWS_AUDIT",
    "site-configured": "EWS_CONFIG",
    "dead-letter": "EWS_DEAD_LETTER",
}


async def follow(url, site, durable, kinds, handle, idle=None, stream="{stream}"):
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        subs = []
        for kind in kinds:
            name = stream.format(stream=STREAMS[kind], site=site)  # the stream's name on this server
            subs.append(
                await js.pull_subscribe(f"ews.{site}.{kind}.*", durable=f"{durable}-{kind}", stream=name)
            )
        quiet = 0.0
        while idle is None or quiet < idle:
            got = 0
            for sub in subs:
                try:
                    msgs = await sub.fetch(100, timeout=1.0)
                except TimeoutError:  # (nats-py: nats.errors.TimeoutError, a TimeoutError)
                    continue
                for msg in msgs:
                    handle(msg.subject, dict(msg.headers or {}), json.loads(msg.data))
                    await msg.ack()  # after processing: a crash before it means a redelivery
                got += len(msgs)
            quiet = 0.0 if got else quiet + 1.0 * len(subs)
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
    parser.add_argument("--durable", required=True, help="your application's name (never 'aggregator')")
    parser.add_argument("--kind", action="append", choices=sorted(STREAMS), help="default: reading")
    parser.add_argument("--idle", type=float, default=None, help="stop after this many quiet seconds")
    parser.add_argument(
        "--stream",
        default="{stream}",
        metavar="NAME",
        help="the streams' names on the server you connect to; {stream} is the document's x-ews-stream.name "
        "(EWS_READINGS ...), {site} the site. Default '{stream}': a single box or a site's edge. At a hub: "
        "'{stream}_{site}' (x-ews-stream.hub_name, e.g. EWS_READINGS_demo); the hub's own audit "
        "(--site hub --kind audit) is EWS_AUDIT (the default). A plain name is used for every --kind.",
    )
    args = parser.parse_args()

    def show(subject, headers, event):
        print(json.dumps({"subject": subject, "headers": headers, "event": event}), flush=True)

    kinds = args.kind or ["reading"]
    asyncio.run(follow(args.nats, args.site, args.durable, kinds, show, args.idle, args.stream))


if __name__ == "__main__":
    main()
