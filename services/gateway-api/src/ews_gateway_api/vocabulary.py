"""The device vocabulary a person reads: quantity, group, state and command names, marked for the
catalogues (``N_``) and translated when a page is rendered. Profiles carry identifiers (``charger``,
``charging``, ``ev-socket``); these tables give them words. An identifier missing here is shown as
itself, tidied (``charge_process`` → "Charge process"), so a new profile still reads sensibly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ews_contracts.quantities import unit_of

from .i18n import N_

Translate = Callable[[str], str]

QUANTITIES: dict[str, str] = {
    "energy_active_import": N_("Active energy imported (Ea+)"),
    "energy_active_export": N_("Active energy exported (Ea−)"),
    "energy_reactive_import": N_("Reactive energy imported (Er+)"),
    "energy_reactive_export": N_("Reactive energy exported (Er−)"),
    "energy_apparent": N_("Apparent energy"),
    "energy_apparent_export": N_("Apparent energy exported"),
    "power_active": N_("Active power"),
    "power_reactive": N_("Reactive power"),
    "power_apparent": N_("Apparent power"),
    "power_factor": N_("Power factor"),
    "voltage": N_("Voltage"),
    "current": N_("Current"),
    "current_n": N_("Neutral current"),
    "residual_current": N_("Residual current"),
    "frequency": N_("Frequency"),
    "thd_voltage": N_("Voltage THD"),
    "thd_current": N_("Current THD"),
    "harmonic_voltage": N_("Voltage harmonic"),
    "harmonic_current": N_("Current harmonic"),
    "water_volume": N_("Water consumption"),
    "gas_volume": N_("Gas consumption"),
    "pulse_count": N_("Pulses"),
    "current_rated": N_("Rated current"),
    "analog_input": N_("Analogue input"),
}


# Measure tab (M3): groups in display order, with the DESIGN.md accessible names, and their tables.
@dataclass(frozen=True)
class Table:
    key: str
    title: str
    prefixes: tuple[str, ...]
    exact: tuple[str, ...] = ()

    def holds(self, quantity: str) -> bool:
        return quantity in self.exact or any(quantity.startswith(p) for p in self.prefixes)


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    tables: tuple[Table, ...]
    chart: bool = False  # harmonics: also a bar chart


_PHASES = ("l1", "l2", "l3")
GROUPS: tuple[Group, ...] = (
    Group("energy", N_("Energy"), (Table("energy", N_("Energy"), ("energy_",)),)),
    Group(
        "power",
        N_("Power"),
        (
            Table(
                "power-total",
                N_("Total"),
                (),
                ("power_active", "power_reactive", "power_apparent", "power_factor"),
            ),
            Table(
                "power-phases",
                N_("Per phase"),
                tuple(
                    f"power_{k}_{p}" for k in ("active", "reactive", "apparent", "factor") for p in _PHASES
                ),
            ),
        ),
    ),
    Group(
        "voltage",
        N_("Voltage/Current/Frequency"),
        (
            Table("voltage", N_("Voltage"), ("voltage_",)),
            Table("current", N_("Current"), ("current_l", "current_n", "residual_current", "current_rated")),
            Table("frequency", N_("Frequency"), ("frequency",)),
        ),
    ),
    Group(
        "thd",
        N_("THD"),
        (
            Table("thd-voltage", N_("Voltage THD"), ("thd_voltage_",)),
            Table("thd-current", N_("Current THD"), ("thd_current_",)),
        ),
    ),
    Group(
        "harmonics",
        N_("Harmonics"),
        tuple(
            Table(f"harmonic-{kind}-{p}", title, (f"harmonic_{kind}_{p}_",))
            for kind, p, title in (
                ("voltage", "l1", N_("Voltage harmonics, L1")),
                ("voltage", "l2", N_("Voltage harmonics, L2")),
                ("voltage", "l3", N_("Voltage harmonics, L3")),
                ("current", "l1", N_("Current harmonics, L1")),
                ("current", "l2", N_("Current harmonics, L2")),
                ("current", "l3", N_("Current harmonics, L3")),
            )
        ),
        chart=True,
    ),
    Group("water", N_("Water"), (Table("water", N_("Water consumption"), ("water_",)),)),
    Group("gas", N_("Gas"), (Table("gas", N_("Gas consumption"), ("gas_",)),)),
    Group("pulses", N_("Pulses"), (Table("pulses", N_("Pulses"), ("pulse_",)),)),
    Group("inputs", N_("Analogue inputs"), (Table("analog", N_("Analogue inputs"), ("analog_input_",)),)),
)

STATES: dict[str, str] = {
    "breaker": N_("Breaker"),
    "charger": N_("Charger"),
    "charge_process": N_("Current charge"),
    "priority": N_("Priority"),
    "ev_socket": N_("EV plug socket"),
    "domestic_socket": N_("Domestic socket"),
    "charger_error": N_("Charger error"),
    "charge_error": N_("Charge error"),
    "mode": N_("Charging mode"),
    "relay": N_("Relay / contactor"),
    "trip": N_("Trip"),
    "contact": N_("Auxiliary contact"),
}

VALUES: dict[str, str] = {
    "on": N_("On"),
    "off": N_("Off"),
    "open": N_("Open"),
    "closed": N_("Closed"),
    "tripped": N_("Tripped"),
    "available": N_("Available"),
    "charging": N_("Charging"),
    "waiting": N_("Waiting"),
    "fault": N_("Charger fault"),
    "wait": N_("Wait"),
    "start": N_("Start"),
    "normal": N_("Normal"),
    "priority": N_("Priority"),
    "enabled": N_("Enabled"),
    "disabled": N_("Disabled"),
    "enable": N_("Enable"),
    "disable": N_("Disable"),
    "close": N_("Close"),
    "none": N_("None"),
    "rcd-tripped": N_("RCD tripped"),
    "overcurrent": N_("Overcurrent"),
    "overheating": N_("Overheating"),
    "internal": N_("Internal error"),
    "vehicle-not-responding": N_("Vehicle not responding"),
    "plug-lock-failure": N_("Plug lock failure"),
    "ventilation-required": N_("Ventilation required"),
    "mode-3": N_("Mode 3"),
    "modes-2-and-3": N_("Modes 2 and 3"),
    "alarm": N_("Alarm"),
    "ok": N_("OK"),
}


def NP_(context: str, message: str) -> str:  # noqa: N802 — "mark with a context, translate later"
    return message


# A command's values on its buttons are verbs ("Open" the relay), its states adjectives ("Open"
# breaker): one English word, two meanings, so the buttons use the "command" context (pgettext).
COMMAND_VALUES: dict[str, str] = {
    "open": NP_("command", "Open"),
    "close": NP_("command", "Close"),
    "on": NP_("command", "On"),
    "off": NP_("command", "Off"),
    "start": NP_("command", "Start"),
    "wait": NP_("command", "Wait"),
    "normal": NP_("command", "Normal"),
    "priority": NP_("command", "Priority"),
    "enable": NP_("command", "Enable"),
    "disable": NP_("command", "Disable"),
}

DEVICE_STATES: dict[str, str] = {
    "on": N_("On"),
    "off": N_("Off"),
    "comm-error": N_("Communication error"),
    "fault": N_("Charger fault"),
    "unknown": N_("No reading yet"),
}

FUNCTIONS: dict[str, tuple[str, str]] = {  # symbol letter, name
    "measure": ("M", N_("Measure")),
    "status": ("S", N_("Status")),
    "command": ("C", N_("Command")),
    "function": ("F", N_("Function")),
    "link": ("L", N_("Link")),
}

COMMANDS: dict[str, str] = {
    "charge": N_("Current charge"),
    "priority": N_("Priority"),
    "ev-socket": N_("EV plug socket"),
    "domestic-socket": N_("Domestic socket"),
    "relay": N_("Relay / contactor"),
}


def unit(quantity: str) -> str:
    try:
        return unit_of(quantity)
    except KeyError:
        return ""


def tidy(identifier: str) -> str:
    text = re.sub(r"[_-]+", " ", identifier).strip()
    return text[:1].upper() + text[1:]


def _numbered(name: str, table: dict[str, str], translate: Translate) -> str | None:
    """``output_3`` → "Output 3" (a numbered identifier: input_1, output-2, analog_input_4 …)."""
    match = re.fullmatch(r"([a-z_-]+?)[_-](\d+)", name)
    if not match:
        return None
    base, number = match.groups()
    words = {
        "input": N_("Input %(n)s"),
        "output": N_("Relay output %(n)s"),
        "analog_input": N_("Analogue input %(n)s"),
    }
    key = base.replace("-", "_")
    if key in words:
        return translate(words[key]) % {"n": number}
    if key in table:
        return f"{translate(table[key])} {number}"
    return None


def quantity_label(quantity: str, translate: Translate) -> str:
    if quantity in QUANTITIES:
        return translate(QUANTITIES[quantity])
    match = re.fullmatch(r"harmonic_(voltage|current)_(l[123])_h(\d+)", quantity)
    if match:
        return translate(N_("H%(rank)s")) % {"rank": match.group(3)}
    if (numbered := _numbered(quantity, QUANTITIES, translate)) is not None:
        return numbered
    for suffix in ("_l12", "_l23", "_l31", "_l1", "_l2", "_l3", "_n"):
        if quantity.endswith(suffix):
            base = quantity[: -len(suffix)]
            if base in QUANTITIES:
                return f"{translate(QUANTITIES[base])} {suffix[1:].upper()}"
    return tidy(quantity)


def state_label(name: str, translate: Translate) -> str:
    if name in STATES:
        return translate(STATES[name])
    return _numbered(name, STATES, translate) or tidy(name)


def value_label(value: str, translate: Translate) -> str:
    return translate(VALUES[value]) if value in VALUES else tidy(value)


def command_value_label(value: str, pgettext: Callable[[str, str], str]) -> str:
    """A command button's word (a verb), in the "command" context of the catalogues."""
    return pgettext("command", COMMAND_VALUES[value]) if value in COMMAND_VALUES else tidy(value)


def command_label(action: str, translate: Translate) -> str:
    if action in COMMANDS:
        return translate(COMMANDS[action])
    return _numbered(action, COMMANDS, translate) or tidy(action)


def device_state_label(state: str, translate: Translate) -> str:
    return translate(DEVICE_STATES.get(state, state))


def group_tables(values: dict[str, float]) -> list[tuple[Group, list[tuple[Table, list[str]]]]]:
    """The Measure tab: the groups that have values, each with its non-empty tables (quantities in
    table order: as the profile's quantity names sort, harmonics by rank)."""
    out = []
    placed: set[str] = set()
    for group in GROUPS:
        tables = []
        for table in group.tables:
            names = [q for q in values if table.holds(q) and q not in placed]
            if names:
                names.sort(key=_order)
                placed.update(names)
                tables.append((table, names))
        if tables:
            out.append((group, tables))
    rest = sorted(q for q in values if q not in placed)
    if rest:
        other = Table("other", N_("Other values"), ())
        out.append((Group("other", N_("Other values"), (other,)), [(other, rest)]))
    return out


def _order(quantity: str) -> tuple:
    match = re.search(r"_h(\d+)$", quantity)
    if match:
        return (quantity[: match.start()], int(match.group(1)))
    return (quantity, 0)
