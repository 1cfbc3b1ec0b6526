"""Print a site's hourly consumption as the analytics library answers it (JSON), for the hub tests.

python hub_figures.py DSN DATABASE SITE_FILE DAY [DAY ...]   (chDB: in a process of its own, one folder each)
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date

from ews_analytics.queries import consumption
from ews_contracts.site import load_site
from ews_contracts.store import get_store

SCOPES = ("total-electricity", "device:main", "device:m1", "device:e2")


async def figures(dsn: str, database: str, site_file: str, days: list[str]) -> dict:
    site = load_site(site_file)
    store = get_store(dsn)
    out = {}
    for scope in SCOPES:
        for day in days:
            answer = await consumption(store, database, site, scope, "day", date.fromisoformat(day))
            out[f"{scope} {day}"] = [b.value for b in answer.buckets]
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(figures(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))))
