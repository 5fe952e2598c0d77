"""SQLStore: a node's state in SQL (SQLite by default, PostgreSQL by URL), large payloads as files."""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
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
from veil.node.store.blobs import BlobFiles, nbytes
from veil.node.store.schema import (
    ADDED_COLUMNS,
    SCHEMA_VERSION,
    assets_table,
    audit_table,
    datasets_table,
    dp_table,
    meta_table,
    metadata,
    objects_table,
    requests_table,
    users_table,
)
from veil.node.store.statements import (
    SELECT_ALL,
    CoreWriter,
    SQLiteWriter,
    apply_batch,
    chunks,
    row_params,
)

__all__ = ["SCHEMA_VERSION", "SQLStore"]


class SQLStore(BlobFiles, Store):
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
        for table, column, sql_type, default in ADDED_COLUMNS:
            if column not in {c["name"] for c in inspector.get_columns(table)}:
                extra = f" DEFAULT {default}" if default is not None else ""
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}{extra}"))
        conn.execute(
            sa.update(meta_table)
            .where(meta_table.c.key == "schema_version")
            .values(value=str(SCHEMA_VERSION))
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"this SQLStore ({self._safe_url()}) is closed; open a new one")

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
        if sum(nbytes(p) for p in parts) < self.inline_limit:
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
                    old_files = apply_batch(CoreWriter(conn), batch, objects, datasets, assets)
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
                old_files = apply_batch(SQLiteWriter(cursor), batch, objects, datasets, assets)
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
        params = row_params(row)
        if row.blob is not None:  # written by stage(): the row only names it
            self._blob_path(row.blob)  # a valid name of ours
            new_files.append(row.blob)  # removed if this write fails
            params["payload"] = None
        elif nbytes(row.payload) >= self.inline_limit:
            params["blob"] = self._write_blob(row.id, "obj", row.payload)
            new_files.append(params["blob"])
            params["payload"] = None
        return params

    def _asset_params(
        self, dataset: str, position: int, asset: tuple[Any, ...], new_files: list[str]
    ) -> dict[str, Any]:
        name, oid, mock, columns, bounds, description = asset
        blob = None
        if nbytes(mock) >= self.inline_limit:
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
            users = [UserRow(**r._mapping) for r in conn.execute(SELECT_ALL["users"])]
            objects = [self._object_row(r, referenced) for r in conn.execute(SELECT_ALL["objects"])]
            assets: dict[str, list[Any]] = {}
            for r in conn.execute(SELECT_ALL["dataset_assets"]):
                assets.setdefault(r.dataset, []).append(self._asset(r, referenced))
            datasets = [
                DatasetRow(**r._mapping, assets=assets.get(r.name, []))
                for r in conn.execute(SELECT_ALL["datasets"])
            ]
            requests = [_request_row(r) for r in conn.execute(SELECT_ALL["requests"])]
            dp = [DPRow(**r._mapping) for r in conn.execute(SELECT_ALL["dp_state"])]
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
            for chunk in chunks(sorted(set(keys))):
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


def _request_row(r: Any) -> RequestRow:
    return RequestRow(**{
        **r._mapping, "digest": r.digest or "", "kind": r.kind or "object",
        "subject": r.subject or "",
    })  # fmt: skip


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
