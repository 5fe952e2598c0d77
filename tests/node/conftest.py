"""Fixtures for node tests: a white-box snapshot of everything a node holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from veil.node import Node
from veil.serde.tensors import tensor_from_data


@pytest.fixture
def snapshot() -> Callable[[Node], dict[str, Any]]:
    """``snapshot(node)``: everything a node holds that must equal what its store holds
    (compare a node with one freshly loaded from the same database)."""
    return _state


def _tensor_state(t: torch.Tensor) -> tuple[Any, ...]:
    flat = t.detach().reshape(-1).contiguous()
    return (str(t.dtype), tuple(t.shape), t.requires_grad, bytes(flat.view(torch.uint8).numpy()))


def _slots(value: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [("", value)]
    if isinstance(value, nn.Module):
        return [*value.named_parameters(), *value.named_buffers()]
    return []


def _state(node: Node) -> dict[str, Any]:
    """Everything a node holds that must equal what its store holds: objects (metadata,
    values, which of their tensors share memory and which are the same tensor), users,
    datasets, requests, capability rows, budgets and the DP ledger."""
    objects: dict[int, Any] = {}
    by_storage: dict[int, list[tuple[int, str, torch.Tensor]]] = {}
    for oid, rec in node._objects.items():
        meta = (rec.kind, rec.owner, rec.private, sorted(rec.approved), sorted(rec.sources),
                rec.asset_of, rec.description, rec.created, rec.label, rec.error, rec.alias)  # fmt: skip
        v = rec.value
        if isinstance(v, torch.Tensor):
            value: Any = _tensor_state(v)
        elif isinstance(v, nn.Module):
            value = (
                type(v).__name__,
                [m.training for m in v.modules()],
                {k: _tensor_state(t) for k, t in _slots(v)},
            )
        elif isinstance(v, torch.optim.Optimizer):
            sd = v.state_dict()
            value = (
                type(v).__name__,
                [{k: x for k, x in g.items() if k != "params"} for g in sd["param_groups"]],
                {
                    i: {
                        k: _tensor_state(x) if isinstance(x, torch.Tensor) else x
                        for k, x in s.items()
                    }
                    for i, s in sd["state"].items()
                },  # fmt: skip
                [
                    sorted(  # each parameter: the records' tensors it is
                        (o, n)
                        for o, r in node._objects.items()
                        for n, t in _slots(r.value)
                        if t is p
                    )
                    for g in v.param_groups
                    for p in g["params"]
                ],  # fmt: skip
            )
        else:
            value = rec.kind
        objects[oid] = (meta, value)
        for name, t in _slots(v):
            if t.numel():
                by_storage.setdefault(t.untyped_storage().data_ptr(), []).append((oid, name, t))
    shared = set()
    for group in by_storage.values():
        if len(group) > 1:
            low = min(t.storage_offset() for _, _, t in group)
            shared.add(frozenset(
                (oid, name, t.storage_offset() - low, tuple(t.shape), t.stride(),
                 next((o, n) for o, n, u in group if u is t))  # the first record holding it
                for oid, name, t in group
            ))  # fmt: skip
    datasets = {
        d.name: (d.description, d.created, [(n, o, _tensor_state(tensor_from_data(m)), c, b, s)
                                             for n, o, m, c, b, s in d.assets])
        for d in node._datasets.values()
    }  # fmt: skip
    return {
        "objects": objects,
        "shared": shared,
        "users": dict(node._users),
        "datasets": datasets,
        "requests": {
            k: (r.object_id, r.requester, r.reason, r.status, r.decided_by, r.note)
            for k, r in node._requests.items()
        },  # fmt: skip
        "rows": node._rows,
        "budgets": {
            k: (b.epsilon, b.delta) for k, b in node.capability_state("dp").budgets.items()
        },
        "ledger": {k: list(v) for k, v in node.capability_state("dp").ledger.items()},
    }
