"""The command log: ``GET /api/v1/commands`` and the page ``/configuration/commands``, through the real app
(create_app, the real auth service, nats-server, redis-server, chDB). Commands and their outcomes are
published on EWS_COMMANDS as the gateway-api and the commands service publish them; the log is read back
from the stream (not from the Redis records)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import pytest
from ews_contracts.bus import publish_event
from ews_contracts.events import (
    CommandCompleted,
    CommandExpired,
    CommandFailed,
    CommandRequested,
    Event,
    utcnow,
)
from ews_gateway_api.domain import commands
from ews_gateway_api.i18n import Formats
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for

pytestmark = pytest.mark.integration

PAGE = "/configuration/commands"
API = "/api/v1/commands"
T0 = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)  # 10:30 in Paris, the demo site's time zone


async def as_role(client: AsyncClient, app: Litestar, role: str) -> AsyncClient:
    client.cookies.clear()
    client.cookies.update(await session_for(app, role))
    return client


async def publish(app: Litestar, *events: Event) -> None:
    for event in events:
        await publish_event(app.state.broker, event)


def request(
    device: str, action: str, value: str | None, by: str, at: datetime, **extra: Any
) -> CommandRequested:
    return CommandRequested(
        site="demo",
        occurred_at=at,
        device=device,
        action=action,
        value=value,
        requested_by=by,
        deadline=extra.pop("deadline", at + timedelta(seconds=30)),
        **extra,
    )


def outcome(kind: type[Event], req: CommandRequested, after: float = 2.0, **fields: Any) -> Event:
    return kind(
        site="demo",
        event_id=f"{req.command_id}.outcome",
        occurred_at=req.occurred_at + timedelta(seconds=after),
        command_id=req.command_id,
        device=req.device,
        action=req.action,
        value=req.value,
        **fields,
    )


@pytest.fixture
async def logged(client: AsyncClient, app: Litestar) -> dict[str, CommandRequested]:
    """Five commands, oldest first: completed, failed, expired (its event), one without an outcome whose
    deadline passed long ago (reads expired) and one still waiting (deadline in the future)."""
    now = utcnow()
    done = request("ev1", "charge", "start", "greenUp", T0)
    failed = request("f1-light", "relay", "open", "installer", T0 + timedelta(minutes=5))
    expired = request("io1", "output-2", "on", "administrator", T0 + timedelta(minutes=10))
    lost = request("ev1", "priority", "priority", "greenUp", T0 + timedelta(minutes=15))
    waiting = request(
        "ev2a", "ev-socket", "disable", "administrator", now, deadline=now + timedelta(minutes=5)
    )
    await publish(
        app,
        done,
        failed,
        expired,
        outcome(CommandCompleted, done, readback="charging"),
        outcome(CommandFailed, failed, error="gateway gw1 did not answer (timeout)"),
        outcome(
            CommandExpired,
            expired,
            after=31,
            deadline=expired.deadline,
            error="the bus owner did not take it before its deadline",
        ),
        lost,
        waiting,
    )
    return {"done": done, "failed": failed, "expired": expired, "lost": lost, "waiting": waiting}


# --- API -------------------------------------------------------------------------------------------------


async def test_the_api_lists_the_commands_newest_first_with_their_outcome(
    client: AsyncClient, app: Litestar, logged: dict[str, CommandRequested]
):
    c = await as_role(client, app, "installer")
    resp = await c.get(API)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["more"] is False
    rows = body["commands"]
    assert [r["id"] for r in rows] == [
        logged[k].command_id for k in ("waiting", "lost", "expired", "failed", "done")
    ]
    by_id = {r["id"]: r for r in rows}
    done = by_id[logged["done"].command_id]
    assert (done["status"], done["device"], done["action"], done["value"], done["requested_by"]) == (
        "completed",
        "ev1",
        "charge",
        "start",
        "greenUp",
    )
    assert done["readback"] == "charging" and done["error"] is None
    assert datetime.fromisoformat(done["requested_at"]) == T0
    assert datetime.fromisoformat(done["deadline"]) == T0 + timedelta(seconds=30)
    assert datetime.fromisoformat(done["finished_at"]) == T0 + timedelta(seconds=2)
    failed = by_id[logged["failed"].command_id]
    assert (failed["status"], failed["error"], failed["readback"]) == (
        "failed",
        "gateway gw1 did not answer (timeout)",
        None,
    )
    expired = by_id[logged["expired"].command_id]
    assert expired["status"] == "expired" and expired["error"].startswith("the bus owner")
    assert expired["finished_at"] is not None
    lost = by_id[logged["lost"].command_id]
    assert lost["status"] == "expired" and lost["finished_at"] is None and "deadline" in lost["error"]
    waiting = by_id[logged["waiting"].command_id]
    assert (waiting["status"], waiting["finished_at"], waiting["error"]) == ("requested", None, None)


async def test_the_api_limit_and_device_filter(
    client: AsyncClient, app: Litestar, logged: dict[str, CommandRequested]
):
    c = await as_role(client, app, "administrator")
    two = (await c.get(API, params={"limit": 2})).json()
    assert [r["id"] for r in two["commands"]] == [logged["waiting"].command_id, logged["lost"].command_id]
    assert two["more"] is True
    ev1 = (await c.get(API, params={"device": "ev1"})).json()
    assert [r["id"] for r in ev1["commands"]] == [logged["lost"].command_id, logged["done"].command_id]
    assert ev1["more"] is False
    assert (await c.get(API, params={"device": "ev1", "limit": 1})).json()["more"] is True
    everything = (await c.get(API, params={"device": ""})).json()  # empty: every device
    assert len(everything["commands"]) == 5
    assert (await c.get(API, params={"device": "no-such-device"})).json() == {"commands": [], "more": False}
    for params in ({"limit": 0}, {"limit": 501}, {"limit": "many"}, {"device": "ev1.>"}, {"device": "EV 1"}):
        resp = await c.get(API, params=params)
        assert resp.status_code == 400, (params, resp.text)
    assert (await c.get(API, params={"limit": 500})).status_code == 200


async def test_the_api_with_no_command_yet(client: AsyncClient, app: Litestar):
    c = await as_role(client, app, "installer")
    assert (await c.get(API)).json() == {"commands": [], "more": False}


@pytest.mark.parametrize("role", ["greenUp", "user"])
async def test_the_api_refuses_other_roles(client: AsyncClient, app: Litestar, role: str):
    c = await as_role(client, app, role)
    assert (await c.get(API)).status_code == 403


async def test_the_api_refuses_anonymous(client: AsyncClient):
    client.cookies.clear()
    assert (await client.get(API)).status_code == 401


async def test_the_api_reads_only_the_tail_of_a_long_log(
    client: AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
):
    """600 commands (1,200 messages): a listing of 20 reads a few dozen messages, newest first; a device
    that commands rarely is still listed in full."""
    read: list[int] = []
    original = commands.read_stream

    async def counting(*args: Any, **kwargs: Any):
        async for batch in original(*args, **kwargs):
            read.append(len(batch))
            yield batch

    monkeypatch.setattr(commands, "read_stream", counting)
    sent: list[CommandRequested] = []
    for n in range(600):
        device = "io2" if n % 100 == 7 else "io1"  # io2: 6 commands spread over the whole log
        req = request(device, "output-1", "on" if n % 2 else "off", "installer", T0 + timedelta(seconds=n))
        sent.append(req)
        await publish(app, req, outcome(CommandCompleted, req, after=0.5, readback=req.value))
    c = await as_role(client, app, "installer")

    body = (await c.get(API, params={"limit": 20})).json()
    assert [r["id"] for r in body["commands"]] == [r.command_id for r in sent[::-1][:20]]
    assert all(r["status"] == "completed" for r in body["commands"]) and body["more"] is True
    assert 40 <= sum(read) <= 100, read

    read.clear()
    rare = (await c.get(API, params={"device": "io2", "limit": 50})).json()
    assert [r["id"] for r in rare["commands"]] == [r.command_id for r in sent[::-1] if r.device == "io2"]
    assert rare["more"] is False and sum(read) == 12

    read.clear()
    most = (await c.get(API, params={"limit": 500})).json()
    assert len(most["commands"]) == 500 and most["commands"][-1]["id"] == sent[100].command_id
    assert sum(read) <= 2 * 1000 + 10


# --- page ------------------------------------------------------------------------------------------------


def rows_of(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [" ".join(unescape(re.sub(r"<[^>]+>", " ", row)).split()) for row in body.split("</tr>")[:-1]]


@pytest.mark.parametrize("role", ["administrator", "installer"])
async def test_the_page_shows_each_command_and_its_outcome(
    client: AsyncClient, app: Litestar, logged: dict[str, CommandRequested], role: str
):
    c = await as_role(client, app, role)
    page = await c.get(PAGE)
    assert page.status_code == 200, page.text[:300]
    html = page.text
    assert "<h1>Command log</h1>" in html
    assert '<a href="/configuration/commands" aria-current="page">Command log</a>' in html
    rows = rows_of(html)
    assert len(rows) == 5
    when = " ".join(Formats("en", "EUR", app.state.site.tz).datetime(T0, "short").split())
    assert "10:30" in when  # the site's time zone (Paris), not UTC
    assert rows[4] == f"{when} Parking charger ev1 Current charge → Start Green'Up Done (read back: Charging)"
    assert rows[3].endswith(
        "Floor 1 lighting f1-light Relay / contactor → Open Installer Failed — gateway gw1 did not answer (timeout)"
    )
    assert rows[2].endswith(
        "Plant-room supervision interface io1 Relay output 2 → On Administrator "
        "Expired, not executed — the bus owner did not take it before its deadline"
    )
    assert rows[1].endswith("Parking charger ev1 Priority → Priority Green'Up Expired, not executed — "
                            "no outcome by its deadline: the command never reached the bus owner")  # fmt: skip
    assert "Visitors charger (side A) ev2a EV plug socket → Disable Administrator No outcome yet" in rows[0]
    assert f'datetime="{T0.isoformat()}"' in html
    # the filter: every device that takes commands, none chosen
    assert '<option value="" selected>All devices</option>' in html
    assert '<option value="f1-light">Floor 1 lighting (f1-light)</option>' in html
    assert 'value="pm-premium"' not in html  # a meter takes no commands


async def test_the_page_filters_by_device(
    client: AsyncClient, app: Litestar, logged: dict[str, CommandRequested]
):
    c = await as_role(client, app, "installer")
    page = await c.get(PAGE, params={"device": "ev1"})
    assert page.status_code == 200
    rows = rows_of(page.text)
    assert len(rows) == 2 and all("Parking charger ev1" in row for row in rows)
    assert '<option value="ev1" selected>Parking charger (ev1)</option>' in page.text
    none = await c.get(PAGE, params={"device": "io2"})
    assert rows_of(none.text) == ["No command recorded for this device."]
    assert (await c.get(PAGE, params={"device": ""})).status_code == 200
    assert (await c.get(PAGE, params={"device": "ev1.*"})).status_code == 404


async def test_the_page_without_commands(client: AsyncClient, app: Litestar):
    c = await as_role(client, app, "administrator")
    page = await c.get(PAGE)
    assert page.status_code == 200 and rows_of(page.text) == ["No command recorded yet."]


@pytest.mark.parametrize("role", ["greenUp", "user"])
async def test_the_page_refuses_other_roles(client: AsyncClient, app: Litestar, role: str):
    c = await as_role(client, app, role)
    resp = await c.get(PAGE)
    assert resp.status_code == 403 and "Not for your role" in resp.text


async def test_the_page_asks_anonymous_to_sign_in(client: AsyncClient):
    client.cookies.clear()
    resp = await client.get(PAGE)
    assert resp.status_code == 401 and 'name="pin"' in resp.text
