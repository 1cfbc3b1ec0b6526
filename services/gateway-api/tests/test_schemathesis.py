"""The JSON API against its own OpenAPI document (issue 12, item 10): schemathesis generates requests from
``/schema/openapi.json`` — the examples, the coverage cases (boundaries, missing and wrong-typed values,
other methods) and a bounded number of random ones, valid and invalid, per operation — and checks every
answer with schemathesis's response checks: no server error (5xx), a documented status code, a
documented content type, the documented headers, a body of the documented schema, the ``Allow`` header of
an OPTIONS answer listing the documented methods; and, both ways, that the document says what the server
takes: a request the document refuses (a period not in its enum, a malformed date, an empty ``?site=``)
is refused (negative_data_rejection), and one it allows is not answered 400 (positive_data_acceptance) —
except where the value is well formed but names nothing in the site's configuration (a device, scope or
filter id the schema cannot list: it changes with the configuration), which the handlers answer 400
naming the known ones (``POSITIVE_BUT_UNKNOWN``).

The real server (``service.serve``: uvicorn, the app, the sessions in Redis, NATS, chDB) and the real
auth service run in a thread of their own with their own event loop; schemathesis sends real HTTP
requests to it. Three runs: anonymous (401 from every guarded route, random codes to the login, random
session cookies and bearer tokens from the document's security schemes), as the administrator, with a
fresh session for every request (so a Logout or a change of language by one request does not change what
the next one sees; a generated ``Authorization`` header is left out, so the session decides), and with an
administrator's machine token (``Authorization: Bearer``: the role's routes, 403 on codes, tokens and the
session's own routes); then the login's guessing limit (429), which random codes seldom reach. The
per-address limit of wrong bearer tokens is lifted here (each random token is a documented 401; the limit's
429 is tested in test_tokens.py). The one 5xx allowed: ``POST /api/v1/site/config/test-device``'s documented 503 poller-unavailable,
since no poller runs here.

Left out, in both runs: ``PUT /api/v1/auth/codes/{role}`` (changes the roles' codes: the next login of
the test, or of the next test, would need codes it does not know) and ``POST /api/v1/restore`` (replaces
the whole configuration and history). Everything else that changes state is exercised — the configuration
(validated, versioned), the device On/Off, the commands (no device answers them here), readings imports
(no body: schemathesis has no CSV to send).

Bounds: ``EXAMPLES`` random cases per operation and run, deterministic generation from ``SEED`` (the same
requests every run, so a CI failure reproduces), no shrinking. ``EWS_SCHEMATHESIS_EXAMPLES`` and
``EWS_SCHEMATHESIS_SEED`` change them, e.g. for a longer search by hand.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import redis
import requests
import schemathesis
from argon2 import PasswordHasher
from ews_auth import codes as auth_codes
from ews_auth.limits import FREE_FAILURES
from ews_auth.service import serve as auth_serve
from ews_contracts.settings import Settings
from ews_gateway_api import bearer, service
from ews_gateway_api.sessions import SESSION_COOKIE
from ews_runtime.servers import free_port
from litestar import Litestar
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NotSet
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import session_for, token_for

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("EWS_SCHEMATHESIS_EXAMPLES", "25"))
SEED = int(os.environ.get("EWS_SCHEMATHESIS_SEED", "20251"))
# the 400s of a well-formed id that names nothing in the site's configuration: device=, scope=<kind>:<id>
# (consumption, readings.csv) by their code; /devices?gateway=|panel=|zone=|circuit= (invalid-request) by
# their one line
POSITIVE_BUT_UNKNOWN = {f"unknown-{kind}" for kind in ("device", "zone", "circuit", "panel", "gateway")}
# ... and of values each valid alone that do not go together, which parameters of OpenAPI cannot say:
# split=medium on a scope in units, split=circuit on one in money, a decade leaving 1970 … 2200
POSITIVE_BUT_UNKNOWN |= {"split-needs-money", "split-needs-units", "period-out-of-range"}
UNKNOWN_FILTER = re.compile(r"^unknown (gateway|panel|zone|circuit) '")


def positive_data_acceptance_of_configured_ids(
    ctx: CheckContext, response: Response, case: Any
) -> bool | None:
    """positive_data_acceptance, but for a 400 saying that a well-formed id names nothing configured."""
    if response.status_code == 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (
            body.get("code") in POSITIVE_BUT_UNKNOWN
            or (body.get("code") == "invalid-request" and UNKNOWN_FILTER.match(str(body.get("detail", ""))))
            or (
                case.operation.label in NAME_NOT_AS_DOCUMENTED
                and body.get("code") == "invalid-request"
                and [e.get("key") for e in body.get("extra") or []] == ["name"]
            )
        ):
            return None
    return positive_data_acceptance(ctx, response, case)


# the credentials of the document's security schemes, which the runs as administrator send themselves
CREDENTIALS = {SESSION_COOKIE, "Authorization"}
# request bodies whose declaration does not say what the route takes, outside these parameters' work: the
# logout takes no body but declares one (required), the configuration and the readings import refuse a
# request without one (400 invalid-configuration, 415) though theirs is optional — left out of the data
# checks when the case sends no body (the other cases of these operations are checked)
BODY_NOT_AS_DOCUMENTED = {
    "POST /api/v1/auth/logout",
    "PUT /api/v1/site/config",
    "POST /api/v1/readings/import",
}
# a token's name (ews_contracts.tokens.clean_name) is refused when not printable, which its body's schema
# does not say: a 400 naming only the name is left out of positive_data_acceptance
NAME_NOT_AS_DOCUMENTED = {"POST /api/v1/tokens"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    allow_header_conformance,
    negative_data_rejection,
    positive_data_acceptance_of_configured_ids,
]
DATA_CHECKS = (negative_data_rejection, positive_data_acceptance_of_configured_ids)
EXCLUDED = [("PUT", "/api/v1/auth/codes/{role}"), ("POST", "/api/v1/restore")]


@dataclass
class LiveServer:
    base_url: str
    loop: asyncio.AbstractEventLoop
    app: Litestar
    requests: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def session(self, role: str) -> dict[str, str]:
        return self.run(session_for(self.app, role))

    def token(self, role: str) -> dict[str, str]:
        return self.run(token_for(self.app, role))

    def check(
        self, case: Any, cookies: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """Send the case, count it, and run the checks on the answer. With ``cookies`` (a session), a
        generated ``Authorization`` header is left out: it would decide instead of the session."""
        if cookies and case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        response = case.call(base_url=self.base_url, cookies=cookies, headers=headers, timeout=30)
        self.requests += 1
        self.by_operation[case.operation.label] = self.by_operation.get(case.operation.label, 0) + 1
        self.by_status[response.status_code] = self.by_status.get(response.status_code, 0) + 1
        checks = CHECKS
        if (cookies or headers) and _negates(case, CREDENTIALS):
            # a case without the session cookie or the token: the test sends its own, so it is answered
            checks = [c for c in CHECKS if c is not negative_data_rejection]
        if case.operation.label in BODY_NOT_AS_DOCUMENTED and isinstance(case.body, NotSet):
            checks = [c for c in checks if c not in DATA_CHECKS]
        case.validate_response(response, checks=checks)


def _negates(case: Any, names: set[str]) -> bool:
    """Whether the (negative) case is about one of the parameters ``names`` (missing or invalid)."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    named = {getattr(data, "parameter", None)} | {m.parameter for m in getattr(data, "mutations", ())}
    return bool(named & names)


@pytest.fixture
def live_server(
    settings: Settings, fresh_redis: str, migrated: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveServer]:
    """``service.serve`` and the auth service in a thread with its own event loop, on a free port."""
    monkeypatch.setattr(
        auth_codes, "PasswordHasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    apps: list[Litestar] = []
    create_app = service.create_app

    def capture(s: Settings) -> Litestar:
        apps.append(create_app(s))
        return apps[-1]

    monkeypatch.setattr(service, "create_app", capture)
    # every generated bearer token is wrong: a documented 401 each, rather than the per-address limit's 429
    monkeypatch.setattr(bearer, "FAILURE_LIMIT", 10**9)
    port = free_port()
    served = settings.model_copy(update={"http_host": "127.0.0.1", "http_port": port})
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        tasks = [asyncio.create_task(auth_serve(settings)), asyncio.create_task(service.serve(served))]
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        waiter.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                errors.append(result)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # up, and the auth service answering the login (not 503)
            assert not errors, errors
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            try:
                resp = requests.post(f"{base_url}/api/v1/auth/login", json={"pin": "00000"}, timeout=5)
                if resp.status_code != 503:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        # the probe counted as a wrong PIN for this client: start from a clean count
        r = redis.Redis.from_url(settings.redis_url)
        for key in r.keys("ews:demo:auth:limits:*"):
            r.delete(key)
        r.close()
        live = LiveServer(base_url=base_url, loop=loop, app=apps[0])
        started = time.monotonic()
        yield live
        print(
            f"\nschemathesis: {len(live.by_operation)} operations, {live.requests} requests in "
            f"{time.monotonic() - started:.1f} s; by status: {dict(sorted(live.by_status.items()))}; "
            f"by operation: {live.by_operation}"
        )
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
    assert not errors, errors


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": EXAMPLES,
                "deterministic": True,
                "no-shrink": True,
                "mode": "all",
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
            },
            "operations": [
                {
                    # no poller runs here: its documented 503 poller-unavailable is the right answer
                    "include-method": "POST",
                    "include-path": "/api/v1/site/config/test-device",
                    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
                }
            ],
        }
    )


@pytest.fixture
def api_schema(live_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{live_server.base_url}/schema/openapi.json", config=_config())


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 (``from_fixture``) reads and renames ``node._nodeid``, which pytest 9.2 no longer
    has (``Node._id``): give it one (it names the operation in the subtest reports only)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")
for _method, _path in EXCLUDED:
    schema = schema.exclude(method=_method, path=_path)
SETTINGS = hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck))


@schema.parametrize()
@SETTINGS
def test_the_api_as_documented_anonymous(case: Any, live_server: LiveServer) -> None:
    live_server.check(case)


@schema.parametrize()
@SETTINGS
def test_the_api_as_documented_administrator(case: Any, live_server: LiveServer) -> None:
    live_server.check(case, cookies=live_server.session("administrator"))


@schema.parametrize()
@SETTINGS
def test_the_api_as_documented_with_an_administrator_token(case: Any, live_server: LiveServer) -> None:
    live_server.check(case, headers=live_server.token("administrator"))


def test_the_login_limit_answers_as_documented(api_schema: Any, live_server: LiveServer) -> None:
    """The fuzzed PINs are mostly not 5 digits (refused without counting), so the runs above seldom reach
    the guessing limit: wrong PIN + PUK pairs of the right form until it answers 429 — as documented
    (LoginRefused with retry_after, and Retry-After)."""
    login = api_schema["/api/v1/auth/login"]["POST"]
    wrong = {"pin": "12345", "puk": "12345 6789 01234"}
    for _ in range(FREE_FAILURES + 2):
        live_server.check(login.Case(body=wrong, media_type="application/json"))
    assert live_server.by_status == {401: FREE_FAILURES + 1, 429: 1}
    resp = requests.post(f"{live_server.base_url}/api/v1/auth/login", json=wrong, timeout=10)
    assert (
        resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1 and resp.json()["retry_after"] > 0
    )
