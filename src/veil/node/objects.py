"""Object records: what a node stores, who may read it, and how privacy spreads through storage."""

from __future__ import annotations

import time
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

    def info(self, owner_email: str = "") -> ObjectInfo:
        v = self.value
        if self.kind == "tensor":
            return ObjectInfo(
                self.id,
                "tensor",
                list(v.shape),
                DTYPE_NAMES.get(v.dtype) or dtype_name(v.dtype),
                v.requires_grad,
                self.private,
                owner_email,
                sorted(self.sources) if self.sources else [],
                description=self.description,
            )
        names = [n for n, _ in v.named_parameters()] if self.kind == "module" else []
        return ObjectInfo(
            self.id,
            self.kind,
            private=self.private,
            owner=owner_email,
            sources=sorted(self.sources),
            names=names,
            description=self.description,
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in tensors_of(self.value))


def kind_of(value: Any) -> str | None:
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, nn.Module):
        return "module"
    if isinstance(value, torch.optim.Optimizer):
        return "optimizer"
    return None


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors an object holds (for storage aliasing and size accounting)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.Module):
        out = list(value.parameters()) + list(value.buffers())
        return out + [p.grad for p in value.parameters() if p.grad is not None]
    if isinstance(value, torch.optim.Optimizer):
        return [p for g in value.param_groups for p in g["params"]]
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
    out: list[torch.Tensor] = []
    if root.grad_fn is None:
        return [root] if root.requires_grad else []
    seen = set()
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
    return out
