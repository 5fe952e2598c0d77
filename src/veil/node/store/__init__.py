"""Node storage backends: ``MemoryStore`` and ``SQLStore`` (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

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
from veil.node.store.memory import MemoryStore

__all__ = [
    "AuditRow",
    "Batch",
    "DPRow",
    "DatasetRow",
    "MemoryStore",
    "ObjectRow",
    "RequestRow",
    "Snapshot",
    "Store",
    "UserRow",
    "open_store",
]


def open_store(url: str | None, *, blob_dir: str | None = None) -> Store:
    """A store for a database URL (``sqlite:///node.db``, ``postgresql+psycopg://...``);
    ``None`` or ``"memory"`` gives a :class:`MemoryStore`.

    Example:
        >>> type(open_store(None)).__name__
        'MemoryStore'
    """
    if url in (None, "", "memory"):
        return MemoryStore()
    from veil.node.store.sql import SQLStore

    return SQLStore(url, blob_dir=blob_dir)
