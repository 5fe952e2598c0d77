"""The SQL schema of a node's store: its tables, their keys and the schema version."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "ADDED_COLUMNS",
    "BLOB_COLUMN",
    "SCHEMA_VERSION",
    "TABLE_KEY",
    "assets_table",
    "audit_table",
    "datasets_table",
    "dp_table",
    "meta_table",
    "metadata",
    "objects_table",
    "requests_table",
    "users_table",
]

#: The layout of the tables below and of what they hold; bump it (and add a migration)
#: when either changes. 2: ``objects.extra``, ``requests.digest``. 3: no new columns, but
#: an object's payload may now be a view of another object's tensor or an optimizer
#: (``veil.node.aliasing``), which a veil reading up to version 2 cannot load.
#: 4: ``requests.kind`` and ``requests.subject`` (requests of a capability's kind).
SCHEMA_VERSION = 4
#: Columns added since version 1: (table, column, SQL type, default), added by ALTER TABLE.
ADDED_COLUMNS = [
    ("objects", "extra", "JSON", None),
    ("requests", "digest", "VARCHAR(64)", "''"),
    ("requests", "kind", "VARCHAR(64)", "'object'"),
    ("requests", "subject", "TEXT", "''"),
]

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
    sa.Column("kind", sa.String(64), nullable=True),  # schema 4
    sa.Column("subject", sa.Text, nullable=True),  # schema 4
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
TABLE_KEY = {
    "users": "id",
    "objects": "id",
    "datasets": "name",
    "dataset_assets": "dataset",
    "requests": "id",
    "dp_state": "key",
}
BLOB_COLUMN = {"objects": "blob", "dataset_assets": "mock_blob"}
