"""plan_command: the rules both the gateway-api and the commands service apply to a command."""

from __future__ import annotations

import pytest
from ews_contracts.commandcheck import CommandRejected, plan_command
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import load_site

SITE = load_site(BUNDLED_DEMO_SITE)
PROFILES = load_profiles(None)


def test_plan_resolves_the_register_and_raw_value() -> None:
    plan = plan_command(SITE, PROFILES, "ev1", "charge", "start")
    assert (plan.device.address, plan.device.gateway, plan.command.address, plan.raw) == (8, "gw1", 11, 1)
    assert plan.value_name(0) == "wait" and plan.value_name(7) is None


@pytest.mark.parametrize(
    ("device", "action", "value", "message", "not_found"),
    [
        ("zz", "charge", "start", "unknown device 'zz' on site 'demo'", True),
        ("m1", "charge", "start", "device 'm1' (multifunction-meter-412045) accepts no commands", False),
        (
            "ev1",
            "boost",
            None,
            "has no command 'boost'; declared: charge, priority, ev-socket, domestic-socket",
            False,
        ),
        ("ev1", "charge", "go", "command 'charge' does not accept 'go'; allowed: start, wait", False),
        ("ev1", "charge", None, "command 'charge' needs a value: one of start, wait", False),
    ],
)
def test_rejections_name_the_problem(device, action, value, message, not_found) -> None:
    with pytest.raises(CommandRejected) as err:
        plan_command(SITE, PROFILES, device, action, value)
    assert message in str(err.value)
    assert err.value.not_found is not_found


def test_disabled_device_and_single_value_action() -> None:
    disabled = SITE.model_copy(
        update={
            "devices": [d.model_copy(update={"enabled": False}) if d.id == "ev1" else d for d in SITE.devices]
        }
    )
    with pytest.raises(CommandRejected, match="device 'ev1' is disabled in the site file"):
        plan_command(disabled, PROFILES, "ev1", "charge", "start")
    ev = PROFILES["ev-station-greenup"]
    single = ev.model_copy(
        update={"commands": [ev.commands[0].model_copy(update={"values": {"start": 1}}), *ev.commands[1:]]}
    )
    plan = plan_command(SITE, {**PROFILES, ev.id: single}, "ev1", "charge", None)
    assert (plan.value, plan.raw) == ("start", 1)
