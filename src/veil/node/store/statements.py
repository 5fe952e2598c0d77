"""The statements a store write runs: prebuilt SQLAlchemy Core statements and their sqlite3
twins, two executors (Core for any dialect, a raw sqlite3 cursor) and :func:`apply_batch`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import Connection

from veil.node.store.base import Batch, DatasetRow
from veil.node.store.schema import (
    BLOB_COLUMN,
    TABLE_KEY,
    assets_table,
    datasets_table,
    dp_table,
    metadata,
    objects_table,
    requests_table,
    users_table,
)

__all__ = [
    "CHUNK",
    "SELECT_ALL",
    "CoreWriter",
    "SQLiteWriter",
    "apply_batch",
    "chunks",
    "row_params",
]

CHUNK = 5_000  # ids per IN (...) clause: under every backend's bound-parameter limit

# Core statements, built once: a node writes once per message, so per-call overhead matters.
_IDS: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
_INSERT = {t.name: sa.insert(t) for t in metadata.sorted_tables}
_DELETE = {
    n: sa.delete(metadata.tables[n]).where(metadata.tables[n].c[k].in_(_IDS))
    for n, k in TABLE_KEY.items()
}
_DELETE_RETURNING = {
    n: _DELETE[n].returning(metadata.tables[n].c[c]) for n, c in BLOB_COLUMN.items()
}
_SELECT_BLOBS = {
    n: sa.select(metadata.tables[n].c[c]).where(
        metadata.tables[n].c[TABLE_KEY[n]].in_(_IDS), metadata.tables[n].c[c].is_not(None)
    )
    for n, c in BLOB_COLUMN.items()
}
SELECT_ALL = {
    "users": sa.select(users_table).order_by(users_table.c.id),
    "objects": sa.select(objects_table).order_by(objects_table.c.created, objects_table.c.id),
    "dataset_assets": sa.select(assets_table).order_by(
        assets_table.c.dataset, assets_table.c.position
    ),
    "datasets": sa.select(
        datasets_table.c.name, datasets_table.c.description, datasets_table.c.created
    ).order_by(datasets_table.c.created, datasets_table.c.name),
    "requests": sa.select(requests_table).order_by(requests_table.c.id),
    "dp_state": sa.select(dp_table).order_by(dp_table.c.key),
}

# The same for the sqlite3 cursor: columns in order (an autoincrement key left out), and
# which of them hold JSON (stored as ``json.dumps`` text, as Core's JSON type stores it).
_quote = sqlite_dialect().identifier_preparer.quote
_COLUMNS = {
    t.name: [c.key for c in t.columns if not (c.primary_key and c.autoincrement is True)]
    for t in metadata.sorted_tables
}
_JSON_AT = {
    n: [i for i, k in enumerate(cols) if isinstance(metadata.tables[n].c[k].type, sa.JSON)]
    for n, cols in _COLUMNS.items()
}
_SQLITE_INSERT = {
    n: f"INSERT INTO {_quote(n)} ({', '.join(map(_quote, cols))}) VALUES ({', '.join('?' * len(cols))})"
    for n, cols in _COLUMNS.items()
}
_SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


def row_params(row: Any, skip: str = "") -> dict[str, Any]:
    """A dataclass row as statement parameters (its fields are the table's columns)."""
    return {f: getattr(row, f) for f in row.__slots__ if f != skip}


def chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


class CoreWriter:
    """Runs a write's statements through SQLAlchemy Core: any dialect."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(_INSERT[table], rows)

    def delete(self, table: str, keys: list[Any]) -> list[str]:
        """Delete rows by key; returns the blob files they named."""
        found: list[str] = []
        for chunk in chunks(keys):
            params = {"ids": chunk}
            if table not in BLOB_COLUMN:
                self.conn.execute(_DELETE[table], params)
            elif self.conn.dialect.delete_returning:
                res = self.conn.execute(_DELETE_RETURNING[table], params)
                found.extend(name for (name,) in res if name)
            else:
                found.extend(name for (name,) in self.conn.execute(_SELECT_BLOBS[table], params))
                self.conn.execute(_DELETE[table], params)
        return found


class SQLiteWriter:
    """The same statements on a sqlite3 cursor: a small write costs half as much as via Core."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        cols, json_at = _COLUMNS[table], _JSON_AT[table]
        params = []
        for r in rows:
            values = [r[k] for k in cols]
            for i in json_at:
                values[i] = json.dumps(values[i])
            params.append(values)
        self.cursor.executemany(_SQLITE_INSERT[table], params)

    def delete(self, table: str, keys: list[Any]) -> list[str]:
        """Delete rows by key; returns the blob files they named."""
        found: list[str] = []
        blob = BLOB_COLUMN.get(table)
        for chunk in chunks(keys):
            marks = ", ".join("?" * len(chunk))
            where = f"FROM {_quote(table)} WHERE {_quote(TABLE_KEY[table])} IN ({marks})"
            if blob is None:
                self.cursor.execute(f"DELETE {where}", chunk)
            elif _SQLITE_RETURNING:
                rows = self.cursor.execute(
                    f"DELETE {where} RETURNING {_quote(blob)}", chunk
                ).fetchall()
                found.extend(name for (name,) in rows if name)
            else:
                rows = self.cursor.execute(f"SELECT {_quote(blob)} {where}", chunk).fetchall()
                found.extend(name for (name,) in rows if name)
                self.cursor.execute(f"DELETE {where}", chunk)
        return found


def apply_batch(
    ex: CoreWriter | SQLiteWriter,
    batch: Batch,
    objects: list[dict[str, Any]],
    datasets: list[DatasetRow],
    assets: list[dict[str, Any]],
) -> list[str]:
    """Run a batch's statements (upsert = delete + insert); returns blob files now unnamed."""
    old_files: list[str] = []
    gone = [*batch.objects, *(i for i in batch.deleted if i not in batch.objects)]
    if gone:
        old_files += ex.delete("objects", gone)
    if objects:
        ex.insert("objects", objects)
    if batch.users:
        users = {u.id: u for u in batch.users}  # the last one wins
        ex.delete("users", list(users))
        ex.insert("users", [row_params(u) for u in users.values()])
    if datasets:
        names = [d.name for d in datasets]
        old_files += ex.delete("dataset_assets", names)
        ex.delete("datasets", names)
        ex.insert("datasets", [row_params(d, skip="assets") for d in datasets])
        if assets:
            ex.insert("dataset_assets", assets)
    if batch.requests:
        requests = {r.id: r for r in batch.requests}  # written again when decided
        ex.delete("requests", list(requests))
        ex.insert("requests", [row_params(r) for r in requests.values()])
    if batch.audit:
        ex.insert("audit", [row_params(a) for a in batch.audit])
    if batch.dp:  # veil.dp state: upsert by key
        dp = {r.key: r for r in batch.dp}
        ex.delete("dp_state", list(dp))
        ex.insert("dp_state", [row_params(r) for r in dp.values()])
    return old_files
