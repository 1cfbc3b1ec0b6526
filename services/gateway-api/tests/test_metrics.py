"""GET /metrics (issue 12, item 8): Prometheus text from this machine without a session, or with an
administrator's or installer's session from anywhere; requests counted by route template and status."""

from __future__ import annotations

import pytest
from ews_gateway_api.testing import app_client
from litestar import Litestar
from prometheus_client import CONTENT_TYPE_LATEST

from .conftest import session_for

pytestmark = pytest.mark.integration


async def test_metrics_from_this_machine_and_for_configuring_roles(
    app: Litestar, auth_service, migrated
) -> None:
    async with app_client(app, client_address="127.0.0.1") as local:
        await local.get("/api/v1/devices/m1")  # 401: counted under its route template
        resp = await local.get("/metrics")
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == CONTENT_TYPE_LATEST
        text = resp.text
        assert (
            'ews_gateway_api_requests_total{app_name="ews",method="GET",path="/api/v1/devices/{device_id}",status_code="401"}'
            in text
        ), text[:2000]
        assert "ews_gateway_api_request_duration_seconds_bucket" in text
        assert "/api/v1/devices/m1" not in text  # raw paths never become labels
    async with app_client(app, client_address="192.0.2.7") as remote:
        assert (await remote.get("/metrics")).status_code == 401
        for role, status in (("user", 403), ("greenUp", 403), ("installer", 200), ("administrator", 200)):
            resp = await remote.get("/metrics", cookies=await session_for(app, role))
            assert resp.status_code == status, (role, resp.text[:200])


async def test_metrics_networks_are_a_setting(settings, auth_service, migrated) -> None:
    from ews_gateway_api.app import create_app

    app = create_app(settings.model_copy(update={"metrics_from": ("192.0.2.0/24",)}))
    async with app_client(app, client_address="192.0.2.7") as prometheus:
        assert (await prometheus.get("/metrics")).status_code == 200
    async with app_client(app, client_address="127.0.0.1") as local:
        assert (await local.get("/metrics")).status_code == 401
