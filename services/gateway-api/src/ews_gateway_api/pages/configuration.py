"""Configuration of the site's structure, as pages (S4): gateways, devices, virtual devices, panels, zones
and circuits.

- ``/configuration`` — the sections (``configuration/_sections.html``) and a summary of the version in force.
- ``/configuration/gateways``, ``/configuration/devices``, ``/configuration/virtual-devices`` — a list each;
  ``…/new`` adds one, ``…/{id}/edit`` changes one, ``…/{id}/remove`` asks, then removes.
- ``/configuration/structure`` — panels, zones and circuits (``…/structure/{panels|zones|circuits}/…``
  as above; ids stay, names change).
- ``POST /configuration/devices/{id}/enabled`` — a device On/Off (``set_device_enabled``).
- ``POST /configuration/devices/test`` — reads the device of the form once, before it is saved
  (``test_device``, through the poller): a fragment for htmx, the whole form page without script.

Every save builds the whole new document — the one in force (``config_document``) with the one change —
and hands it to ``apply_document`` with the version the form was shown with: nothing is half-applied, a
400 names the field (shown next to its input, the input kept), a 409 says someone else changed it
meanwhile. Success goes back (303) to the list, which says "Saved: version N" and what changed.
Ids never change once created (the history of a device is keyed by its id): to replace, remove and add.
Guard: ``configure-site`` (administrator, installer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ews_contracts.profiles import DataType, Profile, ProfileError, check_device
from ews_contracts.roles import Permission
from ews_contracts.site import Device, Gateway
from ews_contracts.siteconfig import field_path
from litestar import Request, Router, get, post
from litestar.datastructures import State
from litestar.response import Redirect, Template
from pydantic import ValidationError

from .. import vocabulary as _labels
from ..domain.configuration import apply_document, config_document, set_device_enabled, test_device
from ..domain.devices import address_label
from ..domain.language import language_of
from ..errors import ApiError
from ..guards import current_role, requires
from ..i18n import N_, translations
from ..sites import site_state
from ._page import redirect, render
from .auth import ROLE_NAMES

CONFIGURE = [requires(Permission.CONFIGURE_SITE)]
PAGE = {"guards": CONFIGURE, "include_in_schema": False, "tags": ["pages"]}

# Device profile families (the requirement's D-codes) in words; an unknown family is shown tidied.
FAMILIES: dict[str, str] = {
    "power-meter": N_("Power meters"),
    "energy-meter": N_("Energy meters"),
    "pulse-meter": N_("Pulse meters"),
    "measuring-module": N_("Measuring modules"),
    "command-module": N_("Command modules"),
    "status-module": N_("Status modules"),
    "rcd-module": N_("RCD modules"),
    "moulded-case-breaker": N_("Moulded-case breakers"),
    "air-circuit-breaker": N_("Air circuit breakers"),
    "generic-meter": N_("Generic meters"),
    "supervision-io": N_("Supervision inputs and outputs"),
    "ev-charger": N_("EV charging stations"),
}
MODULE_FAMILIES = ("D4", "D5", "D6")  # profiles that may be combined at one address (modular range)

TRANSPORTS = {
    "tcp": N_("Modbus TCP (tcp)"),
    "rtu-over-tcp": N_("Modbus RTU over TCP (rtu-over-tcp)"),
    "rtu": N_("RS485 serial line (rtu)"),
}
PARITIES = {"N": N_("None (N)"), "E": N_("Even (E)"), "O": N_("Odd (O)")}
MEDIA = {"electricity": N_("Electricity"), "water": N_("Water"), "gas": N_("Gas")}
SIDES = {"A": N_("Side A"), "B": N_("Side B")}

MSG_STALE = N_(
    "The configuration was changed by someone else meanwhile (it is now at version %(version)s): "
    "reload the page, then make your change again."
)
MSG_NO_VERSION = N_("This form has no configuration version: reload the page and try again.")


# --- kinds of items -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One list of the site document edited by these pages."""

    key: str  # the list in the site document
    url: str  # its pages: {url}/new, {url}/{id}/edit, {url}/{id}/remove
    back: str  # the list page (with its anchor)
    template: str  # the add/edit form
    inputs: tuple[str, ...]  # the form's inputs: field paths inside one item
    new_title: str
    remove_title: str
    remove_note: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)  # error path inside an item -> input


GATEWAY_INPUTS = (
    "id", "name", "transport", "host", "port", "baudrate", "serial.port", "serial.baudrate", "serial.parity",
    "serial.stopbits", "serial.bytesize", "timeout", "retries", "inter_frame_delay", "fast_period",
    "counter_period",
)  # fmt: skip
DEVICE_INPUTS = (
    "id", "name", "profile", "gateway", "address", "interface", "module", "modules", "position", "pulse_weight",
    "medium", "side", "ea_register.address", "ea_register.type", "ea_register.word_order", "ea_register.scale",
    "ea_register.function_code", "panel", "zone", "circuit", "enabled", "exclude_from_total",
)  # fmt: skip
VIRTUAL_INPUTS = ("id", "name", "master", "slaves", "panel", "zone", "circuit", "exclude_from_total")

KINDS: dict[str, Kind] = {
    "gateways": Kind(
        "gateways",
        "/configuration/gateways",
        "/configuration/gateways",
        "configuration/config_gateway_form.html",
        GATEWAY_INPUTS,
        N_("Add a gateway"),
        N_("Remove a gateway"),
        aliases={"serial": "serial.port"},
    ),
    "devices": Kind(
        "devices",
        "/configuration/devices",
        "/configuration/devices",
        "configuration/config_device_form.html",
        DEVICE_INPUTS,
        N_("Add a device"),
        N_("Remove a device"),
        N_(
            "Its history stays: the readings and consumption already recorded are kept in the database; "
            "the device is no longer polled nor listed."
        ),
        aliases={"ea_register": "ea_register.address"},
    ),
    "virtual_devices": Kind(
        "virtual_devices",
        "/configuration/virtual-devices",
        "/configuration/virtual-devices",
        "configuration/config_virtual_device_form.html",
        VIRTUAL_INPUTS,
        N_("Add a virtual device"),
        N_("Remove a virtual device"),
        N_("Its master and slaves stay as they are; only the computed difference is no longer shown."),
    ),
    "panels": Kind(
        "panels",
        "/configuration/structure/panels",
        "/configuration/structure#panels",
        "configuration/config_structure_form.html",
        ("id", "name"),
        N_("Add a panel"),
        N_("Remove a panel"),
    ),
    "zones": Kind(
        "zones",
        "/configuration/structure/zones",
        "/configuration/structure#zones",
        "configuration/config_structure_form.html",
        ("id", "name"),
        N_("Add a zone"),
        N_("Remove a zone"),
    ),
    "circuits": Kind(
        "circuits",
        "/configuration/structure/circuits",
        "/configuration/structure#circuits",
        "configuration/config_structure_form.html",
        ("id", "name", "zone"),
        N_("Add a circuit"),
        N_("Remove a circuit"),
    ),
}


# --- forms <-> site document items ----------------------------------------------------------------


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _number(text: str) -> int | float | str | None:
    """A number typed in a form: None when empty, the text itself when it is not a number (the schema
    then names the field)."""
    if not text:
        return None
    candidate = text.replace(" ", "").replace("\u00a0", "").replace(",", ".")
    try:
        return int(candidate)
    except ValueError:
        pass
    try:
        return float(candidate)
    except ValueError:
        return text


def _put(item: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != "" and value != []:
        item[key] = value


def _many(form: Any, name: str) -> list[str]:
    getall = getattr(form, "getall", None)
    values = getall(name, []) if getall else ([form[name]] if name in form else [])
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def values_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """A document item as the form shows it: nested settings flattened (``serial.port``), numbers as text,
    lists kept, booleans kept."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                out[f"{key}.{sub}"] = "" if inner is None else str(inner)
        elif isinstance(value, list) or isinstance(value, bool):
            out[key] = value
        else:
            out[key] = "" if value is None else str(value)
    return out


def form_values(form: Any, kind: Kind) -> dict[str, Any]:
    """What the person typed, to show again (lists for multiple choices, booleans for checkboxes)."""
    out: dict[str, Any] = {}
    for name in kind.inputs:
        if name in ("modules", "slaves"):
            out[name] = _many(form, name)
        elif name in ("enabled", "exclude_from_total"):
            out[name] = name in form
        else:
            out[name] = _text(form, name)
    return out


def gateway_item(form: Any) -> dict[str, Any]:
    """The gateway of the form; only the settings its transport uses (the others are ignored)."""
    item: dict[str, Any] = {"id": _text(form, "id")}
    _put(item, "name", _text(form, "name"))
    transport = _text(form, "transport") or "tcp"
    item["transport"] = transport
    if transport == "rtu":
        serial: dict[str, Any] = {"port": _text(form, "serial.port")}
        for name in ("baudrate", "parity", "stopbits", "bytesize"):
            raw = _text(form, f"serial.{name}")
            _put(serial, name, raw if name == "parity" else _number(raw))
        item["serial"] = serial
    else:
        _put(item, "host", _text(form, "host"))
        for name in ("port", "baudrate"):
            _put(item, name, _number(_text(form, name)))
    for name in ("timeout", "retries", "inter_frame_delay", "fast_period", "counter_period"):
        _put(item, name, _number(_text(form, name)))
    return item


def traits(profile: Profile | None) -> set[str]:
    """What a profile needs from the form: ``pulse`` (position, pulse weight, medium), ``ev`` (side of a
    double station), ``generic`` (the Ea+ register), ``modular`` (other modules at its address). An
    unknown profile keeps every field."""
    if profile is None:
        return {"pulse", "ev", "generic", "modular"}
    found = set()
    if profile.inputs is not None or any(r.position_stride for r in profile.registers):
        found.add("pulse")
    code = profile.family.split()[0] if profile.family else ""
    if code == "D11":
        found.add("ev")
    if code == "D9":
        found.add("generic")
    if code in MODULE_FAMILIES or profile.id.startswith("modular-"):
        found.add("modular")
    return found


def device_item(form: Any, profiles: Mapping[str, Profile]) -> dict[str, Any]:
    """The device of the form; fields its profile does not use are ignored."""
    item: dict[str, Any] = {}
    for name in ("id", "name", "profile", "gateway"):
        item[name] = _text(form, name)
    uses = traits(profiles.get(item["profile"]))
    interface, module = _number(_text(form, "interface")), _number(_text(form, "module"))
    if interface is not None and module is not None:  # modular range: the address is 10 × interface + module
        item["interface"], item["module"] = interface, module
    else:
        _put(item, "interface", interface)
        _put(item, "module", module)
        _put(item, "address", _number(_text(form, "address")))
    if "modular" in uses:
        _put(item, "modules", _many(form, "modules"))
    if "pulse" in uses:
        _put(item, "position", _number(_text(form, "position")))
        _put(item, "pulse_weight", _number(_text(form, "pulse_weight")))
        _put(item, "medium", _text(form, "medium"))
    if "ev" in uses:
        _put(item, "side", _text(form, "side"))
    if "generic" in uses and _text(form, "ea_register.address"):
        register: dict[str, Any] = {}
        for name in ("address", "type", "word_order", "scale", "function_code"):
            raw = _text(form, f"ea_register.{name}")
            _put(register, name, raw if name in ("type", "word_order") else _number(raw))
        item["ea_register"] = register
    for name in ("panel", "zone", "circuit"):
        _put(item, name, _text(form, name))
    if "enabled" not in form:
        item["enabled"] = False
    if "exclude_from_total" in form:
        item["exclude_from_total"] = True
    return item


def virtual_item(form: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": _text(form, "id"),
        "name": _text(form, "name"),
        "master": _text(form, "master"),
    }
    item["slaves"] = _many(form, "slaves")
    for name in ("panel", "zone", "circuit"):
        _put(item, name, _text(form, name))
    if "exclude_from_total" in form:
        item["exclude_from_total"] = True
    return item


def structure_item(kind: Kind, form: Any) -> dict[str, Any]:
    item = {"id": _text(form, "id"), "name": _text(form, "name")}
    if kind.key == "circuits":
        _put(item, "zone", _text(form, "zone"))
    return item


def item_of(kind: Kind, form: Any, profiles: Mapping[str, Profile]) -> dict[str, Any]:
    if kind.key == "gateways":
        return gateway_item(form)
    if kind.key == "devices":
        return device_item(form, profiles)
    if kind.key == "virtual_devices":
        return virtual_item(form)
    return structure_item(kind, form)


def device_form_values(item: Mapping[str, Any]) -> dict[str, Any]:
    values = values_of(item)
    values.setdefault("enabled", True)
    if item.get("interface") is not None and item.get("module") is not None:
        values["address"] = ""  # given by interface and module
    return values


# --- the document in force ------------------------------------------------------------------------


def _document(state: State) -> dict[str, Any]:
    if getattr(state, "live", None) is None:
        raise ApiError(503, "unavailable", N_("the event bus (NATS) is unavailable; try again"))
    return config_document(state)


def _find(items: list[dict[str, Any]], item_id: str) -> int | None:
    return next((n for n, item in enumerate(items) if item.get("id") == item_id), None)


def _item(document: Mapping[str, Any], kind: Kind, item_id: str) -> tuple[int, dict[str, Any]]:
    items = list(document.get(kind.key) or [])
    n = _find(items, item_id)
    if n is None:
        raise ApiError(
            404, "not-found", N_("nothing called %(id)s here: it may have been removed meanwhile"), id=item_id
        )
    return n, items[n]


def _version(form: Any) -> int:
    raw = _text(form, "version")
    if not raw.isdigit():
        raise ApiError(400, "invalid-request", MSG_NO_VERSION)
    return int(raw)


def users_of(document: Mapping[str, Any], kind: Kind, item_id: str) -> list[tuple[str, str, str]]:
    """What still refers to an item (it cannot be removed before): (kind key, id, name)."""
    found: list[tuple[str, str, str]] = []

    def add(key: str, item: Mapping[str, Any]) -> None:
        found.append((key, str(item.get("id")), str(item.get("name") or item.get("id"))))

    devices = document.get("devices") or []
    virtual = document.get("virtual_devices") or []
    if kind.key == "gateways":
        for d in devices:
            if d.get("gateway") == item_id:
                add("devices", d)
    elif kind.key in ("devices", "virtual_devices"):
        for v in virtual:
            if v.get("id") != item_id and (v.get("master") == item_id or item_id in (v.get("slaves") or [])):
                add("virtual_devices", v)
    else:
        ref = kind.key[:-1]  # panel, zone, circuit
        if kind.key == "zones":
            for c in document.get("circuits") or []:
                if c.get("zone") == item_id:
                    add("circuits", c)
        for key, items in (("devices", devices), ("virtual_devices", virtual)):
            for d in items:
                if d.get(ref) == item_id:
                    add(key, d)
    return found


def edit_url(key: str, item_id: str) -> str:
    return f"{KINDS[key].url}/{item_id}/edit"


# --- errors of a save, next to their input --------------------------------------------------------


@dataclass
class Problems:
    fields: dict[str, str] = field(default_factory=dict)
    top: str = ""
    stale: bool = False


def _quoted_input(message: str, kind: Kind) -> str | None:
    for name in re.findall(r"'([a-z_.]+)'", message):
        if name in kind.inputs:
            return name
    return None


def problems_of(exc: ApiError, kind: Kind, index: int, language: str, values: Mapping[str, Any]) -> Problems:
    """A refused save as messages: next to the input the field path names (``devices[3].address`` when
    the item edited is ``devices[3]``), else at the top of the form."""
    if exc.status_code == 409 and exc.code == "version-conflict":  # (read-only-at-hub: said as is, below)
        current = (exc.extra or {}).get("version", "?") if isinstance(exc.extra, dict) else "?"
        text = translations(language).gettext(MSG_STALE) % {"version": current}
        return Problems(top=text, stale=True)
    full = exc.translated(language)
    path = (exc.extra or {}).get("field", "") if isinstance(exc.extra, dict) else ""
    match = re.fullmatch(rf"{re.escape(kind.key)}\[(\d+)\](?:\.(.+))?", path or "")
    if not match or int(match.group(1)) != index:
        return Problems(top=full)
    problem = str(exc.params.get("problem", ""))
    short = problem.split(": ", 1)[1] if problem.startswith(path + ": ") else problem
    try:
        text = translations(language).gettext(exc.message) % {**exc.params, "problem": short}
    except (KeyError, ValueError, TypeError):
        text = full
    rest = match.group(2)
    if rest is None:
        name = _quoted_input(short, kind)
    else:
        rest = re.sub(r"\[\d+\]", "", rest)
        name = kind.aliases.get(rest, rest)
        while name not in kind.inputs and "." in name:
            name = name.rsplit(".", 1)[0]
            name = kind.aliases.get(name, name)
    if name == "address" and not values.get("address") and values.get("interface"):
        name = "interface"
    if name in kind.inputs and (name != "id" or values.get("_new")):
        return Problems(fields={name: text})
    return Problems(top=full)


# --- what the forms offer -------------------------------------------------------------------------


def _family_key(profile: Profile) -> tuple[int, str]:
    code = profile.family.split()[0] if profile.family else ""
    digits = code[1:] if code[:1] == "D" else ""
    return (int(digits) if digits.isdigit() else 99, profile.family)


def family_label(family: str, translate: Callable[[str], str]) -> str:
    code, _, rest = family.partition(" ")
    words = translate(FAMILIES[rest]) if rest in FAMILIES else _labels.tidy(rest or code)
    return f"{code} – {words}" if rest else words


def profile_groups(profiles: Mapping[str, Profile], translate: Callable[[str], str]) -> list[dict[str, Any]]:
    """Profiles by family for a select with <optgroup>; each option with the traits the form reacts to."""
    groups: dict[str, dict[str, Any]] = {}
    for profile in sorted(profiles.values(), key=lambda p: (_family_key(p), p.name)):
        group = groups.setdefault(
            profile.family, {"label": family_label(profile.family, translate), "options": []}
        )
        group["options"].append(
            {
                "value": profile.id,
                "label": f"{profile.name} · {profile.id}",
                "tags": " ".join(sorted(traits(profile))),
            }
        )
    return list(groups.values())


def module_choices(profiles: Mapping[str, Profile], chosen: list[str]) -> list[dict[str, str]]:
    out = []
    for profile in sorted(profiles.values(), key=lambda p: (_family_key(p), p.name)):
        code = profile.family.split()[0] if profile.family else ""
        if code in MODULE_FAMILIES or profile.id in chosen:
            out.append({"value": profile.id, "label": f"{profile.name} · {profile.id}"})
    return out


def _options(items: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(str(i["id"]), f"{i.get('name') or i['id']} ({i['id']})") for i in items]


def choices(
    state: State, document: Mapping[str, Any], translate: Callable[[str], str], values: Mapping[str, Any]
) -> dict[str, Any]:
    profiles = state.profiles
    return {
        "profile_groups": profile_groups(profiles, translate),
        "module_choices": module_choices(profiles, list(values.get("modules") or [])),
        "gateway_options": _options(document.get("gateways") or []),
        "panel_options": _options(document.get("panels") or []),
        "zone_options": _options(document.get("zones") or []),
        "circuit_options": _options(document.get("circuits") or []),
        "member_options": _options(
            [*(document.get("devices") or []), *(document.get("virtual_devices") or [])]
        ),
        "transports": TRANSPORTS,
        "parities": PARITIES,
        "media": MEDIA,
        "sides": SIDES,
        "data_types": [str(t) for t in DataType],
        "defaults": {
            "port": Gateway.model_fields["port"].default,
            "baudrate": Gateway.model_fields["baudrate"].default,
            "timeout": Gateway.model_fields["timeout"].default,
            "retries": Gateway.model_fields["retries"].default,
            "inter_frame_delay": Gateway.model_fields["inter_frame_delay"].default,
            "poll": float(state.settings.poll_interval),
        },
    }


# --- rendering --------------------------------------------------------------------------------------


async def _form_page(
    request: Request[Any, Any, Any],
    kind: Kind,
    *,
    original: str | None,
    values: dict[str, Any],
    version: int,
    problems: Problems | None = None,
    status_code: int = 200,
    test: dict[str, Any] | None = None,
) -> Template:
    state = site_state(request)
    document = _document(state)
    translate = await _translator(request)
    action = f"{kind.url}/new" if original is None else f"{kind.url}/{original}/edit"
    return await render(
        request,
        kind.template,
        status_code=status_code,
        kind=kind,
        original=original,
        action=action,
        values=values,
        errors=(problems.fields if problems else {}),
        top_error=(problems.top if problems else ""),
        stale=bool(problems and problems.stale),
        version=version,
        test=test,
        **choices(state, document, translate, values),
    )


async def _translator(request: Request[Any, Any, Any]) -> Callable[[str], str]:
    return translations(await language_of(request)).gettext


def saved_notice(state: State, saved: int | None) -> dict[str, Any] | None:
    """The notice of a list shown after a save: "Saved: version N" and what changed."""
    if saved is None:
        return None
    live = getattr(state, "live", None)
    changes = list(live.event.changes) if live is not None and live.version == saved else []
    return {"version": saved, "changes": changes}


async def _apply(request: Request[Any, Any, Any], document: dict[str, Any], version: int) -> int:
    event = await apply_document(site_state(request), document, version, current_role(request) or "unknown")
    return event.version


# --- pages: index -----------------------------------------------------------------------------------


@get("/configuration", operation_id="pageConfiguration", **PAGE)
async def configuration_index(request: Request[Any, Any, Any]) -> Template:
    state = site_state(request)
    document = _document(state)
    live = state.live
    devices = document.get("devices") or []
    who = live.event.changed_by
    role_name = next((name for role, name in ROLE_NAMES.items() if str(role) == who), None)
    counts = [
        (N_("Gateways"), len(document.get("gateways") or []), "/configuration/gateways"),
        (N_("Devices"), len(devices), "/configuration/devices"),
        (N_("Virtual devices"), len(document.get("virtual_devices") or []), "/configuration/virtual-devices"),
        (N_("Electrical panels"), len(document.get("panels") or []), "/configuration/structure#panels"),
        (N_("Zones"), len(document.get("zones") or []), "/configuration/structure#zones"),
        (N_("Circuits"), len(document.get("circuits") or []), "/configuration/structure#circuits"),
    ]
    return await render(
        request,
        "configuration/config_index.html",
        event=live.event,
        who_id=role_name,
        who=who,
        counts=counts,
        off=sum(1 for d in devices if d.get("enabled") is False),
    )


# --- pages: lists -----------------------------------------------------------------------------------


@get("/configuration/gateways", operation_id="pageConfigGateways", **PAGE)
async def gateways_page(request: Request[Any, Any, Any], saved: int | None = None) -> Template:
    state = site_state(request)
    document = _document(state)
    per_gateway: dict[str, int] = {}
    for d in document.get("devices") or []:
        per_gateway[d.get("gateway")] = per_gateway.get(d.get("gateway"), 0) + 1
    return await render(
        request,
        "configuration/config_gateways.html",
        gateways=state.live.site.gateways,
        per_gateway=per_gateway,
        transports=TRANSPORTS,
        poll=float(state.settings.poll_interval),
        version=document["version"],
        saved=saved_notice(state, saved),
    )


@get("/configuration/devices", operation_id="pageConfigDevices", **PAGE)
async def devices_page(request: Request[Any, Any, Any], saved: int | None = None) -> Template:
    state = site_state(request)
    document = _document(state)
    site = state.live.site
    names = {
        "gateways": {g.id: g.name or g.id for g in site.gateways},
        "panels": {p.id: p.name for p in site.panels},
        "zones": {z.id: z.name for z in site.zones},
        "circuits": {c.id: c.name for c in site.circuits},
    }
    rows = [
        {"device": d, "label": address_label(d), "profile": state.profiles.get(d.profile)}
        for d in site.devices
    ]
    return await render(
        request,
        "configuration/config_devices.html",
        rows=rows,
        names=names,
        version=document["version"],
        saved=saved_notice(state, saved),
    )


@get("/configuration/virtual-devices", operation_id="pageConfigVirtualDevices", **PAGE)
async def virtual_devices_page(request: Request[Any, Any, Any], saved: int | None = None) -> Template:
    state = site_state(request)
    document = _document(state)
    site = state.live.site
    names = {d.id: d.name for d in site.devices} | {v.id: v.name for v in site.virtual_devices}
    places = (
        {p.id: p.name for p in site.panels}
        | {z.id: z.name for z in site.zones}
        | {c.id: c.name for c in site.circuits}
    )
    return await render(
        request,
        "configuration/config_virtual_devices.html",
        virtual_devices=site.virtual_devices,
        names=names,
        places=places,
        version=document["version"],
        saved=saved_notice(state, saved),
    )


@get("/configuration/structure", operation_id="pageConfigStructure", **PAGE)
async def structure_page(request: Request[Any, Any, Any], saved: int | None = None) -> Template:
    state = site_state(request)
    document = _document(state)
    return await render(
        request,
        "configuration/config_structure.html",
        **_structure_context(state, document),
        add_values={},
        add_errors={},
        saved=saved_notice(state, saved),
    )


def _structure_context(state: State, document: Mapping[str, Any]) -> dict[str, Any]:
    site = state.live.site
    used: dict[tuple[str, str], int] = {}
    for d in [*site.devices, *site.virtual_devices]:
        for ref in ("panel", "zone", "circuit"):
            value = getattr(d, ref)
            if value:
                used[(ref, value)] = used.get((ref, value), 0) + 1
    return {
        "panels": site.panels,
        "zones": site.zones,
        "circuits": site.circuits,
        "zone_names": {z.id: z.name for z in site.zones},
        "zone_options": _options(document.get("zones") or []),
        "used": used,
        "version": document["version"],
    }


# --- pages: add, edit, remove (every kind) ----------------------------------------------------------


def _kind_of(request: Request[Any, Any, Any]) -> Kind:
    path = request.url.path
    for kind in KINDS.values():
        if path.startswith(kind.url + "/"):
            return kind
    raise ApiError(404, "not-found", N_("there is nothing at this address"))


_NEW = [f"{k.url}/new" for k in KINDS.values()]
_EDIT = [f"{k.url}/{{item_id:str}}/edit" for k in KINDS.values()]
_REMOVE = [f"{k.url}/{{item_id:str}}/remove" for k in KINDS.values()]


@get(_NEW, operation_id="pageConfigNew", **PAGE)
async def new_form(request: Request[Any, Any, Any]) -> Template:
    kind = _kind_of(request)
    document = _document(site_state(request))
    values: dict[str, Any] = {"_new": True}
    if kind.key == "devices":
        values.update(enabled=True)
        gateways = document.get("gateways") or []
        if len(gateways) == 1:
            values["gateway"] = gateways[0]["id"]
    return await _form_page(request, kind, original=None, values=values, version=document["version"])


@get(_EDIT, operation_id="pageConfigEdit", **PAGE)
async def edit_form(request: Request[Any, Any, Any], item_id: str) -> Template:
    kind = _kind_of(request)
    document = _document(site_state(request))
    _, item = _item(document, kind, item_id)
    values = device_form_values(item) if kind.key == "devices" else values_of(item)
    return await _form_page(request, kind, original=item_id, values=values, version=document["version"])


async def _save(request: Request[Any, Any, Any], original: str | None) -> Template | Redirect:
    kind = _kind_of(request)
    state = site_state(request)
    form = await request.form()
    values = form_values(form, kind)
    if original is None:
        values["_new"] = True
    version = _version(form)
    document = _document(state)
    document.pop("version", None)
    items = [dict(i) for i in document.get(kind.key) or []]
    new = item_of(kind, form, state.profiles)
    if original is None:
        index = len(items)
        items.append(new)
    else:
        index, old = _item(document, kind, original)
        kept = {k: v for k, v in old.items() if k.split(".")[0] not in {n.split(".")[0] for n in kind.inputs}}
        new["id"] = original  # ids never change: a device's history is keyed by it
        items[index] = {**kept, **new}
    document[kind.key] = items
    try:
        saved = await _apply(request, document, version)
    except ApiError as exc:
        if exc.status_code not in (400, 409):
            raise
        problems = problems_of(exc, kind, index, await language_of(request), values)
        return await _form_page(
            request,
            kind,
            original=original,
            values=values,
            version=version,
            problems=problems,
            status_code=exc.status_code,
        )
    return redirect(_with_saved(kind.back, saved))


def _with_saved(back: str, version: int) -> str:
    path, _, anchor = back.partition("#")
    return f"{path}?saved={version}" + (f"#{anchor}" if anchor else "")


@post(_NEW, operation_id="pageConfigNewSubmit", status_code=303, **PAGE)
async def new_submit(request: Request[Any, Any, Any]) -> Any:
    return await _save(request, None)


@post(_EDIT, operation_id="pageConfigEditSubmit", status_code=303, **PAGE)
async def edit_submit(request: Request[Any, Any, Any], item_id: str) -> Any:
    return await _save(request, item_id)


async def _remove_page(
    request: Request[Any, Any, Any],
    kind: Kind,
    item_id: str,
    *,
    message: str = "",
    status_code: int = 200,
    version: int | None = None,
) -> Template:
    document = _document(site_state(request))
    _, item = _item(document, kind, item_id)
    users = [(key, uid, name, edit_url(key, uid)) for key, uid, name in users_of(document, kind, item_id)]
    return await render(
        request,
        "configuration/config_remove.html",
        status_code=status_code,
        kind=kind,
        item=item,
        users=users,
        message=message,
        version=version if version is not None else document["version"],
    )


@get(_REMOVE, operation_id="pageConfigRemove", **PAGE)
async def remove_form(request: Request[Any, Any, Any], item_id: str) -> Template:
    return await _remove_page(request, _kind_of(request), item_id)


@post(_REMOVE, operation_id="pageConfigRemoveSubmit", status_code=303, **PAGE)
async def remove_submit(request: Request[Any, Any, Any], item_id: str) -> Any:
    kind = _kind_of(request)
    form = await request.form()
    version = _version(form)
    document = _document(site_state(request))
    document.pop("version", None)
    index, _ = _item(document, kind, item_id)
    if users_of(document, kind, item_id):
        return await _remove_page(request, kind, item_id, status_code=400, version=version)
    document[kind.key] = [i for n, i in enumerate(document.get(kind.key) or []) if n != index]
    try:
        saved = await _apply(request, document, version)
    except ApiError as exc:
        if exc.status_code not in (400, 409):
            raise
        language = await language_of(request)
        message = problems_of(exc, kind, -1, language, {}).top
        # changed meanwhile: the page shows the item as it is now, and asks again with the version in force
        return await _remove_page(
            request,
            kind,
            item_id,
            message=message,
            status_code=exc.status_code,
            version=None if exc.status_code == 409 else version,
        )
    return redirect(_with_saved(kind.back, saved))


# --- devices: On/Off and the test read --------------------------------------------------------------


@post(
    "/configuration/devices/{item_id:str}/enabled",
    operation_id="pageConfigDeviceEnabled",
    status_code=303,
    **PAGE,
)
async def device_enabled(request: Request[Any, Any, Any], item_id: str) -> Redirect:
    device_id = item_id
    form = await request.form()
    wanted = _text(form, "enabled")
    if wanted not in ("on", "off"):
        raise ApiError(400, "invalid-request", N_("say On or Off"))
    state = site_state(request)
    _document(state)
    result = await set_device_enabled(state, device_id, wanted == "on", current_role(request) or "unknown")
    return redirect(f"/configuration/devices?saved={result.version}#device-{device_id}")


def _local_check(item: dict[str, Any], profiles: Mapping[str, Profile]) -> str:
    """Why the form's device cannot be read at all (checked here, before asking the poller), or ''."""
    try:
        device = Device.model_validate(item)
    except ValidationError as exc:
        err = exc.errors()[0]
        return f"{field_path(tuple(err['loc'])) or 'device'}: {err['msg'].removeprefix('Value error, ')}"
    try:
        check_device(device, profiles)
    except ProfileError as exc:
        return str(exc)
    return ""


async def run_test(request: Request[Any, Any, Any], form: Any) -> dict[str, Any]:
    """The test read of the form's device: values and states with labels, or the one line of why not."""
    state = site_state(request)
    document = _document(state)
    item = device_item(form, state.profiles)
    if not item.get("id"):
        item["id"] = "test"
    language = await language_of(request)
    translate = translations(language).gettext
    problem = _local_check(item, state.profiles)
    if problem:
        return {"ok": False, "error": problem}
    gateway = next((g for g in document.get("gateways") or [] if g.get("id") == item["gateway"]), None)
    try:
        reply = await test_device(state, item, gateway)
    except ApiError as exc:
        if exc.status_code >= 500 or exc.status_code == 400:
            return {"ok": False, "error": exc.translated(language), "unavailable": exc.status_code >= 500}
        raise
    # in the Measure tab's order; harmonics only counted (dozens of values that say nothing more here)
    ordered = [q for _, tables in _labels.group_tables(reply.values) for _, names in tables for q in names]
    values = [
        (_labels.quantity_label(q, translate), q, reply.values[q], _labels.unit(q))
        for q in ordered
        if not q.startswith("harmonic_")
    ]
    states = [
        (_labels.state_label(name, translate), _labels.value_label(value, translate), value)
        for name, value in sorted(reply.states.items())
    ]
    return {
        "ok": reply.ok,
        "error": reply.error,
        "values": values,
        "harmonics": sum(1 for q in reply.values if q.startswith("harmonic_")),
        "states": states,
        "problems": reply.problems,
        "transactions": reply.transactions,
    }


@post("/configuration/devices/test", operation_id="pageConfigDeviceTest", status_code=200, **PAGE)
async def device_test(request: Request[Any, Any, Any]) -> Template:
    form = await request.form()
    test = await run_test(request, form)
    if request.headers.get("hx-request"):
        return await render(request, "configuration/_config_test_result.html", test=test)
    kind = KINDS["devices"]
    original = _text(form, "original") or None
    values = form_values(form, kind)
    if original is None:
        values["_new"] = True
    raw = _text(form, "version")
    version = int(raw) if raw.isdigit() else _document(site_state(request))["version"]
    return await _form_page(request, kind, original=original, values=values, version=version, test=test)


router = Router(
    path="/",
    route_handlers=[
        configuration_index,
        gateways_page,
        devices_page,
        virtual_devices_page,
        structure_page,
        new_form,
        new_submit,
        edit_form,
        edit_submit,
        remove_form,
        remove_submit,
        device_enabled,
        device_test,
    ],
)
