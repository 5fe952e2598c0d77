"""SQLStore: a node's state in SQL (SQLite by default, PostgreSQL by URL), large payloads as files."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from veil.errors import VersionMismatch
from veil.node.store.base import (
    AuditRow,
    Batch,
    DatasetRow,
    DPRow,
    ObjectRow,
    RequestRow,
    Snapshot,
    Store,
    UserRow,
)

__all__ = ["SCHEMA_VERSION", "SQLStore"]

#: The layout of the tables below and of what they hold; bump it (and add a migration)
#: when either changes. 2: ``objects.extra``, ``requests.digest``. 3: no new columns, but
#: an object's payload may now be a view of another object's tensor or an optimizer
#: (``veil.node.aliasing``), which a veil reading up to version 2 cannot load.
SCHEMA_VERSION = 3
#: Columns added since version 1: (table, column, SQL type, default), added by ALTER TABLE.
_ADDED = [("objects", "extra", "JSON", None), ("requests", "digest", "VARCHAR(64)", "''")]

#: Blob files are ``<object id>-<16 hex>.obj`` (a payload) or ``.mock`` (a dataset asset's mock);
#: a fresh name per write, so a rolled-back write never touches a file a committed row names.
_BLOB_NAME = re.compile(r"^\d+-[0-9a-f]{16}\.(obj|mock)(\.tmp)?$")
_CHUNK = 5_000  # ids per IN (...) clause: under every backend's bound-parameter limit
#: A file in the blob directory naming the database it belongs to (its ``store_id``), so
#: two databases never share one directory (each would delete the other's files).
_MARKER = ".veil-store"

metadata = sa.MetaData()

meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
users_table = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
)
objects_table = sa.Table(
    "objects",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("owner", sa.Integer, nullable=False),
    sa.Column("private", sa.Boolean, nullable=False),
    sa.Column("approved", sa.JSON, nullable=False),
    sa.Column("sources", sa.JSON, nullable=False),
    sa.Column("asset_of", sa.Text, nullable=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=True),  # inline, below inline_limit
    sa.Column("blob", sa.String(64), nullable=True),  # else the file in blob_dir
    sa.Column("extra", sa.JSON, nullable=True),  # schema 2: label, error, alias
)
datasets_table = sa.Table(
    "datasets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
)
assets_table = sa.Table(
    "dataset_assets",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("object_id", sa.BigInteger, nullable=False),
    sa.Column("mock", sa.LargeBinary, nullable=True),
    sa.Column("mock_blob", sa.String(64), nullable=True),
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("bounds", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
)
requests_table = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("object_id", sa.BigInteger, nullable=False),
    sa.Column("requester", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created", sa.Double, nullable=False),
    sa.Column("decided_by", sa.Integer, nullable=True),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("digest", sa.String(64), nullable=True),  # schema 2
)
audit_table = sa.Table(
    "audit",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),  # SQLite: the rowid
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("user", sa.Text, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("objects", sa.JSON, nullable=False),
    sa.Column("sources", sa.JSON, nullable=False),
)

# veil.dp: budgets, ledger releases and dataset subject counts (keyed JSON values)
dp_table = sa.Table(
    "dp_state",
    metadata,
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("value", sa.JSON, nullable=False),
)

#: Each table's key (what an upsert or a delete matches) and the column naming a blob file.
_KEY = {
    "users": "id",
    "objects": "id",
    "datasets": "name",
    "dataset_assets": "dataset",
    "requests": "id",
    "dp_state": "key",
}
_BLOB_COLUMN = {"objects": "blob", "dataset_assets": "mock_blob"}

# Core statements, built once: a node writes once per message, so per-call overhead matters.
_IDS: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
_INSERT = {t.name: sa.insert(t) for t in metadata.sorted_tables}
_DELETE = {
    n: sa.delete(metadata.tables[n]).where(metadata.tables[n].c[k].in_(_IDS))
    for n, k in _KEY.items()
}
_DELETE_RETURNING = {
    n: _DELETE[n].returning(metadata.tables[n].c[c]) for n, c in _BLOB_COLUMN.items()
}
_SELECT_BLOBS = {
    n: sa.select(metadata.tables[n].c[c]).where(
        metadata.tables[n].c[_KEY[n]].in_(_IDS), metadata.tables[n].c[c].is_not(None)
    )
    for n, c in _BLOB_COLUMN.items()
}
_SELECT_ALL = {
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


def _params(row: Any, skip: str = "") -> dict[str, Any]:
    """A dataclass row as statement parameters (its fields are the table's columns)."""
    return {f: getattr(row, f) for f in row.__slots__ if f != skip}


def _nbytes(payload: bytes | bytearray | memoryview) -> int:
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class _Core:
    """Runs a write's statements through SQLAlchemy Core: any dialect."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(_INSERT[table], rows)

    def delete(self, table: str, keys: list[Any]) -> list[str]:
        """Delete rows by key; returns the blob files they named."""
        found: list[str] = []
        for chunk in _chunks(keys):
            params = {"ids": chunk}
            if table not in _BLOB_COLUMN:
                self.conn.execute(_DELETE[table], params)
            elif self.conn.dialect.delete_returning:
                res = self.conn.execute(_DELETE_RETURNING[table], params)
                found.extend(name for (name,) in res if name)
            else:
                found.extend(name for (name,) in self.conn.execute(_SELECT_BLOBS[table], params))
                self.conn.execute(_DELETE[table], params)
        return found


class _SQLiteCursor:
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
        blob = _BLOB_COLUMN.get(table)
        for chunk in _chunks(keys):
            marks = ", ".join("?" * len(chunk))
            where = f"FROM {_quote(table)} WHERE {_quote(_KEY[table])} IN ({marks})"
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


class SQLStore(Store):
    """A node's users, objects, datasets, requests and audit log in a SQL database.

    Every :meth:`write` is one transaction. Payloads of ``inline_limit`` bytes or more are
    files in ``blob_dir``, written and fsynced *before* the transaction commits (each write
    gets a fresh file name, so a failed write never touches a file a committed row names);
    files of replaced or deleted objects are removed after the commit. :meth:`stage`
    writes such a file ahead of the write that names it (a node does that outside its
    lock); until then no :meth:`load` sweeps it away. SQLite runs in WAL
    mode with ``synchronous=NORMAL``: everything acknowledged survives a killed process.

    Args:
        url: a SQLAlchemy database URL: ``sqlite:///path/node.db``, ``sqlite://`` (in
            memory), ``postgresql+psycopg://user:password@host/db``.
        blob_dir: where large payloads go. Default: ``<db file>.blobs/`` beside a SQLite
            file, a temporary directory (removed by :meth:`close`) for in-memory SQLite,
            and ``./veil-blobs`` otherwise (give one every node process can reach).
        inline_limit: payloads smaller than this many bytes are stored in the database.

    Raises:
        ValueError: a malformed URL or ``inline_limit``, or a ``blob_dir`` that belongs to
            another database.
        ImportError: the URL's database driver is not installed.
        FileNotFoundError: the SQLite file's directory does not exist.
        VersionMismatch: the database was written by a newer veil.

    Example:
        >>> store = SQLStore("sqlite://")
        >>> store.write(Batch(
        ...     users=[UserRow(1, "me@clinic.org", "owner", "", "hash", 0.0)],
        ...     audit=[AuditRow(1.0, "me@clinic.org", "login")],
        ... ))
        >>> [u.email for u in store.load().users], [a.action for a in store.audit(10)]
        (['me@clinic.org'], ['login'])
        >>> store.close()
    """

    def __init__(
        self, url: str, *, blob_dir: str | None = None, inline_limit: int = 1 << 20
    ) -> None:
        if not isinstance(inline_limit, int) or inline_limit < 0:
            raise ValueError(
                f"inline_limit must be an int >= 0 (bytes), got {inline_limit!r}; the default "
                "1 MiB keeps small payloads in the database and large ones as files"
            )
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError:
            raise ValueError(
                "cannot parse the database URL; use sqlite:///path/node.db or "
                "postgresql+psycopg://user:password@host/dbname"
            ) from None  # the URL may hold a password: keep it out of logs
        self.url: URL = parsed
        self.inline_limit = inline_limit
        self._closed = False
        self._lock = threading.Lock()  # guards the lazily created blob directory
        self._temp_blob_dir = False
        self._claimed = False
        self._write_lock = threading.Lock()
        self._writer: Any = None  # SQLite: a connection kept for writes (see _write_sqlite)
        self._store_id = ""
        self._staged: set[str] = set()  # blob files written ahead, not yet named by a row
        self._sqlite = parsed.get_backend_name() == "sqlite"
        memory = self._sqlite and parsed.database in (None, "", ":memory:")
        memory = memory or (self._sqlite and parsed.query.get("mode") == "memory")

        if blob_dir is not None:
            self._blob_dir: Path | None = Path(blob_dir).resolve()
        elif memory:
            self._blob_dir = None  # a temporary directory, made on first use
        elif self._sqlite:
            assert parsed.database is not None
            db_path = Path(parsed.database).resolve()
            if not db_path.parent.is_dir():
                raise FileNotFoundError(
                    f"directory {str(db_path.parent)!r} for database {str(db_path)!r} does not "
                    "exist; create it first or fix the URL"
                )
            self._blob_dir = db_path.with_name(db_path.name + ".blobs")
        else:
            self._blob_dir = Path("veil-blobs").resolve()

        kwargs: dict[str, Any] = {}
        if memory:
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        elif not self._sqlite:
            kwargs = {"pool_pre_ping": True}
        try:
            self._engine: Engine = sa.create_engine(parsed, **kwargs)
        except ImportError as exc:
            extra = " (pip install 'veil[postgres]')" if "postgres" in parsed.drivername else ""
            raise ImportError(
                f"the database driver for {parsed.drivername!r} is not installed ({exc}); "
                f"install it{extra}"
            ) from exc
        except sa.exc.ArgumentError as exc:
            raise ValueError(f"unsupported database URL {self._safe_url()!r}: {exc}") from exc
        #: Write through a sqlite3 connection of our own (same rows, half of Core's overhead).
        self._fast = self._engine.dialect.driver == "pysqlite"
        if self._sqlite:
            sa.event.listen(self._engine, "connect", _sqlite_pragmas(memory))
        try:
            self._init_schema()
            if self._blob_dir is not None and self._blob_dir.is_dir():
                self._claim(self._blob_dir)
        except BaseException:
            self._engine.dispose()
            raise

    # ------------------------------------------------------------------ setup
    def _safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def _init_schema(self) -> None:
        with self._engine.begin() as conn:
            if sa.inspect(conn).has_table("meta"):
                row = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).first()
                version = int(row[0]) if row is not None else None
                if version is not None and version > SCHEMA_VERSION:
                    raise VersionMismatch(
                        f"database {self._safe_url()!r} has schema version {version}, written by "
                        f"a newer veil; this veil reads up to version {SCHEMA_VERSION}. Upgrade "
                        "veil (pip install -U veil), or point --db at another database"
                    )
                if version is not None and version < SCHEMA_VERSION:
                    self._migrate(conn)
            metadata.create_all(conn)
            rows = conn.execute(sa.select(meta_table.c.key, meta_table.c.value))
            meta = {key: value for key, value in rows}
            new = {"schema_version": str(SCHEMA_VERSION), "store_id": secrets.token_hex(16)}
            missing = [{"key": k, "value": v} for k, v in new.items() if k not in meta]
            if missing:
                conn.execute(sa.insert(meta_table), missing)
            self._store_id = meta.get("store_id", new["store_id"])

    def _migrate(self, conn: Connection) -> None:
        """Bring a database of an older schema up to this one (columns added since)."""
        inspector = sa.inspect(conn)
        for table, column, sql_type, default in _ADDED:
            if column not in {c["name"] for c in inspector.get_columns(table)}:
                extra = f" DEFAULT {default}" if default is not None else ""
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}{extra}"))
        conn.execute(
            sa.update(meta_table)
            .where(meta_table.c.key == "schema_version")
            .values(value=str(SCHEMA_VERSION))
        )

    def _claim(self, directory: Path) -> None:
        """Mark ``directory`` as this database's, or refuse it if another's."""
        marker = directory / _MARKER
        try:
            owner = marker.read_text().strip()
        except FileNotFoundError:
            directory.mkdir(parents=True, exist_ok=True)
            marker.write_text(self._store_id + "\n")
            owner = self._store_id
        if owner != self._store_id:
            raise ValueError(
                f"blob directory {str(directory)!r} belongs to another database (store id "
                f"{owner}, this one is {self._store_id}); give each database its own blob_dir"
            )
        self._claimed = True

    @property
    def blob_dir(self) -> Path:
        """Where payloads of ``inline_limit`` bytes or more are kept (created on first use)."""
        with self._lock:
            if self._blob_dir is None:
                self._blob_dir = Path(tempfile.mkdtemp(prefix="veil-blobs-"))
                self._temp_blob_dir = True
            return self._blob_dir

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"this SQLStore ({self._safe_url()}) is closed; open a new one")

    # ------------------------------------------------------------------ blob files
    def _write_blob(self, oid: int, suffix: str, *parts: bytes | bytearray | memoryview,
                    name: str | None = None) -> str:  # fmt: skip
        """Write the concatenated ``parts`` durably under a fresh name and return the name."""
        directory = self.blob_dir
        if not self._claimed:
            self._claim(directory)
        name = name or f"{oid}-{secrets.token_hex(8)}.{suffix}"
        path = directory / name
        tmp = directory / (name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)  # large buffers go straight to the OS: no copy
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if os.name == "posix":  # make the rename itself durable
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return name

    def _blob_path(self, name: str) -> Path:
        if not _BLOB_NAME.match(name):
            raise ValueError(f"database {self._safe_url()!r} names an invalid blob file {name!r}")
        return self.blob_dir / name

    def _read_blob(self, name: str, what: str) -> bytearray:
        path = self._blob_path(name)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                buf = bytearray(size)
                view = memoryview(buf)
                got = 0
                while got < size:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{what} is stored in {str(path)!r}, which is missing; restore the blob "
                f"directory {str(self.blob_dir)!r} from a backup (or pass blob_dir=...)"
            ) from exc
        if got != size:
            raise OSError(f"{str(path)!r} changed while being read; try again")
        return buf

    def _remove_blobs(self, names: Iterable[str | None]) -> None:
        directory = self._blob_dir
        if directory is None:
            return
        for name in names:
            if name and _BLOB_NAME.match(name):
                try:
                    (directory / name).unlink(missing_ok=True)
                except OSError:  # pragma: no cover - left for the sweep in load()
                    pass

    def _sweep(self, referenced: set[str]) -> None:
        """Remove blob files no row names (left by a process killed mid-write)."""
        directory = self._blob_dir
        if directory is None or not directory.is_dir():
            return
        self._claim(directory)
        with self._lock:
            referenced = referenced | self._staged  # being written, or about to be named
        for entry in os.scandir(directory):
            name = entry.name.removesuffix(".tmp")
            if entry.is_file() and _BLOB_NAME.match(entry.name) and name not in referenced:
                self._remove_blobs([entry.name])

    # ------------------------------------------------------------------ Store API
    def stage(self, oid: int, parts: Sequence[bytes | bytearray | memoryview]) -> str | None:
        """Write a payload of ``inline_limit`` bytes or more to its blob file now (fsynced),
        for a later :meth:`write` whose ``ObjectRow.blob`` names it; None if it is smaller.

        Example:
            >>> store = SQLStore("sqlite://", inline_limit=4)
            >>> name = store.stage(7, [b"VL", b"payload"])
            >>> row = ObjectRow(7, "tensor", 1, False, [], [], None, "", 0.0, b"", blob=name)
            >>> store.write(Batch(objects={7: row}))
            >>> bytes(store.load().objects[0].payload)
            b'VLpayload'
            >>> store.close()
        """
        self._check_open()
        if sum(_nbytes(p) for p in parts) < self.inline_limit:
            return None
        name = f"{oid}-{secrets.token_hex(8)}.obj"
        with self._lock:
            self._staged.add(name)
        try:
            return self._write_blob(oid, "obj", *parts, name=name)
        except BaseException:
            with self._lock:
                self._staged.discard(name)
            raise

    def discard(self, staged: str) -> None:
        """Remove a staged blob file that no write named."""
        with self._lock:
            self._staged.discard(staged)
        self._remove_blobs([staged])

    def write(self, batch: Batch) -> None:
        """Apply one message's changes in one transaction.

        Blob files are written (and fsynced) first; if anything fails, the transaction
        rolls back, the new files are removed and the error propagates. Files the
        committed transaction no longer names are removed after the commit.
        """
        self._check_open()
        if not batch:
            return
        new_files: list[str] = []
        staged = [row.blob for row in batch.objects.values() if row.blob is not None]
        try:
            objects = [self._object_params(row, new_files) for row in batch.objects.values()]
            datasets = list({d.name: d for d in batch.datasets}.values())  # the last one wins
            assets = [
                self._asset_params(ds.name, i, asset, new_files)
                for ds in datasets
                for i, asset in enumerate(ds.assets)
            ]
            if self._fast:
                old_files = self._write_sqlite(batch, objects, datasets, assets)
            else:
                with self._engine.begin() as conn:
                    old_files = _apply(_Core(conn), batch, objects, datasets, assets)
        except BaseException:
            self._remove_blobs(new_files)
            raise
        finally:
            if staged:
                with self._lock:
                    self._staged.difference_update(staged)  # named by a row now, or removed
        self._remove_blobs(old_files)

    def _write_sqlite(
        self,
        batch: Batch,
        objects: list[dict[str, Any]],
        datasets: list[DatasetRow],
        assets: list[dict[str, Any]],
    ) -> list[str]:
        """One transaction on the store's own sqlite3 connection (kept open for writes)."""
        with self._write_lock:
            if self._writer is None:
                self._writer = self._engine.raw_connection()  # pragmas set on connect
            raw = self._writer.driver_connection
            cursor = raw.cursor()
            try:
                if not raw.in_transaction:  # whatever sqlite3's transaction mode
                    cursor.execute("BEGIN IMMEDIATE")
                old_files = _apply(_SQLiteCursor(cursor), batch, objects, datasets, assets)
                raw.commit()
            except BaseException as exc:
                try:
                    raw.rollback()
                except sqlite3.Error:  # the connection is unusable: the next write opens another
                    self._writer.invalidate()
                    self._writer = None
                if isinstance(exc, sqlite3.Error):  # raise what Core raises (IntegrityError...)
                    raise sa.exc.DBAPIError.instance(
                        "SQLStore.write", None, exc, sqlite3.Error
                    ) from exc
                raise
            finally:
                cursor.close()
        return old_files

    def _object_params(self, row: ObjectRow, new_files: list[str]) -> dict[str, Any]:
        params = _params(row)
        if row.blob is not None:  # written by stage(): the row only names it
            self._blob_path(row.blob)  # a valid name of ours
            new_files.append(row.blob)  # removed if this write fails
            params["payload"] = None
        elif _nbytes(row.payload) >= self.inline_limit:
            params["blob"] = self._write_blob(row.id, "obj", row.payload)
            new_files.append(params["blob"])
            params["payload"] = None
        return params

    def _asset_params(
        self, dataset: str, position: int, asset: tuple[Any, ...], new_files: list[str]
    ) -> dict[str, Any]:
        name, oid, mock, columns, bounds, description = asset
        blob = None
        if _nbytes(mock) >= self.inline_limit:
            blob = self._write_blob(oid, "mock", mock)
            new_files.append(blob)
            mock = None
        return {
            "dataset": dataset,
            "position": position,
            "name": name,
            "object_id": oid,
            "mock": mock,
            "mock_blob": blob,
            "columns": list(columns),
            "bounds": [list(b) for b in bounds],
            "description": description,
        }

    def load(self) -> Snapshot:
        """Every row, objects with their payloads read back; removes unreferenced blob files."""
        self._check_open()
        referenced: set[str] = set()
        with self._engine.connect() as conn:
            users = [UserRow(**r._mapping) for r in conn.execute(_SELECT_ALL["users"])]
            objects = [
                self._object_row(r, referenced) for r in conn.execute(_SELECT_ALL["objects"])
            ]
            assets: dict[str, list[Any]] = {}
            for r in conn.execute(_SELECT_ALL["dataset_assets"]):
                assets.setdefault(r.dataset, []).append(self._asset(r, referenced))
            datasets = [
                DatasetRow(**r._mapping, assets=assets.get(r.name, []))
                for r in conn.execute(_SELECT_ALL["datasets"])
            ]
            requests = [_request_row(r) for r in conn.execute(_SELECT_ALL["requests"])]
            dp = [DPRow(**r._mapping) for r in conn.execute(_SELECT_ALL["dp_state"])]
        self._sweep(referenced)
        return Snapshot(users, objects, datasets, requests, dp)

    def load_keys(
        self,
        *,
        objects: Collection[int] = (),
        users: Collection[int] = (),
        datasets: Collection[str] = (),
        requests: Collection[int] = (),
        rows: Collection[str] = (),
    ) -> Snapshot:
        """The rows with these keys (those that exist), read by key in one transaction; blob
        files are read back but never swept (a node is running).

        Example:
            >>> store = SQLStore("sqlite://")
            >>> store.write(Batch(users=[UserRow(1, "a@b.org", "owner", "", "h", 0.0)]))
            >>> [u.email for u in store.load_keys(users=[1, 2]).users]
            ['a@b.org']
            >>> store.close()
        """
        self._check_open()
        seen: set[str] = set()

        def select(conn: Connection, table: sa.Table, column: str, keys: Collection[Any]) -> Any:
            for chunk in _chunks(sorted(set(keys))):
                yield from conn.execute(sa.select(table).where(table.c[column].in_(chunk)))

        with self._engine.connect() as conn:
            snap = Snapshot(
                [UserRow(**r._mapping) for r in select(conn, users_table, "id", users)],
                [self._object_row(r, seen) for r in select(conn, objects_table, "id", objects)],
                [],
                [_request_row(r) for r in select(conn, requests_table, "id", requests)],
                [DPRow(**r._mapping) for r in select(conn, dp_table, "key", rows)],
            )
            assets: dict[str, list[Any]] = {}
            found = sorted(
                select(conn, assets_table, "dataset", datasets), key=lambda r: r.position
            )
            for r in found:
                assets.setdefault(r.dataset, []).append(self._asset(r, seen))
            snap.datasets = [
                DatasetRow(r.name, r.description, r.created, assets.get(r.name, []))
                for r in select(conn, datasets_table, "name", datasets)
            ]
        snap.objects.sort(key=lambda o: (o.created, o.id))
        return snap

    def _object_row(self, r: Any, referenced: set[str]) -> ObjectRow:
        fields = dict(r._mapping)
        blob = fields.pop("blob")
        if blob is not None:
            referenced.add(blob)
            fields["payload"] = self._read_blob(blob, f"object {r.id}")
        fields.update(private=bool(r.private), approved=list(r.approved), extra=r.extra or {})
        return ObjectRow(**fields)

    def _asset(self, r: Any, referenced: set[str]) -> tuple[Any, ...]:
        mock = r.mock
        if r.mock_blob is not None:
            referenced.add(r.mock_blob)
            what = f"the mock of asset {r.name!r} of dataset {r.dataset!r}"
            mock = bytes(self._read_blob(r.mock_blob, what))
        bounds = [(float(lo), float(hi)) for lo, hi in r.bounds]
        return (r.name, r.object_id, mock, r.columns, bounds, r.description)

    def audit(self, limit: int) -> list[AuditRow]:
        """The newest ``limit`` audit entries, newest first."""
        self._check_open()
        if limit <= 0:
            return []
        t = audit_table
        with self._engine.connect() as conn:
            columns = [c for c in t.columns if c.key != "seq"]
            rows = conn.execute(sa.select(*columns).order_by(t.c.seq.desc()).limit(limit))
            return [AuditRow(**r._mapping) for r in rows]

    def close(self) -> None:
        """Dispose of the engine's connections (and a temporary blob directory)."""
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._engine.dispose()
        if self._temp_blob_dir and self._blob_dir is not None:
            shutil.rmtree(self._blob_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"SQLStore({self._safe_url()!r}, blob_dir={str(self._blob_dir)!r})"


def _apply(
    ex: _Core | _SQLiteCursor,
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
        ex.insert("users", [_params(u) for u in users.values()])
    if datasets:
        names = [d.name for d in datasets]
        old_files += ex.delete("dataset_assets", names)
        ex.delete("datasets", names)
        ex.insert("datasets", [_params(d, skip="assets") for d in datasets])
        if assets:
            ex.insert("dataset_assets", assets)
    if batch.requests:
        requests = {r.id: r for r in batch.requests}  # written again when decided
        ex.delete("requests", list(requests))
        ex.insert("requests", [_params(r) for r in requests.values()])
    if batch.audit:
        ex.insert("audit", [_params(a) for a in batch.audit])
    if batch.dp:  # veil.dp state: upsert by key
        dp = {r.key: r for r in batch.dp}
        ex.delete("dp_state", list(dp))
        ex.insert("dp_state", [_params(r) for r in dp.values()])
    return old_files


def _request_row(r: Any) -> RequestRow:
    return RequestRow(**{**r._mapping, "digest": r.digest or ""})


def _sqlite_pragmas(memory: bool) -> Any:
    """A ``connect`` listener: WAL (durable against a killed process), NORMAL sync, waits on locks."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
        finally:
            cur.close()

    return on_connect
