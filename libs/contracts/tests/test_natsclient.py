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
