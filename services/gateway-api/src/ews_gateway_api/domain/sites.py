"""``GET /api/v1/sites``: the sites this server serves — the one site of a box or an edge, every site at the
hub (``ews_gateway_api.sites``). Every site-scoped route takes ``?site=<id>`` of one of them.

Guard: any logged-in role, session or machine token (the hub's roles see every site).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request, Router, get
from litestar.datastructures import State
from pydantic import BaseModel, Field

from ..guards import authenticated
from ..sites import all_site_states, configured_at, is_hub


class SiteSummary(BaseModel):
    id: str = Field(examples=["demo"], description="The site's id: what ?site= takes.")
    name: str = Field(examples=["Demo building"])
    timezone: str = Field(examples=["Europe/Brussels"])
    currency: str = Field(examples=["EUR"])
    language: str = Field(examples=["en"], description="The site's default language.")
    devices: int = Field(description="Devices of the site's configuration (virtual devices not counted).")
    virtual_devices: int = Field(description="Virtual devices of the site's configuration.")
    version: int | None = Field(description="The version of the configuration in force.")
    configured_at: datetime | None = Field(
        description="When the configuration in force was stored (UTC): at the hub, how fresh its copy is."
    )


class SiteList(BaseModel):
    hub: bool = Field(description="True at a hub (every site it holds), false on a site's own server.")
    sites: list[SiteSummary] = Field(description="By id.")


@get(
    "/sites",
    guards=[authenticated],
    operation_id="listSites",
    summary="The sites this server serves: one on a site's server, every site at a hub",
    description="Each site-scoped route takes ?site=<id> of one of these (optional when there is one).",
    tags=["site"],
)
async def list_sites(request: Request[Any, Any, State]) -> SiteList:
    state = request.app.state
    sites = []
    for one in all_site_states(state):
        site, live = one.site, one.live
        sites.append(
            SiteSummary(
                id=site.site,
                name=site.name,
                timezone=site.timezone,
                currency=site.currency,
                language=site.language,
                devices=len(site.devices),
                virtual_devices=len(site.virtual_devices),
                version=live.version if live is not None else None,
                configured_at=configured_at(live),
            )
        )
    return SiteList(hub=is_hub(state), sites=sites)


router = Router(path="/api/v1", route_handlers=[list_sites])
