"""The administration pages of Configuration (tariffs, site, network, database, files, history) through the
real app (create_app, the real auth service, NATS, Redis, chDB): who may open them, and every save going
through ``apply_document`` like ``PUT /api/v1/site/config`` (field messages, conflicts, "Saved: version N")."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from html import unescape

import pytest
import yaml
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_gateway_api.domain.configuration import config_document
from ews_gateway_api.i18n import Formats
from ews_gateway_api.pages.administration import (
    default_new_date,
    first_of_next_month,
    lan_addresses,
    tariff_field,
    unit_price,
    without_password,
)
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for

pytestmark = pytest.mark.integration

PAGES = [
    "/configuration/tariffs",
    "/configuration/tariffs?edit=new",
    "/configuration/site",
    "/configuration/network",
    "/configuration/database",
    "/configuration/files",
    "/configuration/history",
    "/configuration/history/1",
]


async def as_role(client: AsyncClient, app: Litestar, role: str = "installer") -> AsyncClient:
    client.cookies.clear()
    client.cookies.update(await session_for(app, role))
    return client


def today(app: Litestar) -> date:
    return datetime.now(app.state.site.tz).date()


def field_html(html: str, element_id: str) -> str:
    """The opening tag of the element with ``id``."""
    found = re.search(rf'<(?:input|select|textarea)\b[^>]*\bid="{re.escape(element_id)}"[^>]*>', html)
    assert found, f"no control #{element_id}"
    return found.group(0)


def message(html: str, key: str) -> str:
    found = re.search(rf'id="err-{re.escape(key)}"[^>]*>(.*?)</', html, re.S)
    assert found, f"no message for {key}"
    return unescape(found.group(1)).strip()


def tariff_form(effective_from: str, version: int, windows: list[dict] | None = None, **prices: str) -> dict:
    data = {
        "version": str(version),
        "original": "",
        "effective_from": effective_from,
        "electricity_per_kwh": "0.30",
        "water_per_m3": "4.5",
        "gas_per_m3": "1.3",
        "electricity_standing_per_day": "0.5",
        "action": "save",
        **prices,
    }
    windows = windows or []
    data["rows"] = str(len(windows))
    form: list[tuple[str, str]] = list(data.items())
    for n, window in enumerate(windows):
        for key, value in window.items():
            if key == "days":
                form += [(f"tou-{n}-days", d) for d in value]
            else:
                form.append((f"tou-{n}-{key}", value))
    return form  # type: ignore[return-value]


async def post_form(client: AsyncClient, path: str, form) -> object:
    from urllib.parse import urlencode

    return await client.post(
        path, content=urlencode(form), headers={"content-type": "application/x-www-form-urlencoded"}
    )


# --- access --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["administrator", "installer"])
async def test_every_page_renders_for_the_roles_that_configure(client: AsyncClient, app: Litestar, role: str):
    c = await as_role(client, app, role)
    for path in PAGES:
        resp = await c.get(path)
        assert resp.status_code == 200, (path, resp.text[:300])
        assert resp.headers["content-type"].startswith("text/html")
        assert 'aria-label="Configuration sections"' in resp.text
        assert "<h1>" in resp.text
    files = await c.get("/configuration/files")
    assert 'href="/api/v1/backup"' in files.text and 'name="archive"' in files.text
    assert 'action="/api/v1/readings.csv"' in files.text and 'href="/api/v1/site/config.yaml"' in files.text


@pytest.mark.parametrize("role", ["user", "greenUp"])
async def test_other_roles_get_403_pages(client: AsyncClient, app: Litestar, role: str):
    c = await as_role(client, app, role)
    for path in PAGES:
        resp = await c.get(path)
        assert resp.status_code == 403, path
        assert "Not for your role" in resp.text
    refused = await post_form(c, "/configuration/tariffs", tariff_form("2999-01-01", 1))
    assert refused.status_code == 403
    assert len(config_document(app.state)["tariffs"]) == 1


async def test_anonymous_gets_the_sign_in_page(client: AsyncClient):
    client.cookies.clear()
    resp = await client.get("/configuration/tariffs")
    assert resp.status_code == 401 and 'name="pin"' in resp.text


# --- tariffs -------------------------------------------------------------------------------------------


async def test_add_a_tariff_from_next_month(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    page = await c.get("/configuration/tariffs")
    assert "Read-only" in page.text and "?edit=2020-01-01" not in page.text  # the demo's tariff is in force
    assert "€0.2516" in page.text  # a price per kWh keeps its 4 decimals

    new = await c.get("/configuration/tariffs?edit=new")
    start = first_of_next_month(today(app)).isoformat()
    assert f'value="{start}"' in field_html(new.text, "f-effective_from")
    assert 'value="0.2516"' in field_html(new.text, "f-electricity_per_kwh")  # prefilled from the last tariff

    resp = await post_form(c, "/configuration/tariffs", tariff_form(start, 1))
    assert resp.status_code == 303, resp.text[:500]
    assert resp.headers["location"] == "/configuration/tariffs?saved=2"
    tariffs = config_document(app.state)["tariffs"]
    assert [t["effective_from"] for t in tariffs] == ["2020-01-01", start]
    assert tariffs[1]["electricity_per_kwh"] == 0.30 and tariffs[1]["electricity_standing_per_day"] == 0.5
    assert app.state.live.event.changed_by == "installer"

    done = await c.get(resp.headers["location"])
    assert "Saved: version 2" in done.text and f"tariffs.{start}: added" in done.text
    assert f"?edit={start}" in done.text  # a future tariff can be edited and removed
    assert 'action="/configuration/tariffs/remove"' in done.text

    # edit it: the base price changes, the date stays
    edit = await c.get(f"/configuration/tariffs?edit={start}")
    assert 'value="0.3"' in field_html(edit.text, "f-electricity_per_kwh")
    form = dict(tariff_form(start, 2, electricity_per_kwh="0,31"))
    form["original"] = start
    resp = await post_form(c, "/configuration/tariffs", list(form.items()))
    assert resp.status_code == 303, resp.text[:500]
    assert config_document(app.state)["tariffs"][1]["electricity_per_kwh"] == 0.31
    assert len(config_document(app.state)["tariffs"]) == 2

    # remove it
    resp = await post_form(c, "/configuration/tariffs/remove", [("version", "3"), ("effective_from", start)])
    assert resp.status_code == 303
    assert [t["effective_from"] for t in config_document(app.state)["tariffs"]] == ["2020-01-01"]
    assert f"tariffs.{start}: removed" in (await c.get(resp.headers["location"])).text


async def test_a_tariff_from_yesterday_is_refused_next_to_its_date_with_the_input_kept(
    client: AsyncClient, app: Litestar
):
    c = await as_role(client, app)
    yesterday = (today(app) - timedelta(days=1)).isoformat()
    resp = await post_form(
        c, "/configuration/tariffs", tariff_form(yesterday, 1, electricity_per_kwh="0.4321")
    )
    assert resp.status_code == 400
    control = field_html(resp.text, "f-effective_from")
    assert f'value="{yesterday}"' in control and 'aria-invalid="true"' in control
    assert "err-effective_from" in control  # aria-describedby
    text = message(resp.text, "effective_from")
    assert "tariffs[1].effective_from" in text and "would rewrite costs already counted" in text
    assert 'value="0.4321"' in field_html(resp.text, "f-electricity_per_kwh")
    assert config_document(app.state)["version"] == 1


async def test_a_past_tariff_is_read_only(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    page = await c.get("/configuration/tariffs?edit=2020-01-01")
    assert page.status_code == 200 and "it is read-only" in page.text
    assert 'id="tariff-form"' not in page.text
    # posted anyway: the domain refuses to rewrite it
    form = dict(tariff_form("2020-01-01", 1, electricity_per_kwh="0.1"))
    form["original"] = "2020-01-01"
    resp = await post_form(c, "/configuration/tariffs", list(form.items()))
    assert resp.status_code == 400 and "would rewrite costs already counted" in unescape(resp.text)
    resp = await post_form(
        c, "/configuration/tariffs/remove", [("version", "1"), ("effective_from", "2020-01-01")]
    )
    assert resp.status_code == 400 and "configuration not applied: tariffs" in message(resp.text, "form")
    assert config_document(app.state)["version"] == 1


async def test_overlapping_windows_get_the_message_next_to_the_window(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    start = default_new_date(app.state.site, today(app)).isoformat()
    windows = [
        {"name": "Off-peak", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "06:00",
         "electricity_per_kwh": "0.18"},
        {"name": "Night", "days": ["fri", "sat"], "start": "04:00", "end": "07:00", "electricity_per_kwh": "0.15"},
    ]  # fmt: skip
    resp = await post_form(c, "/configuration/tariffs", tariff_form(start, 1, windows))
    assert resp.status_code == 400
    text = message(resp.text, "tou-1")
    assert "overlaps window 'Off-peak'" in text and "tariffs[1].time_of_use[1]" in text
    assert 'aria-describedby="err-tou-1"' in resp.text
    assert 'value="Night"' in field_html(resp.text, "f-tou-1-name")  # the rows are kept
    assert "<legend>Window 2</legend>" in resp.text

    # a gas window in the same hours does not overlap an electricity window: saved
    windows[1] = {
        "name": "Night gas",
        "days": ["fri", "sat"],
        "start": "04:00",
        "end": "07:00",
        "gas_per_m3": "0.9",
    }
    resp = await post_form(c, "/configuration/tariffs", tariff_form(start, 1, windows))
    assert resp.status_code == 303, resp.text[:400]
    saved = config_document(app.state)["tariffs"][1]["time_of_use"]
    assert (
        saved[0]["start"] == "22:00"
        and saved[1]["gas_per_m3"] == 0.9
        and "electricity_per_kwh" not in saved[1]
    )
    page = await c.get("/configuration/tariffs")
    assert "22:00 → 06:00" in page.text and "Off-peak" in page.text


async def test_window_rows_are_added_and_removed_without_saving(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    start = default_new_date(app.state.site, today(app)).isoformat()
    form = tariff_form(start, 1, [{"name": "A", "days": ["mon"], "start": "08:00", "end": "10:00"}])
    added = await post_form(
        c, "/configuration/tariffs", [*[(k, v) for k, v in form if k != "action"], ("action", "add-window")]
    )
    assert added.status_code == 200
    assert "<legend>Window 2</legend>" in added.text and 'value="A"' in added.text
    removed = await post_form(
        c,
        "/configuration/tariffs",
        [*[(k, v) for k, v in form if k != "action"], ("action", "remove-window-0")],
    )
    assert "<legend>Window 1</legend>" not in removed.text
    assert config_document(app.state)["version"] == 1  # nothing saved


async def test_unreadable_numbers_and_a_stale_version(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    start = default_new_date(app.state.site, today(app)).isoformat()
    bad = await post_form(c, "/configuration/tariffs", tariff_form(start, 1, gas_per_m3="lots"))
    assert bad.status_code == 400 and "Enter a number" in message(bad.text, "gas_per_m3")
    assert 'aria-invalid="true"' in field_html(bad.text, "f-gas_per_m3")
    # someone else changed the configuration since the form was rendered (version 1)
    other = await as_role(client, app, "administrator")
    assert (
        await post_form(other, "/configuration/site", site_form(app, 1, name="Changed elsewhere"))
    ).status_code == 303
    stale = await post_form(c, "/configuration/tariffs", tariff_form(start, 1))
    assert stale.status_code == 409
    assert "changed by someone else meanwhile" in unescape(stale.text) and ">Reload</a>" in stale.text
    assert f'value="{start}"' in field_html(stale.text, "f-effective_from")
    assert len(config_document(app.state)["tariffs"]) == 1


# --- site ----------------------------------------------------------------------------------------------


def site_form(app: Litestar, version: int, **changes: str) -> list[tuple[str, str]]:
    site = app.state.site
    data = {
        "version": str(version),
        "name": site.name,
        "currency": site.currency,
        "timezone": site.timezone,
        "language": "en",
        "gas_wh_per_dm3": str(site.gas_wh_per_dm3),
        **changes,
    }
    return list(data.items())


async def test_site_currency_time_zone_and_language_are_applied(client: AsyncClient, app: Litestar):
    c = await as_role(client, app, "administrator")
    page = await c.get("/configuration/site")
    assert '<option value="Europe/Paris" selected>' in page.text
    assert 'lang="fr-BE"' in page.text and "Français (Belgique)" in page.text
    resp = await post_form(
        c,
        "/configuration/site",
        site_form(app, 1, currency="chf", timezone="Europe/Zurich", gas_wh_per_dm3="10,5"),
    )
    assert resp.status_code == 303, resp.text[:400]
    site = app.state.site
    assert (site.currency, site.timezone, site.gas_wh_per_dm3) == ("CHF", "Europe/Zurich", 10.5)
    done = await c.get(resp.headers["location"])
    assert "Saved: version 2" in done.text
    # (the stored document leaves defaults out: EUR and Europe/Paris were "null" before)
    assert re.search(r"<code>currency: \S+ → CHF</code>", done.text)
    assert "CHF" in (await c.get("/configuration/tariffs")).text  # money in the new currency

    # the default language is the configuration's (PUT /api/v1/site/language changes it too)
    assert (await c.put("/api/v1/site/language", json={"language": "de"})).status_code == 200
    assert 'value="de" lang="de" selected' in (await c.get("/configuration/site")).text
    version = config_document(app.state)["version"]
    resp = await post_form(
        c,
        "/configuration/site",
        site_form(app, version, currency="CHF", timezone="Europe/Zurich", language="fr"),
    )
    assert resp.status_code == 303
    assert app.state.site.language == "fr"
    assert (await c.get("/api/v1/language")).json()["default"] == "fr"


async def test_site_fields_are_checked_with_the_input_kept(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    resp = await post_form(
        c, "/configuration/site", site_form(app, 1, currency="EURO", gas_wh_per_dm3="-1", name="Kept")
    )
    assert resp.status_code == 400
    assert "ISO 4217" in message(resp.text, "currency") and 'value="EURO"' in field_html(
        resp.text, "f-currency"
    )
    assert "above 0" in message(resp.text, "gas_wh_per_dm3")
    assert 'value="Kept"' in field_html(resp.text, "f-name")
    assert config_document(app.state)["version"] == 1


# --- history -------------------------------------------------------------------------------------------


async def test_history_lists_the_versions_newest_first(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    assert (
        await post_form(c, "/configuration/site", site_form(app, 1, name="First change"))
    ).status_code == 303
    c = await as_role(client, app, "administrator")
    assert (
        await post_form(c, "/configuration/site", site_form(app, 2, name="Second change"))
    ).status_code == 303
    page = await c.get("/configuration/history")
    rows = re.findall(r'<th scope="row" class="num"[^>]*>(\d+)</th>', page.text)
    assert rows == ["3", "2", "1"]
    assert "Administrator" in page.text and "Installer" in page.text and "site file" in page.text
    assert "name: First change → Second change" in unescape(page.text)
    assert 'href="/configuration/history/2"' in page.text
    one = await c.get("/configuration/history/2")
    assert one.status_code == 200 and "name: First change" in one.text
    assert 'href="/api/v1/site/config/history/2"' in one.text
    assert (await c.get("/configuration/history/99")).status_code == 404


# --- network and database ------------------------------------------------------------------------------


async def test_network_page_shows_where_the_server_listens(
    client: AsyncClient, app: Litestar, settings: Settings
):
    c = await as_role(client, app)
    page = await c.get("/configuration/network")
    assert f"<code>127.0.0.1:{settings.http_port}</code>" in page.text
    assert "Reachable only from this machine." in page.text and "EWS_HTTP_HOST=0.0.0.0" in page.text
    assert settings.nats_url in page.text
    app.state.settings = settings.model_copy(
        update={"http_host": "0.0.0.0", "redis_url": "redis://:secret@127.0.0.1:6379/0"}
    )
    page = await c.get("/configuration/network")
    assert "Reachable only from this machine." not in page.text
    assert "secret" not in page.text and "redis://127.0.0.1:6379/0" in page.text
    for address in lan_addresses():
        assert f"http://{address}:{settings.http_port}/" in page.text


async def test_database_page_with_and_without_data(client: AsyncClient, app: Litestar, settings: Settings):
    c = await as_role(client, app)
    empty = await c.get("/configuration/database")
    assert empty.status_code == 200 and "No readings stored yet." in empty.text
    assert str(settings.data_dir.resolve()) in empty.text

    t0 = datetime(2024, 3, 1, 9, tzinfo=UTC)
    rows = [
        ("demo", "m1", "energy_active_import", t0 + timedelta(hours=h), 1000.0 + h, "p", f"e{h}")
        for h in range(5)
    ]
    rows.append(("other-site", "m1", "energy_active_import", datetime(2001, 1, 1, tzinfo=UTC), 1.0, "p", "x"))
    await get_store(settings.clickhouse_dsn).insert(
        f"{settings.clickhouse_database}.readings",
        rows,
        ["site", "device", "quantity", "ts", "value", "profile", "event_id"],
    )
    full = await c.get("/configuration/database")
    assert full.status_code == 200
    assert "<dd>5</dd>" in full.text  # this site's readings only
    assert (
        'datetime="2024-03-01T09:00:00+00:00"' in full.text
        and 'datetime="2024-03-01T13:00:00+00:00"' in full.text
    )

    class Broken:
        async def query(self, *args, **kwargs):
            raise ConnectionError("refused")

    app.state.store = Broken()
    down = await c.get("/configuration/database")
    assert down.status_code == 200 and "Not available" in down.text


# --- files ---------------------------------------------------------------------------------------------


async def test_upload_a_yaml_configuration(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    exported = await c.get("/api/v1/site/config.yaml")
    document = yaml.safe_load(exported.text)
    document["name"] = "From an uploaded file"
    resp = await c.post(
        "/configuration/files/config",
        data={"version": "1"},
        files={"config": ("site.yaml", yaml.safe_dump(document), "application/yaml")},
    )
    assert resp.status_code == 303, resp.text[:400]
    assert app.state.site.name == "From an uploaded file"
    assert "Saved: version 2" in (await c.get(resp.headers["location"])).text

    document["devices"][3]["address"] = 300
    bad = await c.post(
        "/configuration/files/config",
        data={"version": "2"},
        files={"config": ("site.yaml", yaml.safe_dump(document), "application/yaml")},
    )
    assert bad.status_code == 400
    assert "devices[3].address" in message(bad.text, "config")
    assert 'aria-invalid="true"' in field_html(bad.text, "f-config")
    broken = await c.post(
        "/configuration/files/config",
        data={"version": "2"},
        files={"config": ("x.yaml", "a: [1", "application/yaml")},
    )
    assert broken.status_code == 400 and "not valid JSON or YAML" in message(broken.text, "config")
    assert config_document(app.state)["version"] == 2


CSV = """device,time,quantity,value,unit
m1,2024-03-01T01:00:00+01:00,energy_active_import,1234.5,kWh
m1,2024-03-01T02:00:00+01:00,energy_active_import,twelve,Wh
"""


async def test_import_readings_from_the_files_page(client: AsyncClient, app: Litestar):
    c = await as_role(client, app, "administrator")
    resp = await c.post(
        "/configuration/files/import",
        files={"file": ("old.csv", CSV.encode(), "text/csv")},
        headers={"HX-Request": "true"},
    )
    assert resp.status_code == 200
    assert "<html" not in resp.text  # the fragment htmx swaps in
    assert "Line-by-line report" in resp.text
    rows = re.findall(r'<tr class="line-(\w+)">\s*<td class="num">(\d+)</td>', resp.text)
    assert rows == [("accepted", "2"), ("refused", "3")]
    assert "twelve" in unescape(resp.text)  # the reason of the refusal
    # without htmx: the whole page with the report
    page = await c.post("/configuration/files/import", files={"file": ("old.csv", CSV.encode(), "text/csv")})
    assert page.status_code == 200 and "<html" in page.text and "Line-by-line report" in page.text
    empty = await c.post("/configuration/files/import", files={"file": ("none.csv", b"", "text/csv")})
    assert empty.status_code == 400 and "Nothing imported:" in empty.text  # the import's own reason
    none = await c.post(
        "/configuration/files/import", data={"x": "1"}, files={"other": ("a", b"", "text/plain")}
    )
    assert none.status_code == 400 and "Choose a CSV file to import." in none.text


# --- helpers -------------------------------------------------------------------------------------------


def test_helpers():
    assert without_password("redis://:pw@10.0.0.2:6379/0") == "redis://10.0.0.2:6379/0"
    assert without_password("nats://user:pw@host:4222") == "nats://user@host:4222"
    assert without_password("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    fr = Formats("fr", "EUR", UTC)
    assert unit_price(fr, 0.2516) == "0,2516\u00a0€"
    assert unit_price(Formats("en", "CHF", UTC), 1.5) == Formats("en", "CHF", UTC).money(1.5)
    assert unit_price(Formats("en", "EUR", UTC), 0.1234567) == "€0.123457"
    assert first_of_next_month(date(2025, 1, 31)) == date(2025, 2, 1)
    assert first_of_next_month(date(2025, 12, 5)) == date(2026, 1, 1)
    known = {"form", "effective_from", "windows", "tou-0", "tou-2", "tou-2-start"}
    assert tariff_field("tariffs[1].effective_from", 1, [0, 2], known) == "effective_from"
    assert tariff_field("tariffs[1].time_of_use[1]", 1, [0, 2], known) == "tou-2"
    assert tariff_field("tariffs[1].time_of_use[1].start", 1, [0, 2], known) == "tou-2-start"
    assert tariff_field("tariffs[0].effective_from", 1, [0, 2], known) == "form"
    assert tariff_field("tariffs", 1, [], known) == "form"
    for address in lan_addresses():
        assert not address.startswith("127.")


async def test_restore_from_the_files_page(client: AsyncClient, app: Litestar):
    c = await as_role(client, app, "installer")
    backup = await c.get("/api/v1/backup")
    assert backup.status_code == 200, backup.text[:300]
    archive = backup.content
    # not confirmed, no file, not an archive: refused with the reason, nothing restored
    unconfirmed = await c.post(
        "/configuration/files/restore", files={"archive": ("b.tar.gz", archive, "application/gzip")}
    )
    assert unconfirmed.status_code == 400 and "Tick the box to confirm" in unescape(unconfirmed.text)
    nofile = await c.post(
        "/configuration/files/restore", data={"confirm": "1"}, files={"x": ("", b"", "text/plain")}
    )
    assert nofile.status_code == 400 and "Choose a backup archive" in nofile.text
    garbage = await c.post(
        "/configuration/files/restore",
        data={"confirm": "1"},
        files={"archive": ("b.tar.gz", b"not an archive", "application/gzip")},
        headers={"HX-Request": "true"},
    )
    assert garbage.status_code == 200 and "<html" not in garbage.text
    assert "Not restored:" in garbage.text and "damaged archive" in garbage.text
    # the real archive: restored, what it held is said
    done = await c.post(
        "/configuration/files/restore",
        data={"confirm": "1"},
        files={"archive": ("b.tar.gz", archive, "application/gzip")},
        headers={"HX-Request": "true"},
    )
    assert done.status_code == 200, done.text[:500]
    assert "Restored." in done.text and "The configuration is at version" in done.text
    assert "<code>config_versions</code>" in done.text


@pytest.mark.parametrize("language", ["fr", "zh", "el"])
async def test_pages_render_in_other_languages(client: AsyncClient, app: Litestar, language: str):
    c = await as_role(client, app, "administrator")
    c.cookies.set("ews_lang", language)
    for path in PAGES:
        resp = await c.get(path)
        assert resp.status_code == 200, (language, path)
        assert f'<html lang="{language}">' in resp.text
