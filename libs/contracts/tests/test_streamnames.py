"""Stream names of a box, an edge and the hub (ews_contracts.streamnames, ews_contracts.hub)."""

from __future__ import annotations

import pytest
from ews_contracts.hub import hub_database, hub_sites
from ews_contracts.streamnames import BOX, streams_for


def test_a_box_or_an_edge_reads_its_own_streams_by_their_plain_names() -> None:
    for names in (BOX, streams_for("north")):
        assert (names.readings, names.config, names.dead_letter) == (
            "EWS_READINGS",
            "EWS_CONFIG",
            "EWS_DEAD_LETTER",
        )
        assert names.owns_streams
        assert names.aggregator_durable == "aggregator"


def test_the_hub_reads_a_sites_sourced_copies_and_owns_none_of_them() -> None:
    names = streams_for("north", hub=True)
    assert (names.readings, names.config) == ("EWS_READINGS_north", "EWS_CONFIG_north")
    assert not names.owns_streams
    assert names.aggregator_durable == "hub-aggregator-north"


@pytest.mark.parametrize("site", [None, "", "North", "a.b", "x" * 40])
def test_the_hub_needs_a_site_id(site: str | None) -> None:
    with pytest.raises(ValueError, match="not a site id"):
        streams_for(site, hub=True)


def test_a_sites_database_at_the_hub() -> None:
    assert hub_database("north") == "ews_north"
    assert hub_database("east-2") == "ews_east_2"


def test_the_sites_at_the_hub_are_those_with_readings_and_configuration() -> None:
    names = [
        "EWS_READINGS",
        "EWS_READINGS_north",
        "EWS_CONFIG_north",
        "EWS_READINGS_south",  # its configuration not sourced yet
        "EWS_CONFIG_east-2",
        "EWS_READINGS_east-2",
        "EWS_READINGS_Bad.Name",
        "KV_ews-hub-aggregators",
    ]
    assert hub_sites(names) == ["east-2", "north"]
