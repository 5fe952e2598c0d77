"""How a node stores objects that share tensors: views and optimizers refer to what they alias.

A scientist's objects share memory: ``model.parameters()`` stores each parameter as an
object holding the module's very tensor, ``x[0]`` or ``x.T`` is a view of ``x``, and an
optimizer holds the parameters it steps. Stored one payload each, they would come back
from the store as separate copies, and training after a restart would update copies.
So each object is stored in one of three forms:

* **its own value** (a ``Value`` frame): every module and extension object, and every
  tensor whose memory no other object's tensor covers;
* **a view** (:class:`~veil.serde.messages.TensorView`) of the tensor that *owns* its
  memory: among the objects' contiguous tensors on that memory, a module's first, then the
  one covering the most of it, then the oldest object's. It is rebuilt with
  ``as_strided`` on the owner's loaded tensor, or *is* that tensor (a parameter's record);
* **an optimizer** (:class:`~veil.serde.messages.OptimizerSpec`) whose parameters are
  references (:class:`~veil.serde.messages.ParamRef`) to the objects holding them.

A node loads the first form, then views, then optimizers (:func:`load_tier`). A view row
only ever names an owner whose own row is its value, which :class:`Aliasing` keeps true
as objects change: it knows which objects share memory (an index by storage) and, for each
owner others may refer to, the layout and versions its stored row has, so a commit also
rewrites an owner whose data changed through a view, and the objects that referred to an
owner that is deleted or re-laid out. Memory shared in ways a view cannot express (a view
with another dtype, one reaching outside its owner) is stored as a copy, as before.

Only nodes with a persistent store keep this bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from veil.errors import SerdeError
from veil.node.objects import ObjectRecord
from veil.serde.messages import OptimizerSpec, ParamRef, TensorView
from veil.serde.optimizers import optimizer_to_spec, spec_to_optimizer

__all__ = [
    "Aliasing",
    "Plan",
    "build_optimizer",
    "build_view",
    "load_tier",
    "restore_into",
    "same_view",
    "slot_of",
    "slots",
]

#: A record's stored form other than its own value.
Form = TensorView | OptimizerSpec | None


def slots(value: Any) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of an object that others may share: a tensor itself (""), or a
    module's parameters and buffers by name.

    Example:
        >>> [name for name, _ in slots(nn.BatchNorm1d(2))][:3]
        ['weight', 'bias', 'running_mean']
    """
    if isinstance(value, torch.Tensor):
        return [("", value)]
    if isinstance(value, nn.Module):
        return [*value.named_parameters(), *value.named_buffers()]
    return []


def slot_of(value: Any, name: str) -> torch.Tensor:
    """The tensor ``name`` of an object (see :func:`slots`).

    Raises:
        SerdeError: it has none of that name.
    """
    if name == "" and isinstance(value, torch.Tensor):
        return value
    if isinstance(value, nn.Module):
        try:
            return value.get_parameter(name)
        except AttributeError:
            try:
                return value.get_buffer(name)
            except AttributeError:
                pass
    raise SerdeError(f"the stored object has no tensor {name!r}")


def _key(t: torch.Tensor) -> int:
    """The address of a tensor's storage (0 for none: meta or empty)."""
    if t.device.type == "meta":
        return 0
    return int(t.untyped_storage().data_ptr())


def _keys(rec: ObjectRecord) -> set[int]:
    value = rec.value
    if isinstance(value, torch.Tensor):  # the common case
        k = _key(value)
        return {k} if k else set()
    if isinstance(value, torch.optim.Optimizer):
        tensors: Iterable[torch.Tensor] = (p for g in value.param_groups for p in g["params"])
    else:
        tensors = (t for _, t in slots(value))
    return {k for t in tensors if (k := _key(t))}


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """The first and last storage element ``t`` reaches."""
    low = int(t.storage_offset())
    return low, low + sum((int(n) - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))


def _layout(value: Any) -> tuple[Any, ...]:
    return tuple(
        (name, _key(t), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        for name, t in slots(value)
    )


def _versions(value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return (value._version,)
    return tuple(t._version for _, t in slots(value))


def load_tier(form: Any) -> int:
    """Where a stored object loads: values (0) before views (1) before optimizers (2).

    Example:
        >>> load_tier(TensorView(1, "", 0, [2], [1])), load_tier(None)
        (1, 0)
    """
    if isinstance(form, TensorView):
        return 1
    if isinstance(form, OptimizerSpec):
        return 2
    return 0


def build_view(view: TensorView, base: Any) -> torch.Tensor:
    """Rebuild a stored view on its base object's loaded value.

    Raises:
        SerdeError: the base has no such tensor, or the view reaches outside it.

    Example:
        >>> x = torch.arange(6.0)
        >>> v = build_view(TensorView(0, "", 2, [2], [1]), x)
        >>> _ = v.add_(10); x
        tensor([ 0.,  1., 12., 13.,  4.,  5.])
    """
    t = slot_of(base, view.slot)
    shape, stride = tuple(view.shape), tuple(view.stride)
    if view.same:
        if tuple(t.shape) != shape or t.stride() != stride:
            raise SerdeError(f"stored parameter {view.slot!r} changed shape")
        return t
    if len(shape) != len(stride) or min((*shape, *stride, view.offset), default=0) < 0:
        raise SerdeError("invalid stored view")
    top = view.offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if 0 in shape or top >= t.numel() or not t.is_contiguous():
        raise SerdeError("a stored view reaches outside the tensor it views")
    source = t if not view.leaf and t.requires_grad else t.detach()
    out = source.as_strided(shape, stride, t.storage_offset() + view.offset)
    if view.leaf and view.requires_grad:
        out.requires_grad_(True)
    return out


def restore_into(current: Any, loaded: Any) -> bool:
    """Copy a loaded value's data into a live one, keeping its tensors (other objects and
    optimizers hold them); False when their structures differ (then replace it).

    Example:
        >>> live = torch.zeros(3); alias = live[1:]
        >>> restore_into(live, torch.arange(3.0)), alias
        (True, tensor([1., 2.]))
    """
    if isinstance(current, torch.Tensor) and isinstance(loaded, torch.Tensor):
        pairs = [(current, loaded)]
    elif isinstance(current, nn.Module) and isinstance(loaded, nn.Module):
        have, want = dict(slots(current)), dict(slots(loaded))
        if have.keys() != want.keys() or len(list(current.modules())) != len(
            list(loaded.modules())
        ):
            return False
        pairs = [(have[k], want[k]) for k in have]
    else:
        return False
    if any(a.shape != b.shape or a.dtype != b.dtype for a, b in pairs):
        return False
    with torch.no_grad():
        for a, b in pairs:
            a.copy_(b)
            if a.is_leaf and a.requires_grad != b.requires_grad:
                a.requires_grad_(b.requires_grad)
    if isinstance(current, nn.Module):
        for m, n in zip(current.modules(), loaded.modules(), strict=True):
            m.training = n.training
    return True


@dataclass(slots=True)
class Plan:
    """What one commit writes for objects (see :meth:`Aliasing.plan`)."""

    #: id -> stored form (None: the object's own value)
    forms: dict[int, Form] = field(default_factory=dict)
    #: the bookkeeping the rows being written imply, applied once the write succeeded
    owners: dict[int, tuple[Any, ...] | None] = field(default_factory=dict)
    refs: dict[int, frozenset[int] | None] = field(default_factory=dict)
    saved: dict[int, tuple[int, ...]] = field(default_factory=dict)


class Aliasing:
    """A node's bookkeeping for storing objects that share tensors (see the module doc).

    Example:
        >>> from veil.node.objects import ObjectRecord
        >>> x = torch.arange(4.0)
        >>> base, view = ObjectRecord(1, x, "tensor", 1), ObjectRecord(2, x[1:], "tensor", 1)
        >>> objects = {1: base, 2: view}
        >>> al = Aliasing(); al.track(base); al.track(view)
        >>> al.form(view, objects)
        TensorView(base=1, slot='', offset=1, shape=[3], stride=[1], same=False, leaf=True, requires_grad=False)
        >>> al.form(base, objects) is None
        True
    """

    def __init__(self) -> None:
        #: storage address -> ids of the objects holding a tensor on it
        self._by_key: dict[int, set[int]] = {}
        #: object id -> the storage addresses it is indexed under
        self._held: dict[int, set[int]] = {}
        #: owners others' stored rows may refer to -> the layout their own row has
        self._owners: dict[int, tuple[Any, ...]] = {}
        #: optimizers -> the objects their stored row refers to
        self._refs: dict[int, frozenset[int]] = {}
        #: tensor and module objects -> the versions of their tensors as last stored
        self._saved: dict[int, tuple[int, ...]] = {}

    def clear(self) -> None:
        for table in (self._by_key, self._held, self._owners, self._refs, self._saved):
            table.clear()

    # ------------------------------------------------------------- the index
    def track(self, rec: ObjectRecord) -> None:
        """Index an object's tensors (again, after they may have moved)."""
        keys = _keys(rec)
        held = self._held.get(rec.id)
        if held == keys:
            return
        if held:
            self.untrack(rec)
        self._held[rec.id] = keys
        for k in keys:
            self._by_key.setdefault(k, set()).add(rec.id)

    def untrack(self, rec: ObjectRecord) -> None:
        """Drop a deleted object from the index."""
        for k in self._held.pop(rec.id, ()):
            ids = self._by_key.get(k)
            if ids is not None:
                ids.discard(rec.id)
                if not ids:
                    del self._by_key[k]

    def forget(self, oid: int) -> None:
        """Drop the bookkeeping of an object whose row is gone."""
        for table in (self._owners, self._refs, self._saved):
            table.pop(oid, None)

    def on_storage(self, keys: set[int], objects: dict[int, ObjectRecord],
                   but: int = 0) -> list[ObjectRecord]:  # fmt: skip
        """The live objects holding a tensor on any of these storages (except ``but``)."""
        by_key = self._by_key
        if len(keys) == 1:
            ids: Iterable[int] = by_key.get(next(iter(keys)), ())
        else:
            ids = set().union(*(by_key.get(k, ()) for k in keys))
        return [
            r for i in ids if i != but and (r := objects.get(i)) is not None and _keys(r) & keys
        ]

    def sharing(self, rec: ObjectRecord, objects: dict[int, ObjectRecord]) -> list[ObjectRecord]:
        """The other live objects holding a tensor on ``rec``'s memory."""
        return self.on_storage(_keys(rec), objects, but=rec.id)

    def alone(self, rec: ObjectRecord) -> bool:
        """Does no other object hold a tensor on ``rec``'s memory (as far as the index
        knows: a quick test before the exact one)?"""
        by_key, me = self._by_key, rec.id
        keys = self._held.get(me)
        if keys is None:
            keys = _keys(rec)
        for k in keys:
            ids = by_key.get(k)
            if ids and (len(ids) > 1 or me not in ids):
                return False
        return True

    # ------------------------------------------------------------- stored forms
    def _owner(self, key: int, candidates: Iterable[ObjectRecord]) -> tuple[Any, ...] | None:
        best = None
        for rec in candidates:
            if rec.kind not in ("tensor", "module"):
                continue
            for name, t in slots(rec.value):
                if t.numel() and _key(t) == key and t.is_contiguous():
                    rank = (rec.kind != "module", -t.numel(), rec.created, rec.id)
                    if best is None or rank < best[0]:
                        best = (rank, rec, name, t)
        return best

    def form(self, rec: ObjectRecord, objects: dict[int, ObjectRecord]) -> Form:
        """How ``rec`` is stored: None (its own value), a :class:`TensorView` of its memory's
        owner, or an :class:`OptimizerSpec`."""
        value = rec.value
        if isinstance(value, torch.optim.Optimizer):
            return optimizer_to_spec(value, lambda p: self._ref(p, objects))
        if rec.kind != "tensor" or not isinstance(value, torch.Tensor) or not value.numel():
            return None
        key = _key(value)
        others = self._by_key.get(key)
        if not key or not others or others == {rec.id}:
            return None  # the common case: nobody else holds this memory
        best = self._owner(key, [rec, *self.sharing(rec, objects)])
        if best is None or best[1] is rec:
            return None
        _, owner, name, base = best
        low, high = _extent(value)
        start = int(base.storage_offset())
        if base.dtype != value.dtype or low < start or high >= start + base.numel():
            return None  # not expressible as a view of the owner: stored as a copy
        return TensorView(
            owner.id, name, low - start, list(value.shape), list(value.stride()),
            same=value is base, leaf=value.grad_fn is None,
            requires_grad=value.requires_grad and value.grad_fn is None,
        )  # fmt: skip

    def _ref(self, p: torch.Tensor, objects: dict[int, ObjectRecord]) -> ParamRef | None:
        best = None
        for i in self._by_key.get(_key(p), ()):
            rec = objects.get(i)
            if rec is None or rec.kind not in ("tensor", "module"):
                continue
            for name, t in slots(rec.value):
                if t is p:
                    rank = (rec.kind != "module", rec.created, rec.id)
                    if best is None or rank < best[0]:
                        best = (rank, rec.id, name)
        return ParamRef(best[1], best[2]) if best is not None else None

    def restorable(self, rec: ObjectRecord, objects: dict[int, ObjectRecord]) -> bool:
        """May a rollback copy stored data into ``rec``'s own tensors? Yes for a module and
        for a tensor that owns its memory; a tensor stored as a copy of shared memory (a
        view with another dtype...) gets a tensor of its own instead, as after a restart."""
        if rec.kind == "module":
            return True
        if rec.kind != "tensor" or not isinstance(rec.value, torch.Tensor):
            return False
        sharing = self.sharing(rec, objects)
        if not sharing:
            return True
        best = self._owner(_key(rec.value), [rec, *sharing])
        return best is not None and best[1] is rec

    def written(self, rec: ObjectRecord) -> bool:
        """Were ``rec``'s tensors written since its row was last stored (or loaded)?"""
        return self._saved.get(rec.id) != _versions(rec.value)

    # ------------------------------------------------------------- a commit
    def plan(self, dirty: Iterable[int], objects: dict[int, ObjectRecord]) -> Plan:
        """The forms of everything a commit must write: the ``dirty`` objects, plus owners
        whose stored row lags behind their data or layout (written through a view), plus
        the objects whose rows referred to an owner that stops being one (or changes its
        layout). Apply the result with :meth:`commit` once the write succeeded."""
        plan = Plan()
        forms = plan.forms
        work = [i for i in dirty if i in objects]
        while work:
            oid = work.pop()
            if oid in forms:
                continue
            rec = objects[oid]
            form = forms[oid] = self.form(rec, objects)
            if isinstance(form, OptimizerSpec):
                plan.refs[oid] = frozenset(
                    p.record for g in form.groups for p in g.params if isinstance(p, ParamRef)
                )
                continue
            if rec.kind not in ("tensor", "module"):
                continue
            plan.saved[oid] = _versions(rec.value)
            was_owner = oid in self._owners
            if form is None and not was_owner and self.alone(rec):
                continue  # the common case: a tensor nobody else holds, and nobody did
            if isinstance(form, TensorView):
                base = objects[form.base]
                if form.base not in forms and (
                    self._owners.get(form.base) != _layout(base.value) or self.written(base)
                ):
                    work.append(form.base)  # written through this view, or not an owner yet
                plan.owners[oid] = None
                if was_owner:  # the rows that referred to it must point elsewhere now
                    work.extend(self.dependents(rec, objects))
                continue
            sharing = self.sharing(rec, objects)
            layout = _layout(rec.value) if sharing else None
            plan.owners[oid] = layout
            if was_owner and layout != self._owners[oid]:
                work.extend(r.id for r in sharing)
        return plan

    def commit(self, plan: Plan, deleted: Iterable[int] = ()) -> None:
        """Record what the rows just written say (see :meth:`plan`), and forget the rows
        just deleted."""
        if plan.owners:
            self._commit_owners(plan)
        if plan.refs:
            for oid, refs in plan.refs.items():
                if refs is None:
                    self._refs.pop(oid, None)
                else:
                    self._refs[oid] = refs
        self._saved.update(plan.saved)
        for oid in deleted:
            self.forget(oid)

    def _commit_owners(self, plan: Plan) -> None:
        for oid, layout in plan.owners.items():
            if layout is None:
                self._owners.pop(oid, None)
            else:
                self._owners[oid] = layout

    def dependents(self, rec: ObjectRecord, objects: dict[int, ObjectRecord]) -> list[int]:
        """Objects whose stored rows may refer to ``rec`` (to rewrite when it goes away)."""
        if self.alone(rec):
            return []
        owner = rec.id in self._owners
        return [
            other.id
            for other in self.sharing(rec, objects)
            if rec.id in self._refs.get(other.id, ()) or (owner and other.kind == "tensor")
        ]

    def settle(self, recs: Iterable[ObjectRecord], forms: dict[int, Any],
               objects: dict[int, ObjectRecord]) -> None:  # fmt: skip
        """Set the bookkeeping of objects just loaded or restored from their rows, given
        each one's decoded stored form."""
        for rec in recs:
            self.forget(rec.id)
            form = forms.get(rec.id)
            if isinstance(form, OptimizerSpec):
                self._refs[rec.id] = frozenset(
                    p.record for g in form.groups for p in g.params if isinstance(p, ParamRef)
                )
            elif rec.kind in ("tensor", "module"):
                self._saved[rec.id] = _versions(rec.value)
                if not isinstance(form, TensorView) and self.sharing(rec, objects):
                    self._owners[rec.id] = _layout(rec.value)


def same_view(current: Any, built: torch.Tensor) -> bool:
    """Is a live tensor already the view a stored row describes (keep it: others hold it)?"""
    return current is built or (
        isinstance(current, torch.Tensor)
        and _key(current) == _key(built)
        and _layout(current) == _layout(built)
        and current.requires_grad == built.requires_grad
    )


def build_optimizer(spec: OptimizerSpec, lookup: Callable[[int], Any]) -> torch.optim.Optimizer:
    """Rebuild a stored optimizer over the tensors of already loaded objects."""

    def resolve(ref: ParamRef) -> torch.Tensor:
        value = lookup(ref.record)
        if value is None:
            raise SerdeError(f"the stored optimizer steps object {ref.record}, which is missing")
        return slot_of(value, ref.slot)

    return spec_to_optimizer(spec, resolve)
