"""Automatic DP at the node: sensitivity of derived objects, DP releases, budgets and the ledger.

The node keeps, beside each object derived from a dataset, the bound veil.dp tracked
through the ops that made it (:mod:`veil.dp.sensitivity`, by the rule each op's facts
name). ``Publish`` adds noise calibrated to that bound (Laplace for δ = 0, Gaussian
otherwise; both exact samplers on a grid), after checking the caller's budget on the
dataset against every release it already got, composed by
:func:`veil.dp.ledger.spent_epsilon`.

Everything a publish decides — refuse it, charge it, how much noise — depends only on
public facts: the arguments, the tracked bound, the object's shape and dtype. The value
itself enters only as the centre of the noise, after being put inside the bound's
certified value range (a NaN becomes a public constant first): an object whose op failed
on private values is published like a healthy one, around zeros.

Budgets, releases and the tracked bounds of derived objects are durable keyed rows of the
node (:meth:`Node.put_row`), written in the same transaction as what they describe, so a
restarted node (or one that rolled back after a store failure) has all of them.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from veil.dp.bounds import bound_from_json, bound_to_json
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
from veil.node.capability import Capability, CapabilityState, install
from veil.node.objects import ObjectRecord
from veil.serde.messages import (
    AssetSpec,
    BudgetInfo,
    BudgetList,
    ListBudgets,
    ObjectInfo,
    Publish,
    Reply,
    SetBudget,
    Value,
)
from veil.serde.tensors import tensor_from_data, tensor_to_data

if TYPE_CHECKING:
    from veil.node.node import Node
    from veil.node.users import Session

__all__ = ["CAPABILITY", "NodeDP"]

#: Kinds of the node's durable rows this module writes.
ASSET, BUDGET, RELEASE, BOUND = "asset", "budget", "release", "bound"


@dataclass(slots=True)
class _Budget:
    epsilon: float
    delta: float


class NodeDP(CapabilityState):
    """veil.dp's state on one node: tracked bounds, budgets and the ledger (its hooks and
    handlers are those of the ``dp`` capability, see :data:`CAPABILITY`)."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.clear()

    def clear(self) -> None:
        self.bounds: dict[int, Bound] = {}
        self.asset_k: dict[int, int] = {}
        self.budgets: dict[tuple[int, str], _Budget] = {}
        self.ledger: dict[tuple[int, str], list[Release]] = {}
        self._seq = 0
        self._saved: set[int] = set()  # derived objects whose bound has a durable row

    # -------------------------------------------------------------- persistence
    def start(self) -> None:
        """Rebuild the state from the node's durable rows (the node loaded them already)."""
        rows = self.node.rows
        for v in rows(ASSET).values():
            self.asset_k[int(v["object_id"])] = int(v["k"])
        for v in rows(BUDGET).values():
            self.budgets[(int(v["user"]), v["dataset"])] = _Budget(v["epsilon"], v["delta"])
        for v in rows(RELEASE).values():
            rel = Release(v["epsilon"], v["delta"], v["rho"], v["mechanism"])
            self.ledger.setdefault((int(v["user"]), v["dataset"]), []).append(rel)
            self._seq = max(self._seq, int(v["seq"]))
        for _ds, _name, oid, bounds in self.node.assets():
            rec = self.node.record_by_id(oid)
            if rec is not None:
                self._asset_bound(rec, bounds)
        for v in rows(BOUND).values():
            self._load_bound(v)

    def _load_bound(self, v: dict[str, Any]) -> None:
        if v.get("deleted"):
            return
        oid = int(v["object_id"])
        rec = self.node.record_by_id(oid)
        # the row belongs to this very object (ids can come back: check its creation time)
        if rec is None or rec.asset_of is not None or not rec.private:
            return
        try:
            if float.fromhex(v["created"]) != rec.created:
                return
            self.bounds[oid] = bound_from_json(v["bound"])
        except (KeyError, TypeError, ValueError):
            return  # unreadable: the object stays unbounded
        self._saved.add(oid)

    def _persist(self, rec: ObjectRecord, b: Rowwise | Aggregate | None) -> None:
        if not self.node.store.persistent:
            return
        key = f"{BOUND}:{rec.id}"
        if b is not None:
            row = {
                "object_id": rec.id,
                "created": float(rec.created).hex(),
                "bound": bound_to_json(b),
            }
            self.node.put_row(key, BOUND, row)
            self._saved.add(rec.id)
        elif rec.id in self._saved:  # a tombstone
            self.node.put_row(key, BOUND, {"object_id": rec.id, "deleted": True})
            self._saved.discard(rec.id)

    # -------------------------------------------------------------- datasets
    def check_assets(self, assets: list[AssetSpec]) -> list[str]:
        """Problems with the DP declarations of new assets (bounds must hold; subjects per row)."""
        problems = []
        for a in assets:
            rows = a.private.shape[0] if a.private.shape else 1
            if a.subjects and len(a.subjects) != rows:
                problems.append(f"asset {a.name!r}: {len(a.subjects)} subject ids for {rows} rows")
            if not a.bounds:
                continue
            if any(not _pair_ok(b) for b in a.bounds):
                problems.append(
                    f"asset {a.name!r}: each bound must be a (low, high) pair of numbers, not "
                    "NaN, with low <= high"
                )
                continue
            if not a.private.shape:
                continue
            x = tensor_from_data(a.private, copy=False)
            if x.dim() >= 1 and len(a.bounds) > 1 and x.shape[-1] != len(a.bounds):
                continue  # reported by the node's own column check
            if not _inside(x, a.bounds):
                problems.append(
                    f"asset {a.name!r}: some values lie outside the declared bounds; DP "
                    "releases rely on them: fix the bounds or clip the data first"
                )
        return problems

    def on_asset(self, rec: ObjectRecord, spec: AssetSpec) -> None:
        k = max(Counter(spec.subjects).values()) if spec.subjects else 1
        self.asset_k[rec.id] = k
        self.node.put_row(f"asset:{rec.id}", ASSET, {"object_id": rec.id, "k": k})
        self._asset_bound(rec, list(spec.bounds))

    def _asset_bound(self, rec: ObjectRecord, bounds: list[tuple[float, float]]) -> None:
        value = rec.value
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and not value.is_complex():
            k = self.asset_k.get(rec.id, 1)
            try:
                self.bounds[rec.id] = Rowwise.for_asset(rec.id, value, bounds, k)
            except (ValueError, TypeError, IndexError):
                self.bounds.pop(rec.id, None)  # bounds that do not fit its shape: unbounded

    # -------------------------------------------------------------- tracking
    def bound_of_record(self, rec: ObjectRecord) -> Bound | None:
        b = self.bounds.get(rec.id)
        if b is not None:
            return b
        return UNBOUNDED if rec.private else None

    def after_op(self, op: str, args: list[Any], kwargs: dict[str, Any],
                 inputs: list[ObjectRecord], reply: Reply) -> None:  # fmt: skip
        """Record the bound of an op's (single) result, by the rule its facts name.

        Only public facts enter: the inputs' bounds, shapes and dtypes, public argument
        values, and the result's shape and dtype — so a result stored as a placeholder
        because the op failed on private values gets the same bound as a real one."""
        if not isinstance(reply, ObjectInfo) or not any(r.private for r in inputs):
            return
        rec = self.node.record_by_id(reply.id)
        if rec is None or rec.asset_of is not None:
            return
        spec = self.node.registry.specs.get(op)
        rule = spec.facts.dp if spec is not None and spec.facts is not None else ""
        by_value = {id(r.value): r for r in inputs}

        def bound_of(obj_id: int) -> Bound | None:
            r = by_value.get(obj_id)
            return None if r is None else self.bound_of_record(r)

        b: Bound | None = UNBOUNDED
        value = rec.value
        if rec.kind == "tensor" and isinstance(value, torch.Tensor):
            meta = torch.empty(value.shape, dtype=value.dtype, device="meta")
            try:
                b = propagate(rule, tuple(args), kwargs, bound_of, meta)
            except Exception:  # noqa: BLE001 - a rule that fails must not fail the op: unbounded
                b = UNBOUNDED
        if isinstance(b, Rowwise | Aggregate):
            self.bounds[rec.id] = b
            self._persist(rec, b)
        else:
            self.forget(rec.id)
            if isinstance(b, Unbounded) and b is not UNBOUNDED:
                self.bounds[rec.id] = b  # in memory only, for its reason

    def on_write(self, keys: set[int]) -> None:
        """Objects whose storage was written lose their bound (they become unbounded)."""
        from veil.node.objects import storage_keys, tensors_of

        for oid in list(self.bounds):
            rec = self.node.record_by_id(oid)
            if rec is None:
                self.forget(oid)
            elif rec.asset_of is None and storage_keys(tensors_of(rec.value)) & keys:
                self.forget(oid)

    def on_drop(self, oid: int) -> Bound | None:
        """The object was deleted: its bound goes, with a tombstone for its row; returned
        so that a rollback can give it back."""
        bound = self.bounds.get(oid)
        self.forget(oid)
        return bound

    def on_forget(self, oid: int) -> None:
        self.bounds.pop(oid, None)

    def on_rollback(self, rows_changed: bool, written: set[int],
                    restored: dict[int, Any]) -> None:  # fmt: skip
        """Budgets and the ledger as their rows say; an object the refused message wrote
        loses its bound (unbounded, refused for release, until recomputed); one it deleted
        gets its bound back."""
        for oid, bound in restored.items():
            if bound is not None:
                self.bounds[oid] = bound
        if not rows_changed:
            for oid in written:
                self.bounds.pop(oid, None)
            return
        bounds = {k: b for k, b in self.bounds.items() if k not in written}
        self.clear()
        self.start()
        for oid, bound in bounds.items():  # the bounds of everything else, as they were
            if self.node.record_by_id(oid) is not None:
                self.bounds[oid] = bound

    def forget(self, oid: int) -> None:
        """Drop an object's bound (and its durable row)."""
        self.bounds.pop(oid, None)
        if oid in self._saved and self.node.store.persistent:
            self.node.put_row(f"{BOUND}:{oid}", BOUND, {"object_id": oid, "deleted": True})
        self._saved.discard(oid)

    # -------------------------------------------------------------- releases
    def _dataset_of(self, source: int) -> str:
        rec = self.node.record_by_id(source)
        if rec is None or rec.asset_of is None:
            raise UnboundedSensitivity("the object's dataset no longer exists")
        return rec.asset_of

    def publish(self, session: Session, msg: Publish) -> Reply:
        rec = self.node.record(session, msg.id)
        if rec.kind != "tensor":
            raise InvalidRequest("only tensors can be published")
        if not rec.private:
            raise InvalidRequest(f"object {rec.id} is not private: fetch it with .get()")
        epsilon, delta = _arguments(msg)
        shape, dtype = tuple(rec.value.shape), rec.value.dtype
        agg = self._releasable(rec, shape)
        dataset = self._dataset_of(agg.source)
        if delta > 0:
            release = Release(epsilon, delta, gaussian_rho(epsilon, delta), "gaussian")
        else:
            release = Release(epsilon, 0.0, laplace_rho(epsilon), "laplace")
        self.check_budget(session.user_id, dataset, release)
        value = agg.value.broadcast(shape)
        lo, hi = (np.asarray(value.lo), np.asarray(value.hi))
        n = math.prod(shape)
        constant = bool((lo == hi).all())  # one possible value, known from public facts
        mech = None if constant else _mechanism(release, agg, lo, hi, n)
        centre = _centre(rec, shape, dtype, value.exact, lo, hi)
        noisy = lo.astype(np.float64) if constant else mech(centre)  # type: ignore[misc]
        self._record(
            session.user_id, dataset, release, {"object_id": rec.id, "l1": agg.l1, "l2": agg.l2}
        )
        self.node.write_audit(session, "publish", f"epsilon={epsilon:g} delta={delta:g}",
                             [rec.id], rec.sources)  # fmt: skip
        out = torch.from_numpy(np.array(noisy, dtype=np.float64).reshape(shape))
        if dtype.is_floating_point:
            out = out.to(dtype)
        return Value(tensor_to_data(out.contiguous()))

    def check_budget(self, user: int, dataset: str, release: Release) -> float:
        """Refuse (BudgetExceeded) a release that would take ``user``'s spend on ``dataset``
        past its budget; returns the spend it would bring (ε at the budget's δ)."""
        key = (user, dataset)
        budget = self.budgets.get(key)
        email = self.node.email_of(user)
        if budget is None:
            raise BudgetExceeded(
                f"{email} has no privacy budget on dataset {dataset!r} of node "
                f"{self.node.name!r}; ask the node's owner "
                f"(veil budgets set --user {email} --dataset {dataset} --epsilon ...)"
            )
        past = self.ledger.get(key, [])
        before = spent_epsilon(past, delta=budget.delta)
        after = spent_epsilon([*past, release], delta=budget.delta)
        if after > budget.epsilon * (1 + 1e-12):
            raise BudgetExceeded(
                f"this release (epsilon={release.epsilon:g}, delta={release.delta:g}) would bring "
                f"{email}'s spend on dataset {dataset!r} of node {self.node.name!r} to "
                f"epsilon={after:.4g} (delta={budget.delta:g}), over the budget of "
                f"{budget.epsilon:g} (over your budget); {before:.4g} is spent. Ask the owner for more, or "
                "release with a smaller epsilon"
            )
        return after

    def charge(self, user: int, dataset: str, release: Release, detail: dict[str, Any]) -> float:
        """Charge ``release`` to ``user``'s budget on ``dataset`` (after
        :meth:`check_budget`, which it calls): the ledger entry is persisted with the message.
        For capabilities that release through their own mechanism (``veil.fl``'s noised
        updates). Returns the spend after it.

        Example:
            >>> import torch, veil
            >>> from veil.dp.ledger import Release, gaussian_rho
            >>> w = veil.VirtualWorker("n")
            >>> _ = w.datasets.create("d", private=torch.ones(2), mock=torch.zeros(2))
            >>> _ = w.budgets.set("owner@n.local", "d", epsilon=1.0, delta=1e-5)
            >>> dp, uid = w.node.capability_state("dp"), w.node.user_id_of("owner@n.local")
            >>> r = Release(0.5, 1e-6, gaussian_rho(0.5, 1e-6))
            >>> dp.charge(uid, "d", r, {}) <= 0.5
            True
        """
        after = self.check_budget(user, dataset, release)
        self._record(user, dataset, release, detail)
        return after

    def _record(self, user: int, dataset: str, release: Release, detail: dict[str, Any]) -> None:
        self.ledger.setdefault((user, dataset), []).append(release)
        self._seq += 1
        self.node.put_row(f"release:{self._seq}", RELEASE, {
            "seq": self._seq, "user": user, "dataset": dataset, "epsilon": release.epsilon,
            "delta": release.delta, "rho": release.rho, "mechanism": release.mechanism,
            "ts": time.time(), **detail,
        })  # fmt: skip

    def _releasable(self, rec: ObjectRecord, shape: tuple[int, ...]) -> Aggregate:
        b = self.bound_of_record(rec)
        if isinstance(b, Rowwise):
            b = b.as_aggregate(shape)
        if not isinstance(b, Aggregate):
            reason = b.reason if isinstance(b, Unbounded) else "no bound was tracked"
            raise UnboundedSensitivity(
                f"object {rec.id} cannot be published: its sensitivity is unbounded ({reason}). "
                "Build it from the dataset with ops veil can bound: clamp(lo, hi), column "
                "slices, arithmetic with public values, linear maps, sum/mean/count, histc; "
                "declare bounds when creating the dataset"
            )
        if b.value.nan:
            raise UnboundedSensitivity(
                f"object {rec.id} cannot be published: it may hold NaN (data without declared "
                "bounds, 0 * inf, inf - inf, sqrt of a negative...); replace it first, e.g. "
                "x.nan_to_num(0.0), and clamp"
            )
        if not (b.value.finite() and math.isfinite(b.l1) and math.isfinite(b.l2)):
            raise UnboundedSensitivity(
                f"object {rec.id} cannot be published: its values are not bounded (no declared "
                "bounds, or an op that may overflow); clamp them first, e.g. x.clamp(lo, hi)"
            )
        return b

    # -------------------------------------------------------------- budgets
    def set_budget(self, session: Session, msg: SetBudget) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins set privacy budgets")
        user = self.node.user_id_of(msg.user)
        if user is None:
            raise ObjectNotFound(f"node has no user {msg.user!r}")
        if not self.node.has_dataset(msg.dataset):
            raise ObjectNotFound(f"node has no dataset {msg.dataset!r}")
        if not (math.isfinite(msg.epsilon) and msg.epsilon >= 0) or not (0 <= msg.delta < 1):
            raise InvalidRequest("a budget needs epsilon >= 0 and delta in [0, 1)")
        key = (user, msg.dataset)
        self.budgets[key] = _Budget(float(msg.epsilon), float(msg.delta))
        self.node.put_row("budget:" + json.dumps([user, msg.dataset]), BUDGET, {
            "user": user, "dataset": msg.dataset, "epsilon": float(msg.epsilon),
            "delta": float(msg.delta),
        })  # fmt: skip
        self.node.write_audit(session, "set_budget",
                             f"{msg.user} on {msg.dataset}: epsilon={msg.epsilon:g} delta={msg.delta:g}")  # fmt: skip
        return self._info(key)

    def _info(self, key: tuple[int, str]) -> BudgetInfo:
        b = self.budgets[key]
        rel = self.ledger.get(key, [])
        return BudgetInfo(self.node.email_of(key[0]), key[1], b.epsilon, b.delta,
                          spent_epsilon(rel, delta=b.delta), math.fsum(r.delta for r in rel), len(rel))  # fmt: skip

    def list_budgets(self, session: Session, msg: ListBudgets) -> Reply:
        items = []
        for key in sorted(self.budgets, key=lambda k: (self.node.email_of(k[0]), k[1])):
            if not session.is_admin and key[0] != session.user_id:
                continue
            if msg.user is not None and self.node.email_of(key[0]) != msg.user:
                continue
            items.append(self._info(key))
        return BudgetList(items)


# ------------------------------------------------------------------ helpers (public facts only)
#: Beyond this a release protects nothing, and ε² (its zCDP cost) leaves float range.
_MAX_EPSILON = 1e6


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _arguments(msg: Publish) -> tuple[float, float]:
    """``(epsilon, delta)`` checked, each problem named (InvalidRequest)."""
    eps, delta = msg.epsilon, msg.delta
    if not (_number(eps) and math.isfinite(eps) and eps > 0):
        raise InvalidRequest(
            f"epsilon must be a positive number, got {eps!r}; typical values are 0.1-10"
        )
    if eps > _MAX_EPSILON:
        raise InvalidRequest(
            f"epsilon must be at most {_MAX_EPSILON:g}, got {eps!r}; typical values are 0.1-10"
        )
    if not (_number(delta) and math.isfinite(delta) and 0 <= delta < 1):
        raise InvalidRequest(
            f"delta must be in [0, 1), got {delta!r}; typical values are 0 or 1e-5-1e-9"
        )
    eps, delta = float(eps), float(delta)
    if delta > 0:
        try:
            rho = gaussian_rho(eps, delta)
        except (ValueError, OverflowError, ZeroDivisionError):
            rho = math.nan
        if not (math.isfinite(rho) and rho > 0):
            raise InvalidRequest(
                f"epsilon={eps:g} with delta={delta:g} has no Gaussian calibration; use "
                "epsilon in 1e-6-100 and delta in 1e-12-0.1"
            )
    return eps, delta


def _mechanism(release: Release, agg: Aggregate, lo: np.ndarray, hi: np.ndarray,  # type: ignore[type-arg]
               n: int) -> LaplaceMechanism | GaussianMechanism:  # fmt: skip
    """The mechanism of a release, checked able to sample it (public facts only). The
    sensitivity is raised, never lowered, to keep every value of the range on the grid."""
    mag = float(max(np.max(np.abs(lo.astype(np.float64))), np.max(np.abs(hi.astype(np.float64)))))
    floor = max(mag * max(n, 1) * 2.0**-39, max(n, 1) * 2.0**-900)
    try:
        mech: LaplaceMechanism | GaussianMechanism
        if release.mechanism == "laplace":
            mech = LaplaceMechanism(epsilon=release.epsilon, sensitivity=max(agg.l1, floor))
        else:
            mech = GaussianMechanism(epsilon=release.epsilon, delta=release.delta,
                                     sensitivity=max(agg.l2, floor))  # fmt: skip
        mech.check(n)
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        raise InvalidRequest(
            f"epsilon={release.epsilon:g} (delta={release.delta:g}) cannot be used for a release "
            f"of {n} values with sensitivity {agg.l1 if release.mechanism == 'laplace' else agg.l2:.4g} "
            f"({exc}); use epsilon in 1e-6-100"
        ) from None
    return mech


def _centre(rec: ObjectRecord, shape: tuple[int, ...], dtype: torch.dtype, exact: bool,
            lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]  # fmt: skip
    """The value the noise is added to: the object's value (zeros if its op failed), NaN
    as 0, then clipped into the bound's certified range — the identity on any value the
    bound describes, and a public constant otherwise."""
    base = torch.zeros(shape, dtype=dtype) if rec.error else rec.value.detach()
    if exact:
        arr = base.to(torch.int64).numpy()
        return np.clip(arr, lo.astype(np.int64), hi.astype(np.int64))
    arr = base.to(torch.float64).numpy()
    arr = np.where(np.isnan(arr), 0.0, arr)
    return np.clip(arr, lo.astype(np.float64), hi.astype(np.float64))


def _pair_ok(b: Any) -> bool:
    return (
        isinstance(b, list | tuple) and len(b) == 2 and all(_number(v) and not math.isnan(v) for v in b)
        and b[0] <= b[1]
    )  # fmt: skip


def _inside(x: torch.Tensor, bounds: list[tuple[float, float]]) -> bool:
    """Whether every value of ``x`` lies inside the declared bounds (exactly, integers too)."""
    if x.is_complex():
        return False
    if x.is_floating_point():
        lo = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
        hi = torch.tensor([b[1] for b in bounds], dtype=torch.float64)
        xd = x.to(torch.float64)
        return not (bool(((xd < lo) | (xd > hi)).any()) or bool(xd.isnan().any()))
    top = 2**63 - 1

    def as_int(v: float, ceil: bool) -> int:
        if math.isinf(v):
            return -top - 1 if v < 0 else top
        return max(-top - 1, min(top, math.ceil(v) if ceil else math.floor(v)))

    lo_i = torch.tensor([as_int(float(b[0]), True) for b in bounds], dtype=torch.int64)
    hi_i = torch.tensor([as_int(float(b[1]), False) for b in bounds], dtype=torch.int64)
    xi = x.to(torch.int64)
    return not bool(((xi < lo_i) | (xi > hi_i)).any())


#: Automatic DP as a node capability: sensitivity tracking through the node's hooks, and
#: the ``Publish``, ``SetBudget`` and ``ListBudgets`` messages.
CAPABILITY = Capability(
    "dp",
    state=NodeDP,
    handlers={
        Publish: NodeDP.publish,
        SetBudget: NodeDP.set_budget,
        ListBudgets: NodeDP.list_budgets,
    },
)
install(CAPABILITY)
