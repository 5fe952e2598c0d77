"""An in-memory store: nothing survives the process (the default for VirtualWorkers)."""

from __future__ import annotations

from collections import deque
from typing import Any

from veil.node.store.base import AuditRow, Batch, Snapshot, Store


class MemoryStore(Store):
    """Keeps only the audit log (bounded) in memory.

    Example:
        >>> s = MemoryStore(audit_limit=2)
        >>> for i in range(3):
        ...     s.write(Batch(audit=[AuditRow(float(i), "u", "op")]))
        >>> [r.ts for r in s.audit(10)]
        [2.0, 1.0]
    """

    persistent = False

    def __init__(self, *, audit_limit: int = 100_000) -> None:
        self._audit: deque[AuditRow] = deque(maxlen=audit_limit)

    def load(self) -> Snapshot:
        return Snapshot([], [], [], [])

    def load_keys(self, **keys: Any) -> Snapshot:
        """Nothing is stored: no rows."""
        return Snapshot([], [], [], [])

    def write(self, batch: Batch) -> None:
        self._audit.extend(batch.audit)

    def audit(self, limit: int) -> list[AuditRow]:
        return list(reversed(self._audit))[:limit]
