"""Access decisions: who may write into an object, and who may read it."""

from __future__ import annotations

import logging

from veil.errors import (
    InvalidRequest,
    PermissionDenied,
)
from veil.node import capability
from veil.node.base import NodeBase
from veil.node.objects import (
    ObjectRecord,
    storage_keys,
    tensors_of,
)
from veil.node.users import Session

log = logging.getLogger("veil.node")

#: Kind of the node's durable rows that say which release policies the owner enabled.
POLICY = "release_policy"


class AccessMixin(NodeBase):
    """Write and read permissions (dataset data is read-only; private data needs approval)."""

    def _check_mutable(self, session: Session, rec: ObjectRecord) -> None:
        if session.is_admin:
            return
        if rec.asset_of is not None or rec.owner != session.user_id:
            raise PermissionDenied(
                f"object {rec.id} is data of dataset {rec.asset_of!r} and is read-only; "
                "work on a copy: ptr.clone()"
            )
        shared = storage_keys(tensors_of(rec.value)) & self._asset_storages()
        if shared:  # a view (x[0], x.T, x.data...) of a dataset's data writes into the data
            by_ds = self._asset_keys_by_dataset()
            names = sorted(n for n, keys in by_ds.items() if keys & shared)
            raise PermissionDenied(
                f"object {rec.id} is a view of dataset {', '.join(names)}'s data and is "
                "read-only; work on a copy: ptr.clone()"
            )

    def _check_readable(self, session: Session, rec: ObjectRecord) -> None:
        if session.is_admin or not rec.private or self._approved_for(session, rec):
            return
        for key, row in self._rows.get(POLICY, {}).items():  # those the owner enabled
            found = capability.release_policy(key.removeprefix(POLICY + ":"))
            if (
                row.get("enabled")
                and found is not None
                and found[1].allows(self.capability_state(found[0].name), session, rec)
            ):
                self._audit_row(session, "release", f"by policy {found[1].name}", [rec.id],
                                rec.sources)  # fmt: skip
                return
        src = f" (derived from dataset {', '.join(sorted(rec.sources))})" if rec.sources else ""
        raise PermissionDenied(
            f"object {rec.id} on node {self.name!r} is private{src}; ask the data owner "
            "with ptr.request('what it is for'), and .get() it once approved"
        )

    def set_release_policy(self, name: str, enabled: bool = True) -> None:
        """Enable (or disable) a capability's release policy on this node: the owner's
        choice of when private objects may leave besides approved requests. Persisted.

        Example:
            >>> from veil.node import Node
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> node.set_release_policy("no-such-policy")
            Traceback (most recent call last):
            ...
            veil.errors.InvalidRequest: no release policy 'no-such-policy' is installed; ...
            >>> node.release_policies()
            []
        """
        if capability.release_policy(name) is None:
            known = sorted(p.name for c in capability.installed().values()
                           for p in c.release_policies)  # fmt: skip
            raise InvalidRequest(f"no release policy {name!r} is installed; installed: {known}")
        self.put_row(f"{POLICY}:{name}", POLICY, {"enabled": bool(enabled)})

    def release_policies(self) -> list[str]:
        """The release policies the owner enabled on this node."""
        return sorted(
            k.removeprefix(POLICY + ":") for k, v in self._rows.get(POLICY, {}).items()
            if v.get("enabled")
        )  # fmt: skip

    def _asset_keys_by_dataset(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for ds in self._datasets.values():
            recs = [self._objects.get(a[1]) for a in ds.assets]
            out[ds.name] = storage_keys(t for r in recs if r for t in tensors_of(r.value))
        return out

    def _asset_storages(self) -> set[int]:
        """Storage addresses of every dataset's private data (never freed while the node runs)."""
        return set().union(*self._asset_keys_by_dataset().values())
