"""Access requests and approvals: what a scientist asks for, and what the owner's decision covers."""

from __future__ import annotations

import hashlib
import logging
import time

from veil.errors import (
    InvalidRequest,
    ObjectNotFound,
    PermissionDenied,
)
from veil.node import capability
from veil.node.base import NodeBase
from veil.node.objects import (
    ObjectRecord,
)
from veil.node.persistence import value_to_wire
from veil.node.store import (
    RequestRow,
)
from veil.node.users import Session
from veil.serde import codec
from veil.serde.messages import (
    DecideRequest,
    ListRequests,
    Reply,
    RequestAccess,
    RequestInfo,
    RequestList,
    Value,
)

log = logging.getLogger("veil.node")

#: ``void``: the object changed after the request, so the request no longer describes it.
REQUEST_STATUSES = ("pending", "approved", "denied", "void")


#: Who the audit log names for what the node does by itself (voiding a stale request).
SYSTEM = Session(0, "node", "system")


class RequestsMixin(NodeBase):
    """Requests bound to an object's content; a write voids them."""

    def _request_info(self, r: RequestRow) -> RequestInfo:
        decided = self._email(r.decided_by) if r.decided_by is not None else ""
        if r.kind != "object":
            found = capability.request_kind(r.kind)
            summary = found[1].describe(self.capability_state(found[0].name), r) if found else ""
            return RequestInfo(
                r.id, 0, self._email(r.requester), r.reason, r.status, r.created, decided,
                r.note, None, r.kind, r.subject, summary,
            )  # fmt: skip
        rec = self._objects.get(r.object_id)
        shown = rec.alias or r.object_id if rec is not None else r.object_id
        return RequestInfo(
            r.id, shown, self._email(r.requester), r.reason, r.status, r.created,
            decided, r.note, self._info_of(rec) if rec is not None else None,
        )  # fmt: skip

    def _request_kind(self, session: Session, msg: RequestAccess) -> Reply:
        """A request of a capability's kind: the kind checks the subject and says what the
        approval binds to (its digest)."""
        found = capability.request_kind(msg.kind)
        if found is None:
            raise InvalidRequest(
                f"node {self.name!r} has no request kind {msg.kind!r}; it reviews objects"
                + "".join(
                    f", {k.name}" for c in capability.installed().values() for k in c.request_kinds
                )  # fmt: skip
            )
        cap, kind = found
        state = self.capability_state(cap.name)
        digest = kind.open(state, session, msg.subject)
        rid = max(self._requests, default=0) + 1
        row = RequestRow(rid, 0, session.user_id, msg.reason[:2000], "pending", time.time(),
                         digest=digest, kind=msg.kind, subject=msg.subject[:200])  # fmt: skip
        self._requests[rid] = row
        self._batch.requests.append(row)
        self._audit_row(session, "request", f"{msg.kind} {msg.subject[:100]}: {msg.reason[:100]}")
        return self._request_info(row)

    def approved_request(self, session: Session, kind: str, subject: str,
                         digest: str) -> RequestRow | None:  # fmt: skip
        """An approved request of ``session``'s user, of a capability's ``kind``, about
        ``subject`` with exactly this ``digest`` (what the owner reviewed); None if none.

        Example:
            >>> from veil.node import Node
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> s = node.login("owner@n.local", "pw-long-enough")
            >>> node.approved_request(s, "plan", "ab12", "ab12") is None
            True
        """
        for r in self._requests.values():
            if (r.kind, r.subject, r.requester, r.status) == (kind, subject, session.user_id,
                                                              "approved") and r.digest == digest:  # fmt: skip
                return r
        return None

    def _digest(self, rec: ObjectRecord) -> str:
        """SHA-256 of an object's content (and of the error it holds, if any): what an
        access request describes, and all that its approval covers."""
        h = hashlib.sha256(rec.error.encode())
        if rec.kind != "optimizer":
            for part in codec.encode_parts(Value(value_to_wire(rec.value, storage=False))):
                h.update(part)
        return h.hexdigest()

    def _void_requests(self, rec: ObjectRecord) -> None:
        """A write into an object voids its pending and approved requests: what the owner was
        asked about is not what the object holds any more. Every write the node records
        voids them (not only those that changed the content, which could depend on private
        values)."""
        for rid in sorted(self._open_requests.pop(rec.id, ())):
            row = self._requests.get(rid)
            if row is None or row.status not in ("pending", "approved"):
                continue
            row.status = "void"
            row.note = (
                f"void: object {row.object_id} was written after this request was made, so the "
                "request no longer describes it; ask again to have the new content reviewed"
            ) + (f" (was: {row.note})" if row.note else "")
            self._batch.requests.append(row)
            self._audit_row(SYSTEM, "void", f"request {row.id}", [row.object_id])

    def _request_access(self, session: Session, msg: RequestAccess) -> Reply:
        if not msg.reason.strip():
            raise InvalidRequest("say why you need the data: ptr.request('reason')")
        if msg.kind != "object":
            return self._request_kind(session, msg)
        rec = self._record(session, msg.id)
        if rec.kind != "optimizer":
            self._persist(rec)  # a requested object must outlive a restart
        rid = max(self._requests, default=0) + 1
        row = RequestRow(rid, rec.id, session.user_id, msg.reason[:2000], "pending", time.time())
        if not rec.private or session.is_admin:
            row.status, row.note = "approved", "not private: no approval needed"
        else:
            row.digest = self._digest(rec)  # the approval will cover this content only
            self._open_requests.setdefault(rec.id, set()).add(rid)
        self._requests[rid] = row
        self._batch.requests.append(row)
        self._audit_row(session, "request", msg.reason[:200], [rec.id], rec.sources)
        return self._request_info(row)

    def _list_requests(self, session: Session, msg: ListRequests) -> Reply:
        if msg.status is not None and msg.status not in REQUEST_STATUSES:
            raise InvalidRequest(f"status must be one of {REQUEST_STATUSES}, got {msg.status!r}")
        rows = [
            r for r in self._requests.values()
            if (session.is_admin or r.requester == session.user_id)
            and (msg.status is None or r.status == msg.status)
        ]  # fmt: skip
        return RequestList([self._request_info(r) for r in rows])

    def _decide(self, session: Session, msg: DecideRequest) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins decide requests")
        row = self._requests.get(msg.id)
        if row is None:
            raise ObjectNotFound(f"no request {msg.id} on node {self.name!r}")
        if row.status == "void":  # written after it was made: the owner sees why
            return self._request_info(row)
        revoke = row.kind != "object" and row.status == "approved" and not msg.approve
        if row.status != "pending" and not revoke:  # a capability's approval may be revoked
            raise InvalidRequest(f"request {msg.id} was already {row.status}")
        row.status = "approved" if msg.approve else "denied"
        row.decided_by, row.note = session.user_id, msg.note[:2000]
        if row.kind != "object":
            found = capability.request_kind(row.kind)
            if found is not None and found[1].decided is not None:
                found[1].decided(self.capability_state(found[0].name), row)
            self._batch.requests.append(row)
            self._audit_row(session, row.status, f"request {row.id} ({row.kind})")
            return self._request_info(row)
        if not msg.approve:
            self._open_requests.get(row.object_id, set()).discard(row.id)
        rec = self._objects.get(row.object_id)
        if msg.approve and rec is not None:
            if not row.digest:  # a request from before digests: bind it to what is approved
                row.digest = self._digest(rec)
            rec.approved.add(row.requester)
            self._persist(rec)
        self._batch.requests.append(row)
        self._audit_row(session, row.status, f"request {row.id}", [row.object_id])
        return self._request_info(row)

    def _approved_for(self, session: Session, rec: ObjectRecord) -> bool:
        """Does an approved request of this user cover the object's current content?"""
        if session.user_id not in rec.approved:
            return False
        rows = [
            r for r in self._requests.values()
            if r.object_id == rec.id and r.requester == session.user_id and r.status == "approved"
        ]  # fmt: skip
        if not rows:
            return False
        digest = self._digest(rec)  # a write after the request voids it (listing shows why)
        return any(r.digest == digest for r in rows)
