"""Versioned migrations of the analytics database (chDB or a ClickHouse server, same SQL).

``migrations/NNNN_name.sql`` files are applied in version order by :func:`migrate`; each applied
version is recorded in ``<database>.schema_migrations``. Statements are written to be idempotent
(``IF NOT EXISTS``), so two processes migrating at once, or a crash half-way through a file, are
harmless: the next run re-applies the unrecorded file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files

from ews_contracts.store import Store

log = logging.getLogger("ews.analytics.schema")

_DATABASE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

READINGS = "readings"
COUNTER_READINGS = "counter_readings"
HOURLY = "consumption_hourly"
DAILY = "consumption_daily"
MONTHLY = "consumption_monthly"
CHECKPOINTS = "aggregator_checkpoints"
ENERGY_HOURLY = HOURLY  # the table whose existence means "migrated" (gateway-api health)
SCHEMA_MIGRATIONS = "schema_migrations"

# Everything derived from the readings stream (``ews replay`` empties and rebuilds these).
PROJECTIONS: tuple[str, ...] = (READINGS, COUNTER_READINGS, HOURLY, DAILY, MONTHLY, CHECKPOINTS)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, database: str) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines() if not line.strip().startswith("--"))
        text = text.replace("{database}", database)
        return [s.strip() for s in text.split(";") if s.strip()]


def check_database(database: str) -> str:
    """The database name, validated (it is interpolated into SQL)."""
    if not _DATABASE.match(database):
        raise ValueError(
            f"invalid ClickHouse database name {database!r}: use letters, digits and '_' (CLICKHOUSE_DATABASE)"
        )
    return database


def table(database: str, name: str) -> str:
    return f"{check_database(database)}.{name}"


def migrations() -> list[Migration]:
    """Every bundled migration, in version order."""
    found: list[Migration] = []
    for entry in files("ews_analytics").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


async def applied_versions(store: Store, database: str) -> set[int]:
    rows = await store.query(f"SELECT DISTINCT version FROM {table(database, SCHEMA_MIGRATIONS)}")
    return {int(r[0]) for r in rows}


async def migrate(store: Store, database: str) -> list[int]:
    """Create the database and apply the missing migrations in order; returns the versions applied now."""
    check_database(database)
    await store.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    await store.command(
        f"CREATE TABLE IF NOT EXISTS {table(database, SCHEMA_MIGRATIONS)} "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = await applied_versions(store, database)
    applied: list[int] = []
    for migration in migrations():
        if migration.version in done:
            continue
        for statement in migration.statements(database):
            await store.command(statement)
        await store.insert(
            table(database, SCHEMA_MIGRATIONS),
            [(migration.version, migration.name, datetime.now(UTC))],
            ["version", "name", "applied_at"],
        )
        log.info("applied migration %04d_%s to %s", migration.version, migration.name, database)
        applied.append(migration.version)
    return applied


async def truncate_projections(store: Store, database: str) -> None:
    """Empty every table derived from the stream (the materialized views stay attached)."""
    for name in PROJECTIONS:
        await store.command(f"TRUNCATE TABLE IF EXISTS {table(database, name)}")
