"""The stored configuration: seeding, versions, conflicts, history, following, validation messages."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import nats
import pytest
import yaml
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.siteconfig import (
    ConfigInvalid,
    ConfigStore,
    LiveSite,
    VersionConflict,
    changes_between,
    document_of,
    validate_document,
)

DEMO = yaml.safe_load(BUNDLED_DEMO_SITE.read_text())


def demo() -> dict:
    """The demo site's document (every device with its address)."""
    return copy.deepcopy(document_of(validate_document(DEMO)))


def invalid(document: dict, **kw) -> str:
    with pytest.raises(ConfigInvalid) as info:
        validate_document(document, **kw)
    return str(info.value)


def test_messages_name_the_field_path():
    doc = demo()
    doc["devices"][3]["address"] = 300
    assert invalid(doc).startswith("devices[3].address: ")
    doc = demo()
    doc["devices"][0]["profile"] = "no-such-profile"
    assert invalid(doc, profiles=load_profiles()).startswith("devices[0].profile: ")
    doc = demo()
    doc["gateways"][0]["serial"] = {"port": "/dev/ttyUSB0", "parity": "X"}
    assert invalid(doc).startswith("gateways[0].")
    doc = demo()
    doc["site"] = "other"
    assert invalid(doc, site_id="demo").startswith("site: ")
    doc = demo()
    doc["colour"] = "red"
    assert invalid(doc) == "colour: unknown setting"
    doc = demo()
    del doc["tariffs"]
    assert invalid(doc) == "tariffs: missing (required)"
    assert invalid(["not", "a", "mapping"]).startswith("the configuration is a mapping")


def test_33rd_address_and_256th_device_are_refused():
    doc = demo()
    gw = doc["gateways"][0]["id"]
    used = {d["address"] for d in doc["devices"] if d["gateway"] == gw}
    free = [a for a in range(1, 248) if a not in used]
    extra = [
        {"id": f"x{n}", "name": f"x{n}", "profile": "power-meter-access", "gateway": gw, "address": free[n]}
        for n in range(33 - len(used))
    ]
    doc["devices"] += extra
    message = invalid(doc)
    assert message.startswith(f"devices[{len(doc['devices']) - 1}].address: ")
    assert "32 addresses" in message
    doc = demo()
    doc["gateways"] += [{"id": f"g{n}", "host": "127.0.0.1", "port": 2000 + n} for n in range(9)]
    doc["devices"] += [
        {"id": f"d{n}", "name": f"d{n}", "profile": "power-meter-access", "gateway": f"g{n // 30}", "address": 1 + n % 30}
        for n in range(256 - len(doc["devices"]))
    ]
    assert len(doc["devices"]) == 256
    assert invalid(doc).startswith("devices[255]: ")


def test_overlapping_time_of_use_windows_are_refused():
    doc = demo()
    doc["tariffs"][0]["time_of_use"] = [
        {"name": "night", "start": "22:00", "end": "06:00", "electricity_per_kwh": 0.1},
        {"name": "early", "start": "05:00", "end": "08:00", "electricity_per_kwh": 0.2},
    ]
    message = invalid(doc)
    assert message.startswith("tariffs[0].time_of_use[1]: ")
    assert "night" in message and "05:00" in message
    # different media in the same hours do not overlap
    doc["tariffs"][0]["time_of_use"][1] = {"start": "05:00", "end": "08:00", "gas_per_m3": 0.2}
    validate_document(doc)


def test_changes_name_what_changed():
    old = demo()
    new = demo()
    new["devices"][0]["enabled"] = False
    new["devices"].append({"id": "new1", "name": "New", "profile": "power-meter-access", "gateway": "gw1", "address": 200})
    new["name"] = "Renamed"
    lines = changes_between(
        validate_document(old).model_dump(mode="json"), validate_document(new).model_dump(mode="json")
    )
    assert f"devices.{old['devices'][0]['id']}.enabled: true → false" in lines
    assert "devices.new1: added" in lines
    assert f"name: {old['name']} → Renamed" in lines
    assert changes_between(None, new) == ["created"]


async def test_seed_versions_conflicts_history_and_follow(nats_url: str, tmp_path: Path):
    site_file = tmp_path / "site.yaml"
    site_file.write_text(BUNDLED_DEMO_SITE.read_text())
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        live = await LiveSite.open(js, site_file)
        assert live.version == 1 and live.event.how == "site-file"
        again = await LiveSite.open(js, site_file)  # a second service: same version, nothing new
        assert again.version == 1

        seen: list[int] = []
        live.on_change(lambda site, event: seen.append(event.version))
        await live.follow()

        store = ConfigStore(js, "demo")
        doc = document_of(live.site)
        doc["name"] = "Changed by the API"
        v2 = await store.put(validate_document(doc), expected=1, changed_by="installer", how="api")
        assert v2.version == 2 and v2.changes == [f"name: {DEMO['name']} → Changed by the API"]
        with pytest.raises(VersionConflict) as stale:
            await store.put(validate_document(doc), expected=1, changed_by="installer", how="api")
        assert stale.value.current == 2

        # two writers of the same version: exactly one lands
        def named(name: str) -> dict:
            return {**doc, "name": name}

        results = await asyncio.gather(
            *(store.put(validate_document(named(r)), expected=2, changed_by=r, how="api") for r in ("a", "b")),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["SiteConfigured", "VersionConflict"]

        for _ in range(50):
            if seen == [2, 3]:
                break
            await asyncio.sleep(0.05)
        assert seen == [2, 3] and live.site.name in ("a", "b")

        history = await store.history()
        assert [e.version for e in history] == [1, 2, 3]
        assert history[1].changed_by == "installer"

        # the file changes after an API change: the stored configuration stays the truth
        site_file.write_text(BUNDLED_DEMO_SITE.read_text().replace(DEMO["name"], "From the file"))
        kept = await LiveSite.open(js, site_file)
        assert kept.version == 3 and kept.site.name in ("a", "b")
        await live.close()
    finally:
        await nc.close()


async def test_a_changed_site_file_is_imported_while_nobody_changed_the_configuration(nats_url, tmp_path):
    site_file = tmp_path / "site.yaml"
    site_file.write_text(BUNDLED_DEMO_SITE.read_text())
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        assert (await LiveSite.open(js, site_file)).version == 1
        site_file.write_text(BUNDLED_DEMO_SITE.read_text().replace(DEMO["name"], "Edited file"))
        live = await LiveSite.open(js, site_file)
        assert live.version == 2 and live.site.name == "Edited file" and live.event.how == "site-file"
    finally:
        await nc.close()


def test_tariffs_in_force_are_never_rewritten():
    from datetime import date

    from ews_contracts.siteconfig import check_tariff_changes

    old = validate_document(demo())
    today = date(2026, 11, 30)
    doc = demo()
    doc["tariffs"].append({"effective_from": "2026-12-01", "electricity_per_kwh": 0.5})
    check_tariff_changes(old, validate_document(doc), today)  # from tomorrow: fine
    doc["tariffs"][-1]["effective_from"] = "2026-11-30"
    with pytest.raises(ConfigInvalid) as info:
        check_tariff_changes(old, validate_document(doc), today)
    assert info.value.path == f"tariffs[{len(doc['tariffs']) - 1}].effective_from"
    doc = demo()
    doc["tariffs"][0]["electricity_per_kwh"] = 9.99
    with pytest.raises(ConfigInvalid, match="rewrite costs"):
        check_tariff_changes(old, validate_document(doc), today)
    doc = demo()
    del doc["tariffs"][0]
    if doc["tariffs"]:
        with pytest.raises(ConfigInvalid, match="cannot be removed"):
            check_tariff_changes(old, validate_document(doc), today)
