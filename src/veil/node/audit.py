"""A node's audit log: what is recorded, and who may read it."""

from __future__ import annotations

import logging
import time
from typing import Any

from veil.errors import (
    PermissionDenied,
)
from veil.node.base import NodeBase
from veil.node.store import (
    AuditRow,
)
from veil.node.users import Session
from veil.serde.messages import (
    AuditEntry,
    AuditLog,
    GetAudit,
    Reply,
)

log = logging.getLogger("veil.node")


class AuditMixin(NodeBase):
    """Audit rows, written with the message they describe."""

    def _audit_row(self, session: Session, action: str, detail: str = "",
                   objects: list[int] | None = None, sources: Any = ()) -> None:  # fmt: skip
        self._batch.audit.append(
            AuditRow(time.time(), session.email, action, detail, objects or [], sorted(sources))
        )

    def _audit(self, session: Session, msg: GetAudit) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins read the audit log")
        self._commit()
        rows = self.store.audit(max(0, min(msg.limit, 100_000)))
        return AuditLog(
            [AuditEntry(r.ts, r.user, r.action, r.detail, r.objects, r.sources) for r in rows]
        )
