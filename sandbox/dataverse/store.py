"""The lead rows: plain dicts keyed by leadid, secondary indexes, alternate-key indexes and an undo log.

A row holds only the attributes that were set plus the system columns (``leadid``, ``createdon``,
``modifiedon``, ``createdby``, ``modifiedby``, ``ownerid``, ``owneridtype``, ``statecode``,
``statuscode``, ``versionnumber``, ``fullname``); defaults and nulls are filled in when a row is
read. Strings from the same source are interned, so 100 000 leads take well under 500 MB.

Indexes (case-insensitive, like the SQL collation): ``emailaddress1`` and ``uni_applicantid``
(value → ids), every alternate key (value tuple → ids; rows with a null key part are not indexed,
as in a filtered unique index) and a sorted id list for keyset paging.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

INDEXED_COLUMNS = ("emailaddress1", "uni_applicantid")
_PENDING_LIMIT = 2000


def norm(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


class Transaction:
    """Undo log for a changeset: ``rollback`` restores every change recorded since ``begin``."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.closed = False

    def record(self, undo: Callable[[], None]) -> None:
        if not self.closed:
            self._undo.append(undo)

    def rollback(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self.closed = True

    def commit(self) -> None:
        self._undo.clear()
        self.closed = True


class LeadStore:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.indexes: dict[str, dict[Any, set[str]]] = {name: {} for name in INDEXED_COLUMNS}
        # alternate key schema name → (attributes, value tuple → ids)
        self.key_indexes: dict[str, tuple[list[str], dict[tuple, set[str]]]] = {}
        self._sorted: list[str] = []
        self._pending: list[str] = []
        self._version = 1_000_000

    # -- versions ----------------------------------------------------------------------
    def next_version(self) -> int:
        self._version += 1
        return self._version

    # -- ordering ----------------------------------------------------------------------
    def sorted_ids(self) -> list[str]:
        if self._pending:
            if len(self._pending) > _PENDING_LIMIT:
                self._sorted = sorted(self.rows)
            else:
                for row_id in self._pending:
                    bisect.insort(self._sorted, row_id)
            self._pending = []
        return self._sorted

    # -- index maintenance -------------------------------------------------------------
    def add_key_index(self, schema_name: str, attributes: list[str]) -> None:
        index: dict[tuple, set[str]] = {}
        for row_id, row in self.rows.items():
            key = self._key_tuple(row, attributes)
            if key is not None:
                index.setdefault(key, set()).add(row_id)
        self.key_indexes[schema_name] = (list(attributes), index)

    def drop_key_index(self, schema_name: str) -> None:
        self.key_indexes.pop(schema_name, None)

    def key_has_duplicates(self, schema_name: str) -> bool:
        _, index = self.key_indexes[schema_name]
        return any(len(ids) > 1 for ids in index.values())

    @staticmethod
    def _key_tuple(row: dict[str, Any], attributes: list[str]) -> tuple | None:
        values = []
        for name in attributes:
            value = row.get(name)
            if value is None:
                return None
            values.append(norm(value))
        return tuple(values)

    def _index(self, row_id: str, row: dict[str, Any]) -> None:
        for name, index in self.indexes.items():
            value = row.get(name)
            if value is not None:
                index.setdefault(norm(value), set()).add(row_id)
        for attributes, index in self.key_indexes.values():
            key = self._key_tuple(row, attributes)
            if key is not None:
                index.setdefault(key, set()).add(row_id)

    def _unindex(self, row_id: str, row: dict[str, Any]) -> None:
        for name, index in self.indexes.items():
            value = row.get(name)
            if value is not None:
                ids = index.get(norm(value))
                if ids is not None:
                    ids.discard(row_id)
                    if not ids:
                        del index[norm(value)]
        for attributes, index in self.key_indexes.values():
            key = self._key_tuple(row, attributes)
            if key is not None:
                ids = index.get(key)
                if ids is not None:
                    ids.discard(row_id)
                    if not ids:
                        del index[key]

    # -- lookups -----------------------------------------------------------------------
    def get(self, row_id: str) -> dict[str, Any] | None:
        return self.rows.get(row_id)

    def find_by_key(self, schema_name: str, values: tuple) -> set[str]:
        _, index = self.key_indexes[schema_name]
        return set(index.get(tuple(norm(v) for v in values), ()))

    def lookup(self, column: str, values: Iterable[Any]) -> set[str] | None:
        index = self.indexes.get(column)
        if index is None:
            return None
        result: set[str] = set()
        for value in values:
            result |= index.get(norm(value), set())
        return result

    def iter_rows(self, ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        rows = self.rows
        for row_id in ids:
            row = rows.get(row_id)
            if row is not None:
                yield row

    # -- writes (each recorded in the transaction, when there is one) ------------------
    def insert(self, row: dict[str, Any], txn: Transaction | None = None) -> None:
        row_id = row["leadid"]
        self.rows[row_id] = row
        self._index(row_id, row)
        self._pending.append(row_id)
        if txn is not None:
            txn.record(lambda: self._remove(row_id))

    def replace(self, row: dict[str, Any], txn: Transaction | None = None) -> None:
        row_id = row["leadid"]
        old = self.rows[row_id]
        self._unindex(row_id, old)
        self.rows[row_id] = row
        self._index(row_id, row)
        if txn is not None:
            txn.record(lambda: self._restore(old))

    def delete(self, row_id: str, txn: Transaction | None = None) -> dict[str, Any] | None:
        old = self._remove(row_id)
        if old is not None and txn is not None:
            txn.record(lambda: self._restore_deleted(old))
        return old

    def clear(self) -> None:
        self.rows.clear()
        for index in self.indexes.values():
            index.clear()
        for _, index in self.key_indexes.values():
            index.clear()
        self._sorted = []
        self._pending = []

    def _remove(self, row_id: str) -> dict[str, Any] | None:
        old = self.rows.pop(row_id, None)
        if old is None:
            return None
        self._unindex(row_id, old)
        if row_id in self._pending:
            self._pending.remove(row_id)
        else:
            pos = bisect.bisect_left(self._sorted, row_id)
            if pos < len(self._sorted) and self._sorted[pos] == row_id:
                del self._sorted[pos]
        return old

    def _restore(self, old: dict[str, Any]) -> None:
        row_id = old["leadid"]
        current = self.rows.get(row_id)
        if current is not None:
            self._unindex(row_id, current)
            self.rows[row_id] = old
            self._index(row_id, old)
        else:
            self._restore_deleted(old)

    def _restore_deleted(self, old: dict[str, Any]) -> None:
        row_id = old["leadid"]
        if row_id in self.rows:
            self._restore(old)
            return
        self.rows[row_id] = old
        self._index(row_id, old)
        self._pending.append(row_id)
