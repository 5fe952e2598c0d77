"""Object records: what a node stores, who may read it, and how privacy spreads through storage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from veil.serde.messages import ObjectInfo
from veil.serde.tensors import DTYPE_NAMES, dtype_name


@dataclass(slots=True, eq=False)
class ObjectRecord:
    """One stored object and its permissions.

    Attributes:
        owner: the user who created it (the only data scientist who may use it).
        private: derived from private data; ``get`` needs approval (or an admin).
        approved: users whose request to read this object was approved.
        sources: datasets it was derived from.
        asset_of: the dataset it belongs to, for a dataset's private data.
        label: what a capability made it as (``"mpc.share:arith"``...), so that its node
            ops accept only objects they made; results of ops whose private inputs all
            carry one label keep it. Empty for everything else.
        error: set when the op that made (or last wrote) it failed on private values: the
            object holds that error instead of a value (see :mod:`veil.node.kernel`).
        alias: the id its owner's client named it by (``RunOp.out``), if any.
    """

    id: int
    value: Any
    kind: str
    owner: int
    private: bool = False
    approved: set[int] = field(default_factory=set)
    sources: frozenset[str] = frozenset()
    asset_of: str | None = None
    description: str = ""
    created: float = field(default_factory=time.time)
    label: str = ""
    error: str = ""
    alias: int = 0

    def info(self, owner_email: str = "") -> ObjectInfo:
        v = self.value
        if self.kind == "tensor":
            return ObjectInfo(
                self.alias or self.id,
                "tensor",
                list(v.shape),
                DTYPE_NAMES.get(v.dtype) or dtype_name(v.dtype),
                v.requires_grad,
                self.private,
                owner_email,
                sorted(self.sources) if self.sources else [],
                description=self.description,
            )
        ext = _EXTENSIONS.get(self.kind)
        if ext is not None:
            shape, dtype = ext.describe(v)
            return ObjectInfo(
                self.alias or self.id, self.kind, shape, dtype, False, self.private, owner_email,
                sorted(self.sources), description=self.description,
            )  # fmt: skip
        names = [n for n, _ in v.named_parameters()] if self.kind == "module" else []
        return ObjectInfo(
            self.alias or self.id,
            self.kind,
            private=self.private,
            owner=owner_email,
            sources=sorted(self.sources),
            names=names,
            description=self.description,
        )

    def nbytes(self) -> int:
        ext = _EXTENSIONS.get(self.kind)
        if ext is not None:
            return ext.nbytes(self.value)
        return sum(t.numel() * t.element_size() for t in tensors_of(self.value))


def kind_of(value: Any) -> str | None:
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, nn.Module):
        return "module"
    if isinstance(value, torch.optim.Optimizer):
        return "optimizer"
    for ext in _EXTENSIONS.values():
        if isinstance(value, ext.types):
            return ext.kind
    return None


# ------------------------------------------------------------------ extension kinds
# Objects other than tensors and modules (encrypted tensors, public encryption contexts)
# are registered by the package that defines them (``veil.he``), which sits above the node.


@dataclass(frozen=True, slots=True)
class ValueKind:
    """How a node stores, describes and ships one extra kind of object.

    Attributes:
        kind: the ``ObjectRecord.kind`` / ``ObjectInfo.kind`` name.
        types: Python classes of the stored values.
        wire_types: the serde Structs that carry it.
        to_wire: ``(value, storage) -> Struct``; ``storage=True`` for the node's own store
            (self-contained), False for a reply to a client.
        from_wire: ``(struct, resolve) -> value``; ``resolve(id)`` returns another object
            the sender may use (None when loading from the store).
        describe: ``value -> (shape, dtype text)`` for :class:`ObjectInfo`.
        nbytes: ``value -> bytes held``.
        load_order: stored objects load in ascending order of this (objects that others
            refer to, such as public contexts, first).
    """

    kind: str
    types: tuple[type, ...]
    wire_types: tuple[type, ...]
    to_wire: Callable[[Any, bool], Any]
    from_wire: Callable[[Any, Callable[[int], Any] | None], Any]
    describe: Callable[[Any], tuple[list[int], str]]
    nbytes: Callable[[Any], int]
    load_order: int = 0


_EXTENSIONS: dict[str, ValueKind] = {}


def register_kind(ext: ValueKind) -> None:
    """Teach nodes a new kind of object (refuses a second registration of a name)."""
    if ext.kind in _EXTENSIONS or ext.kind in ("tensor", "module", "optimizer"):
        raise ValueError(f"object kind {ext.kind!r} is already registered")
    _EXTENSIONS[ext.kind] = ext


def load_order(kind: str) -> int:
    """Where objects of ``kind`` come when a node loads its store (tensors, modules: 0)."""
    ext = _EXTENSIONS.get(kind)
    return ext.load_order if ext is not None else 0


def extension_for(value: Any) -> ValueKind | None:
    """The registered kind of a stored value or of a wire Struct, if any."""
    for ext in _EXTENSIONS.values():
        if isinstance(value, ext.types) or isinstance(value, ext.wire_types):
            return ext
    return None


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors an object holds (for storage aliasing and size accounting): a tensor
    and its gradient, a module's parameters, buffers and gradients, an optimizer's
    parameters, their gradients and its state (momentum...). Private data written into
    any of them makes the object private."""
    if isinstance(value, torch.Tensor):
        grad = value.grad if value.is_leaf or value.retains_grad else None
        return [value] if grad is None else [value, grad]
    if isinstance(value, nn.Module):
        out = list(value.parameters()) + list(value.buffers())
        return out + [p.grad for p in value.parameters() if p.grad is not None]
    if isinstance(value, torch.optim.Optimizer):
        params = [p for g in value.param_groups for p in g["params"]]
        state = [t for s in value.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return params + [p.grad for p in params if p.grad is not None] + state
    return []


def storage_keys(tensors: Any) -> set[int]:
    """Addresses of the storages behind ``tensors`` (views share their base's address)."""
    keys = set()
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            ptr = t.untyped_storage().data_ptr()
            if ptr:
                keys.add(ptr)
    return keys


def autograd_leaves(root: torch.Tensor) -> list[torch.Tensor]:
    """Leaf tensors that ``root.backward()`` writes gradients into (and their grads)."""
    return autograd_graph(root)[0]


def autograd_graph(root: torch.Tensor) -> tuple[list[torch.Tensor], set[Any]]:
    """(the leaves ``root.backward()`` writes gradients into, with their grads; the graph's
    nodes), so non-leaf tensors that retain their gradient can be found too."""
    out: list[torch.Tensor] = []
    if root.grad_fn is None:
        return ([root] if root.requires_grad else []), set()
    seen: set[Any] = set()
    stack = [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor):
            out.append(var)
            if var.grad is not None:
                out.append(var.grad)
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return out, seen
