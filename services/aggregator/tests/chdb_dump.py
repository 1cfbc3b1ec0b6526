"""Print a database's consumption as JSON (run in its own process: chDB opens one folder per process).

python chdb_dump.py chdb:///path/to/folder database
"""

from __future__ import annotations

import json
import sys

import clickhouse_connect


def dump(dsn: str, database: str) -> dict[str, list]:
    client = clickhouse_connect.get_client(dsn=dsn)
    hourly = client.query(
        f"SELECT device, quantity, toUnixTimestamp(hour) AS h, sum(value_milli) AS v, sum(estimated_milli) "
        f"FROM {database}.consumption_hourly GROUP BY device, quantity, h HAVING v != 0 ORDER BY device, quantity, h"
    ).result_rows
    daily = client.query(
        f"SELECT device, quantity, toString(day) AS d, sum(value_milli) AS v FROM {database}.consumption_daily "
        "GROUP BY device, quantity, d HAVING v != 0 ORDER BY device, quantity, d"
    ).result_rows
    return {"hourly": [list(r) for r in hourly], "daily": [list(r) for r in daily]}


if __name__ == "__main__":
    print(json.dumps(dump(sys.argv[1], sys.argv[2])))
