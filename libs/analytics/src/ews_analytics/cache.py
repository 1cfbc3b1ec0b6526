"""Answers of past periods, kept while the rows they were computed from stay the same.

A past day, month, year or decade is asked again and again (the pages, the Data table, integrations
polling the API) and its answer changes only when rows inside it change: a late or imported reading,
``ews replay``, a rebuild, a restore (a tariff change does not: stored hours keep their cost, and the
standing charges are computed from the site on every request). ClickHouse says when that can have
happened: a table's data is its set of *active parts*, immutable. An insert adds a part, a merge
replaces parts by one covering their block numbers with the same rows, TRUNCATE removes parts (a
mutation would rewrite them: the project runs none, and a rewritten part does not count as covering).

``cached_query`` for a period over before today reads the table's active parts (``system.parts``)
*before* running the query and keeps the rows with that list. Asked again with the same SQL and
parameters:

- nothing written by this process since (``Store.writes`` unchanged) on chDB, where no other process
  can write: the rows are still the answer, and no SQL runs at all;
- otherwise, the same parts: still the answer;
- other parts, but every part that left is covered by a merged one, and no row of a part added since
  lies in the query's span (one ``count()`` over the new parts only, pruned by ``_part``): still the
  answer — what keeps a past period while the aggregator writes the current hour;
- otherwise the query runs again. A key whose answer just changed is marked volatile (a period being
  back-filled): it skips the ``count()`` step until an answer equals the previous one again.

The parts are read before the rows, so a part added in between is "new" next time (checked, never
taken as seen). The same on chDB and a ClickHouse server, whoever writes (aggregator, replay, a restore
in another process); a request running while a TRUNCATE happens may get the answer from before it.
A current period (today, this month, …) is kept on chDB only while nothing at all is written (the first
step above; on a live site that is at most the aggregator's half-second batch): no parts are read for it,
as the next write almost always lands in it. Bounded (``MAX_ENTRIES`` keys, LRU); ``QUERY_CACHE.enabled = False`` turns it off (the benchmark
measures both paths); a store without ``dsn`` (a test double) or that cannot read ``system.parts`` is
queried directly.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

from ews_contracts.store import Store

from .schema import check_database

log = logging.getLogger("ews.analytics.cache")

MAX_ENTRIES = 512
MAX_ROWS = 20_000  # bigger answers are not kept

_PARTS_SQL = (
    "SELECT name, path, partition_id, min_block_number, max_block_number, level, data_version, rows, "
    "toUnixTimestamp(modification_time) FROM system.parts "
    "WHERE database = {__db:String} AND table = {__table:String} AND active"
)


class Part(NamedTuple):
    name: str
    path: str  # <table directory (the table's UUID on Atomic databases)>/<name>/
    partition: str
    min_block: int
    max_block: int
    level: int
    data_version: int
    rows: int
    modified: int

    @property
    def table_dir(self) -> str:
        return self.path.rstrip("/").rpartition("/")[0]

    def covers(self, other: Part) -> bool:
        """A merge of ``other`` (and maybe more): same table and partition, its block range inside
        ours, a higher level, and never mutated (data_version = the first block)."""
        return (
            self.table_dir == other.table_dir
            and self.partition == other.partition
            and self.min_block <= other.min_block
            and self.max_block >= other.max_block
            and self.level > other.level
            and self.data_version == self.min_block
        )


@dataclass
class _Entry:
    parts: frozenset[Part] | None  # None: kept only while nothing is written (a current period)
    rows: list[tuple]
    writes: int  # Store.writes when ``parts`` were read
    volatile: bool = False


class QueryCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.enabled = True
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._refused: set[str] = set()  # DSNs whose system.parts could not be read
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._entries.clear()

    async def query(
        self,
        store: Store,
        database: str,
        table: str,
        sql: str,
        where: str,
        params: dict[str, Any],
        current: bool = False,
    ) -> list[tuple]:
        """``store.query(sql, params)``, from the cache when valid. ``sql`` reads ``database.table``
        only, and ``where`` is its WHERE condition (same parameters): the rows it depends on. ``current``
        (a period not over, written to every half second on a live site): kept only while nothing at all
        is written, on chDB (no parts are read: the next write makes the answer stale anyway)."""
        dsn = getattr(store, "dsn", None)
        if not self.enabled or not isinstance(dsn, str) or dsn in self._refused:
            return await store.query(sql, params)
        chdb = isinstance(store, Store) and store.is_chdb
        if current and not chdb:
            return await store.query(sql, params)
        key = (dsn, sql, _freeze(params))
        writes = Store.writes
        entry = self._entries.get(key)
        if entry is not None and entry.writes == writes and chdb:
            # nothing written in this process since the parts were read, and with chDB no other
            # process writes: still the answer, without asking the engine
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.rows
        if current:
            self.misses += 1
            rows = await store.query(sql, params)
            self._keep(key, _Entry(None, rows, writes))
            return rows
        try:
            parts = await _parts(store, database, table)
        except Exception as exc:  # e.g. no access to system.parts: do without the cache
            rows = await store.query(sql, params)  # raises when the store itself is the problem
            self._refused.add(dsn)
            log.warning("consumption answers are not cached: system.parts cannot be read (%s)", exc)
            return rows
        if (
            entry is not None
            and entry.parts is not None
            and await self._still_valid(store, database, table, where, params, entry, parts)
        ):
            entry.writes = writes
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.rows
        self.misses += 1
        rows = await store.query(sql, params)
        volatile = entry is not None and rows != entry.rows
        self._keep(key, _Entry(parts, rows, writes, volatile))
        return rows

    def _keep(self, key: tuple, entry: _Entry) -> None:
        if len(entry.rows) <= MAX_ROWS:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    @staticmethod
    async def _still_valid(
        store: Store,
        database: str,
        table: str,
        where: str,
        params: dict[str, Any],
        entry: _Entry,
        parts: frozenset[Part],
    ) -> bool:
        if parts == entry.parts:
            return True
        if entry.volatile:
            return False
        gone = entry.parts - parts
        if any(not any(p.covers(g) for p in parts) for g in gone):
            return False  # truncated, dropped, rewritten: not a merge
        known = sorted(p.name for p in entry.parts)
        sql = (
            f"SELECT count() FROM {check_database(database)}.{table} "
            f"WHERE ({where}) AND _part NOT IN {{__known:Array(String)}}"
        )
        rows = await store.query(sql, {**params, "__known": known})
        if int(rows[0][0]):
            return False
        entry.parts = parts  # the rows are those of these parts too
        return True


async def _parts(store: Store, database: str, table: str) -> frozenset[Part]:
    rows = await store.query(_PARTS_SQL, {"__db": database, "__table": table})
    return frozenset(Part(*(str(v) if i < 3 else int(v) for i, v in enumerate(r))) for r in rows)


def _freeze(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


QUERY_CACHE = QueryCache()


async def cached_query(
    store: Store,
    database: str,
    table: str,
    sql: str,
    where: str,
    params: dict[str, Any],
    past: bool = True,
) -> list[tuple]:
    """``QUERY_CACHE.query``: a ``past`` period's answer kept while its rows stay the same, a current
    one's while nothing is written."""
    return await QUERY_CACHE.query(store, database, table, sql, where, params, current=not past)
