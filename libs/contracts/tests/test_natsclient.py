"""The fast header parser agrees with nats-py's own parser, and falls back to it for anything unusual."""

import asyncio

import nats
import pytest
from ews_contracts.natsclient import FastHeaderClient, connect_fast, parse_plain_headers
from nats.aio.client import Client

BLOCKS = [
    b"NATS/1.0\r\nNats-Msg-Id: demo.m1.1767225600000\r\n\r\n",
    b"NATS/1.0\r\nNats-Msg-Id: a\r\nNats-Expected-Stream: EWS_READINGS\r\n\r\n",
    b"NATS/1.0\r\nKey:value-without-space\r\nOther:  padded  \r\n\r\n",
    b"NATS/1.0\r\nX-Colon: a:b:c\r\n\r\n",
]
UNUSUAL = [
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\n\r\n",  # inline status
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"NATS/1.0\r\nFolded: a\r\n b\r\n\r\n",
    b"NATS/1.0\r\nno colon here\r\n\r\n",
]


@pytest.mark.parametrize("block", BLOCKS)
async def test_plain_blocks_parse_like_nats_py(block: bytes):
    expected = await Client()._process_headers(block)
    assert parse_plain_headers(block) == expected
    assert await FastHeaderClient()._process_headers(block) == expected


@pytest.mark.parametrize("block", UNUSUAL)
async def test_unusual_blocks_go_to_nats_py(block: bytes):
    assert parse_plain_headers(block) is None or block.startswith(b"NATS/1.0 ")
    assert await FastHeaderClient()._process_headers(block) == await Client()._process_headers(block)


@pytest.mark.integration
async def test_headers_arrive_through_a_real_server(nats_url: str):
    fast = await connect_fast(nats_url, "test")
    plain = await nats.connect(nats_url)
    try:
        got: asyncio.Queue = asyncio.Queue()
        await fast.subscribe("ews.t.>", cb=got.put)
        await fast.flush()
        await plain.publish("ews.t.x", b"{}", headers={"Nats-Msg-Id": "id-1", "A": "b c"})
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg.headers == {"Nats-Msg-Id": "id-1", "A": "b c"} and msg.data == b"{}"
    finally:
        await fast.close()
        await plain.close()


# --- bulk delivery -----------------------------------------------------------------------------------


class _Recorder(FastHeaderClient):
    """A client without a connection: records what nats-py's own path receives."""

    def __init__(self) -> None:
        super().__init__()
        self.classic: list[tuple] = []
        self.ops: list[str] = []

    async def _process_msg(self, sid, subject, reply, data, headers):  # type: ignore[override]
        self.classic.append((sid, subject, reply, data, headers))

    async def _process_ping(self):  # type: ignore[override]
        self.ops.append("ping")

    async def _process_pong(self):  # type: ignore[override]
        self.ops.append("pong")

    async def _process_info(self, info, initial_connection=False):  # type: ignore[override]
        self.ops.append(f"info {info['x']}")


def _wire(frames: list[tuple[bytes, int, bytes, bytes, bytes]]) -> tuple[bytes, list]:
    out, expected = b"", []
    for n, (subject, sid, reply, headers, data) in enumerate(frames):
        if n % 7 == 3:
            out += b"PING\r\n"
        if n % 11 == 5:
            out += b'INFO {"x":%d}\r\n' % n
        if n % 13 == 2:
            out += b"+OK\r\n"
        line = subject + b" " + str(sid).encode() + (b" " + reply if reply else b"")
        if headers:
            out += b"HMSG " + line + b" %d %d\r\n" % (len(headers), len(headers) + len(data))
            out += headers + data + b"\r\n"
        else:
            out += b"MSG " + line + b" %d\r\n" % len(data) + data + b"\r\n"
        expected.append((subject, sid, reply, headers, data))
    return out, expected


@pytest.mark.parametrize("step", [1, 7, 100, 4096, 10**6])
async def test_bulk_frames_arrive_whole_and_in_order_whatever_the_reads(step: int):
    import random

    rng = random.Random(step)
    frames = []
    for n in range(300):
        sid = rng.choice([1, 1, 1, 2])
        headers = rng.choice(
            [b"", b"NATS/1.0\r\nNats-Msg-Id: id%d\r\n\r\n" % n, b"NATS/1.0 100 Idle Heartbeat\r\n\r\n"]
        )
        data = (
            bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 50, 300])))
            if headers[9:12] != b"100"
            else b""
        )
        reply = rng.choice([b"", b"$JS.ACK.S.c.1.%d.%d.1.0" % (n, n)])
        frames.append((f"ews.s.reading.d{n % 5}".encode(), sid, reply, headers, data))
    wire, expected = _wire(frames)
    client = _Recorder()
    got: list[tuple] = []

    def sink(f):
        for s, r, h, d in zip(f.subjects, f.replies, f.headers, f.datas, strict=True):
            got.append((s, 1, r, h, d))

    client._bulk[1] = sink
    for i in range(0, len(wire), step):
        await client._ps.parse(wire[i : i + step])
    assert got == [f for f in expected if f[1] == 1]
    assert [(c[0], c[1], c[2], c[3], c[4] or b"") for c in client.classic] == [
        (2, s, r, d, h) for s, sid, r, h, d in expected if sid == 2
    ]
    assert client.ops.count("ping") == sum(1 for n in range(300) if n % 7 == 3)
    assert [o for o in client.ops if o.startswith("info")] == [f"info {n}" for n in range(300) if n % 11 == 5]
    assert not client._ps.buf  # everything consumed


async def test_a_malformed_message_line_is_a_protocol_error():
    from nats.errors import ProtocolError

    client = _Recorder()
    client._bulk[1] = lambda f: None
    with pytest.raises(ProtocolError):
        await client._ps.parse(b"MSG a 1 x y z\r\nhello\r\n")


@pytest.mark.integration
async def test_bulk_subscribe_through_a_real_server(nats_url: str):
    fast = await connect_fast(nats_url, "test")
    plain = await nats.connect(nats_url)
    try:
        bulk: list = []
        classic: asyncio.Queue = asyncio.Queue()
        sub = await fast.bulk_subscribe(
            "ews.b.>", lambda f: bulk.extend(zip(f.subjects, f.headers, f.datas, strict=True))
        )
        await fast.subscribe("ews.c.>", cb=classic.put)
        await fast.flush()
        for n in range(2000):
            await plain.publish(f"ews.b.{n % 3}", b"x" * (n % 50), headers={"Nats-Msg-Id": f"id-{n}"})
        await plain.publish("ews.c.x", b"{}", headers={"A": "b"})
        await plain.flush()
        msg = await asyncio.wait_for(classic.get(), 10)
        assert msg.headers == {"A": "b"} and msg.data == b"{}"
        for _ in range(200):
            if len(bulk) == 2000:
                break
            await asyncio.sleep(0.05)
        assert [(s, d) for s, _, d in bulk] == [
            (f"ews.b.{n % 3}".encode(), b"x" * (n % 50)) for n in range(2000)
        ]
        assert await fast._process_headers(bulk[7][1]) == {"Nats-Msg-Id": "id-7"}
        await sub.unsubscribe()
        await plain.publish("ews.b.0", b"late")
        await plain.flush()
        await asyncio.sleep(0.2)
        assert len(bulk) == 2000 and not fast._bulk
    finally:
        await fast.close()
        await plain.close()
