"""The command buttons of the pages (POST /commands) through the real app (create_app, the real auth
service, nats-server, redis-server, chDB): a form sent twice (a double click, a queued resubmit) is one
command; once that command's outcome is shown the form gets a new key, so a deliberate second click is a
second command. The command service's outcome is published on EWS_COMMANDS as it publishes it."""

from __future__ import annotations

import asyncio
import re
from html import unescape

import pytest
from ews_contracts.bus import publish_event
from ews_contracts.events import CommandCompleted
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for

pytestmark = pytest.mark.integration

FORM = re.compile(r"<form\b[^>]*\bhx-post=\"/commands\"[^>]*>.*?</form>", re.DOTALL)
POLL = re.compile(r'hx-get="/commands/([0-9A-Za-z_-]+)"')


def forms(html: str) -> list[dict[str, str]]:
    """Each command form of a page: its attributes and hidden fields (name -> value), plus ``_html``."""
    out = []
    for match in FORM.finditer(html):
        text = match.group(0)
        fields = {
            unescape(name): unescape(value)
            for name, value in re.findall(r'<input type="hidden" name="([^"]+)"[^>]*value="([^"]*)"', text)
        }
        fields["_html"] = text
        out.append(fields)
    return out


def form_of(html: str, device: str, action: str) -> dict[str, str]:
    found = [f for f in forms(html) if f.get("device") == device and f.get("action") == action]
    assert len(found) == 1, f"{len(found)} forms for {device} {action}"
    return found[0]


def submit(form: dict[str, str], value: str) -> dict[str, str]:
    return {k: v for k, v in form.items() if not k.startswith("_")} | {"value": value}


async def logged(client: AsyncClient, app: Litestar, device: str) -> list[dict]:
    admin = await session_for(app, "administrator")
    resp = await client.get("/api/v1/commands", params={"device": device}, cookies=admin)
    assert resp.status_code == 200, resp.text
    return resp.json()["commands"]


@pytest.mark.parametrize(
    ("role", "page", "device", "action", "value"),
    [
        ("greenUp", "/greenup/management", "ev1", "charge", "start"),
        ("installer", "/installation/devices/io2?tab=outputs", "io2", "output-1", "on"),
    ],
)
async def test_a_form_sent_twice_is_one_command_and_a_new_key_follows_its_outcome(
    client: AsyncClient, app: Litestar, role: str, page: str, device: str, action: str, value: str
) -> None:
    cookies = await session_for(app, role)
    html = (await client.get(page, cookies=cookies)).text
    form = form_of(html, device, action)
    assert form.get("key"), "the command form carries no idempotency key"
    assert 'hx-disabled-elt="' in form["_html"], "the buttons are not disabled while the request runs"
    # each render issues its own key
    again = form_of((await client.get(page, cookies=cookies)).text, device, action)
    assert again["key"] != form["key"]

    first = await client.post("/commands", data=submit(form, value), cookies=cookies)
    second = await client.post("/commands", data=submit(form, value), cookies=cookies)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    (command_id,) = POLL.findall(first.text)
    assert POLL.findall(second.text) == [command_id], "the second submit of the form sent a second command"
    entries = await logged(client, app, device)
    assert [(c["id"], c["action"], c["value"]) for c in entries] == [(command_id, action, value)]

    # the outcome arrives: the fragment that shows it gives the form a new key (out of band)
    await publish_event(
        app.state.broker,
        CommandCompleted(
            event_id=f"{command_id}.outcome",
            site="demo",
            command_id=command_id,
            device=device,
            action=action,
            value=value,
            readback=value,
        ),
    )
    done = ""
    for _ in range(100):
        done = (await client.get(f"/commands/{command_id}", cookies=cookies)).text
        if "outcome-completed" in done:
            break
        await asyncio.sleep(0.05)
    assert "outcome-completed" in done, done
    fresh = re.search(r'<input[^>]*hx-swap-oob="true"[^>]*>', done)
    assert fresh is not None, "the outcome does not renew the form's key"
    new_key = re.search(r'value="([^"]*)"', fresh.group(0)).group(1)  # type: ignore[union-attr]
    key_id = re.search(r'id="([^"]*)"', fresh.group(0)).group(1)  # type: ignore[union-attr]
    assert new_key and new_key != form["key"]
    assert f'id="{key_id}"' in form["_html"], "the renewed key names no input of the form"

    # a deliberate second click, after the first finished: a second command
    third = await client.post("/commands", data=submit(form, value) | {"key": new_key}, cookies=cookies)
    (other_id,) = POLL.findall(third.text)
    assert other_id != command_id
    assert len(await logged(client, app, device)) == 2


async def test_start_then_wait_from_one_form_are_two_commands(client: AsyncClient, app: Litestar) -> None:
    """The form's key covers one value: Wait right after Start (same rendered form) is its own command."""
    cookies = await session_for(app, "greenUp")
    form = form_of((await client.get("/greenup/management", cookies=cookies)).text, "ev2a", "charge")
    start = await client.post("/commands", data=submit(form, "start"), cookies=cookies)
    wait = await client.post("/commands", data=submit(form, "wait"), cookies=cookies)
    assert "Refused" not in wait.text, wait.text
    assert len(set(POLL.findall(start.text) + POLL.findall(wait.text))) == 2
    assert sorted(c["value"] for c in await logged(client, app, "ev2a")) == ["start", "wait"]


async def test_a_refused_command_renews_the_key(client: AsyncClient, app: Litestar) -> None:
    cookies = await session_for(app, "installer")
    page = (await client.get("/installation/devices/io2?tab=outputs", cookies=cookies)).text
    form = form_of(page, "io2", "output-1")
    refused = await client.post("/commands", data=submit(form, "half"), cookies=cookies)
    assert "Refused" in refused.text and 'hx-swap-oob="true"' in refused.text
    assert await logged(client, app, "io2") == []
