"""Follow a site's events with a durable JetStream consumer, per docs/asyncapi.json (nats-py only).

    python consumer.py --site demo --durable my-app [--kind reading --kind dead-letter] [--idle 10]

Prints one JSON line per message ({subject, headers, event}) and acknowledges it after printing. The durable
consumer (one per kind, named <durable>-<kind>) lives in the stream: stopped and started again, it resumes
where it stopped. Delivery is at least once (dedupe by event_id) and readings may come out of time order
(order by occurred_at). --idle N stops after N seconds without a message.
"""

import argparse
import asyncio
import json

import nats

STREAMS = {  # the x-ews-stream of each channel of docs/asyncapi.json
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


async def follow(url, site, durable, kinds, handle, idle=None):
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        subs = [
            await js.pull_subscribe(f"ews.{site}.{kind}.*", durable=f"{durable}-{kind}", stream=STREAMS[kind])
            for kind in kinds
        ]
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--site", required=True)
    parser.add_argument("--durable", required=True, help="your application's name (never 'aggregator')")
    parser.add_argument("--kind", action="append", choices=sorted(STREAMS), help="default: reading")
    parser.add_argument("--idle", type=float, default=None, help="stop after this many quiet seconds")
    args = parser.parse_args()

    def show(subject, headers, event):
        print(json.dumps({"subject": subject, "headers": headers, "event": event}), flush=True)

    asyncio.run(follow(args.nats, args.site, args.durable, args.kind or ["reading"], show, args.idle))


if __name__ == "__main__":
    main()
