"""Automatic DP at the node: sensitivity of derived objects, DP releases, budgets and the ledger.

The node keeps, beside each object derived from a dataset, the bound veil.dp tracked
through the ops that made it (:mod:`veil.dp.sensitivity`). ``Publish`` adds noise calibrated
to that bound (Laplace for δ = 0, Gaussian otherwise; both exact samplers on a grid),
after checking the caller's budget on the dataset against every release it already got,
composed by :func:`veil.dp.ledger.spent_epsilon`. Budgets and releases are written to the
node's store in the same transaction as the release, so a restarted node keeps them.

Bounds are kept in memory only: after a restart, objects derived before it are treated as
unbounded (refused for release) until recomputed from the dataset; the ledger persists.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from veil.dp.ledger import Release, gaussian_rho, laplace_rho, spent_epsilon
from veil.dp.mechanisms import GaussianMechanism, LaplaceMechanism
from veil.dp.sensitivity import UNBOUNDED, Aggregate, Bound, Rowwise, Unbounded, propagate
from veil.errors import (
    BudgetExceeded,
    InvalidRequest,
    ObjectNotFound,
    PermissionDenied,
    UnboundedSensitivity,
)
from veil.node.objects import ObjectRecord
from veil.node.store import DPRow, Snapshot
from veil.serde.messages import (
    AssetSpec,
    BudgetInfo,
    BudgetList,
    ListBudgets,
    Publish,
    Reply,
    SetBudget,
    Value,
)
from veil.serde.tensors import tensor_from_data, tensor_to_data

if TYPE_CHECKING:
    from veil.node.node import Node
    from veil.node.users import Session

__all__ = ["NodeDP"]


@dataclass(slots=True)
class _Budget:
    epsilon: float
    delta: float


class NodeDP:
    """The node's DP state; the Node calls it from its handlers (see ``node.py``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.clear()

    def clear(self) -> None:
        self.bounds: dict[int, Bound] = {}
        self.asset_k: dict[int, int] = {}
        self.budgets: dict[tuple[int, str], _Budget] = {}
        self.ledger: dict[tuple[int, str], list[Release]] = {}
        self._seq = 0

    # -------------------------------------------------------------- persistence
    def load(self, snap: Snapshot) -> None:
        for row in snap.dp:
            v = row.value
            if row.kind == "asset":
                self.asset_k[int(v["object_id"])] = int(v["k"])
            elif row.kind == "budget":
                self.budgets[(int(v["user"]), v["dataset"])] = _Budget(v["epsilon"], v["delta"])
            elif row.kind == "release":
                rel = Release(v["epsilon"], v["delta"], v["rho"], v["mechanism"])
                self.ledger.setdefault((int(v["user"]), v["dataset"]), []).append(rel)
                self._seq = max(self._seq, int(v["seq"]))
        for ds in self.node._datasets.values():
            for _name, oid, _mock, _cols, bounds, _desc in ds.assets:
                rec = self.node._objects.get(oid)
                if rec is not None:
                    self._asset_bound(rec, list(bounds))

    def _put(self, key: str, kind: str, value: dict[str, Any]) -> None:
        self.node._batch.dp.append(DPRow(key, kind, value))

    # -------------------------------------------------------------- datasets
    def check_assets(self, assets: list[AssetSpec]) -> list[str]:
        """Problems with the DP declarations of new assets (bounds must hold; subjects per row)."""
        problems = []
        for a in assets:
            rows = a.private.shape[0] if a.private.shape else 1
            if a.subjects and len(a.subjects) != rows:
                problems.append(f"asset {a.name!r}: {len(a.subjects)} subject ids for {rows} rows")
            if a.bounds and a.private.shape:
                x = tensor_from_data(a.private, copy=False)
                if x.is_floating_point() or not x.is_complex():
                    lo = torch.tensor([b[0] for b in a.bounds], dtype=torch.float64)
                    hi = torch.tensor([b[1] for b in a.bounds], dtype=torch.float64)
                    xd = x.to(torch.float64)
                    if x.dim() >= 1 and len(a.bounds) > 1 and x.shape[-1] != len(a.bounds):
                        continue  # reported by the node's own column check
                    if bool(((xd < lo) | (xd > hi)).any()) or bool(xd.isnan().any()):
                        problems.append(
                            f"asset {a.name!r}: some values lie outside the declared bounds; DP "
                            "releases rely on them: fix the bounds or clip the data first"
                        )
        return problems

    def add_asset(self, rec: ObjectRecord, spec: AssetSpec) -> None:
        k = max(Counter(spec.subjects).values()) if spec.subjects else 1
        self.asset_k[rec.id] = k
        self._put(f"asset:{rec.id}", "asset", {"object_id": rec.id, "k": k})
        self._asset_bound(rec, list(spec.bounds))

    def _asset_bound(self, rec: ObjectRecord, bounds: list[tuple[float, float]]) -> None:
        value = rec.value
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            k = self.asset_k.get(rec.id, 1)
            self.bounds[rec.id] = Rowwise.for_asset(rec.id, value, bounds, k)

    # -------------------------------------------------------------- tracking
    def bound_of_record(self, rec: ObjectRecord) -> Bound | None:
        b = self.bounds.get(rec.id)
        if b is not None:
            return b
        return UNBOUNDED if rec.private else None

    def after_op(self, op: str, args: list[Any], kwargs: dict[str, Any],
                 inputs: list[ObjectRecord], reply: Reply) -> None:  # fmt: skip
        """Record the bound of an op's (single) result."""
        from veil.serde.messages import ObjectInfo

        if not isinstance(reply, ObjectInfo) or not any(r.private for r in inputs):
            return
        rec = self.node._objects.get(reply.id)
        if rec is None or rec.asset_of is not None:
            return
        by_value = {id(r.value): r for r in inputs}

        def bound_of(obj_id: int) -> Bound | None:
            r = by_value.get(obj_id)
            return None if r is None else self.bound_of_record(r)

        try:
            b = propagate(op, tuple(args), kwargs, bound_of, rec.value)
        except Exception:  # noqa: BLE001 - a rule that fails must not fail the op: unbounded
            b = UNBOUNDED
        if isinstance(b, Rowwise | Aggregate):
            self.bounds[rec.id] = b
        else:
            self.bounds.pop(rec.id, None)

    def invalidate(self, keys: set[int]) -> None:
        """Objects whose storage was written lose their bound (they become unbounded)."""
        from veil.node.objects import storage_keys, tensors_of

        for oid in list(self.bounds):
            rec = self.node._objects.get(oid)
            if rec is None:
                self.bounds.pop(oid, None)
            elif rec.asset_of is None and storage_keys(tensors_of(rec.value)) & keys:
                self.bounds.pop(oid, None)

    def forget(self, oid: int) -> None:
        self.bounds.pop(oid, None)

    # -------------------------------------------------------------- releases
    def _dataset_of(self, source: int) -> str:
        rec = self.node._objects.get(source)
        if rec is None or rec.asset_of is None:
            raise UnboundedSensitivity("the object's dataset no longer exists")
        return rec.asset_of

    def publish(self, session: Session, msg: Publish) -> Reply:
        rec = self.node._record(session, msg.id)
        if rec.kind != "tensor":
            raise InvalidRequest("only tensors can be published")
        if not rec.private:
            raise InvalidRequest(f"object {rec.id} is not private: fetch it with .get()")
        if not (
            isinstance(msg.epsilon, int | float) and math.isfinite(msg.epsilon) and msg.epsilon > 0
        ):
            raise InvalidRequest(f"epsilon must be a positive number, got {msg.epsilon!r}")
        if not (0 <= msg.delta < 1):
            raise InvalidRequest(f"delta must be in [0, 1), got {msg.delta!r}")
        b = self.bound_of_record(rec)
        value: torch.Tensor = rec.value
        if isinstance(b, Rowwise):
            b = b.release(tuple(value.shape[1:]))
        if not isinstance(b, Aggregate) or not (math.isfinite(b.l1) and math.isfinite(b.l2)):
            reason = b.reason if isinstance(b, Unbounded) else "its values are not bounded"
            raise UnboundedSensitivity(
                f"object {rec.id} cannot be published: its sensitivity is unbounded ({reason}). "
                "Build it from the dataset with ops veil can bound: clamp(lo, hi), column "
                "slices, arithmetic with public values, linear maps, sum/mean/count, histc; "
                "declare bounds when creating the dataset"
            )
        dataset = self._dataset_of(b.source)
        key = (session.user_id, dataset)
        budget = self.budgets.get(key)
        if budget is None:
            raise BudgetExceeded(
                f"you have no privacy budget on dataset {dataset!r}; ask the node's owner "
                f"(veil budgets set --user {session.email} --dataset {dataset} --epsilon ...)"
            )
        if msg.delta > 0:
            release = Release(
                msg.epsilon, msg.delta, gaussian_rho(msg.epsilon, msg.delta), "gaussian"
            )
        else:
            release = Release(msg.epsilon, 0.0, laplace_rho(msg.epsilon), "laplace")
        past = self.ledger.get(key, [])
        before = spent_epsilon(past, delta=budget.delta)
        after = spent_epsilon([*past, release], delta=budget.delta)
        if after > budget.epsilon * (1 + 1e-12):
            raise BudgetExceeded(
                f"this release (epsilon={msg.epsilon:g}, delta={msg.delta:g}) would bring your "
                f"spend on dataset {dataset!r} to epsilon={after:.4g} (delta={budget.delta:g}), "
                f"over your budget of {budget.epsilon:g}; you have spent {before:.4g}. Ask the "
                "owner for more, or publish with a smaller epsilon"
            )
        x = value.detach()
        if b.l1 == 0 and b.l2 == 0:
            noisy = x.clone()  # does not depend on any subject's data
        elif release.mechanism == "laplace":
            noisy = LaplaceMechanism(epsilon=msg.epsilon, sensitivity=b.l1)(x)
        else:
            noisy = GaussianMechanism(epsilon=msg.epsilon, delta=msg.delta, sensitivity=b.l2)(x)
        self.ledger.setdefault(key, []).append(release)
        self._seq += 1
        self._put(f"release:{self._seq}", "release", {
            "seq": self._seq, "user": session.user_id, "dataset": dataset, "epsilon": release.epsilon,
            "delta": release.delta, "rho": release.rho, "mechanism": release.mechanism,
            "object_id": rec.id, "ts": time.time(), "l1": b.l1, "l2": b.l2,
        })  # fmt: skip
        self.node._audit_row(session, "publish", f"epsilon={msg.epsilon:g} delta={msg.delta:g}",
                             [rec.id], rec.sources)  # fmt: skip
        if not noisy.is_floating_point():
            noisy = noisy.to(torch.float64)
        return Value(tensor_to_data(noisy.contiguous()))

    # -------------------------------------------------------------- budgets
    def set_budget(self, session: Session, msg: SetBudget) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins set privacy budgets")
        user = next((u for u in self.node._users.values() if u.email == msg.user), None)
        if user is None:
            raise ObjectNotFound(f"node has no user {msg.user!r}")
        if msg.dataset not in self.node._datasets:
            raise ObjectNotFound(f"node has no dataset {msg.dataset!r}")
        if not (math.isfinite(msg.epsilon) and msg.epsilon >= 0) or not (0 <= msg.delta < 1):
            raise InvalidRequest("a budget needs epsilon >= 0 and delta in [0, 1)")
        key = (user.id, msg.dataset)
        self.budgets[key] = _Budget(float(msg.epsilon), float(msg.delta))
        self._put("budget:" + json.dumps([user.id, msg.dataset]), "budget", {
            "user": user.id, "dataset": msg.dataset, "epsilon": float(msg.epsilon),
            "delta": float(msg.delta),
        })  # fmt: skip
        self.node._audit_row(session, "set_budget",
                             f"{msg.user} on {msg.dataset}: epsilon={msg.epsilon:g} delta={msg.delta:g}")  # fmt: skip
        return self._info(key)

    def _info(self, key: tuple[int, str]) -> BudgetInfo:
        b = self.budgets[key]
        rel = self.ledger.get(key, [])
        return BudgetInfo(self.node._email(key[0]), key[1], b.epsilon, b.delta,
                          spent_epsilon(rel, delta=b.delta), math.fsum(r.delta for r in rel), len(rel))  # fmt: skip

    def list_budgets(self, session: Session, msg: ListBudgets) -> Reply:
        items = []
        for key in sorted(self.budgets, key=lambda k: (self.node._email(k[0]), k[1])):
            if not session.is_admin and key[0] != session.user_id:
                continue
            if msg.user is not None and self.node._email(key[0]) != msg.user:
                continue
            items.append(self._info(key))
        return BudgetList(items)
