"""Torch optimizers of allowlisted classes <-> :class:`OptimizerSpec` (no pickle, no code).

An optimizer is described by data only: its class name (looked up in
``veil.ops.OPTIMIZER_CLASSES`` when rebuilt), its constructor defaults, each parameter
group's hyperparameters, and its per-parameter state. Its parameters are usually tensors
other objects hold (a model's parameters): the caller names them with ``ref`` and finds
them again with ``resolve``, so that a rebuilt optimizer steps those very tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from veil.errors import OpNotAllowed, SerdeError, UnsupportedError
from veil.ops.modules import OPTIMIZER_CLASSES, OPTIMIZER_NAMES
from veil.serde.messages import OptimizerGroup, OptimizerSpec, ParamRef, TensorData
from veil.serde.tensors import tensor_from_data, tensor_to_data
from veil.serde.values import from_arg, to_arg

__all__ = ["optimizer_to_spec", "spec_to_optimizer"]


def _no_ref(_obj: Any) -> None:
    return None


def _no_resolve(_ref: Any) -> Any:
    raise SerdeError("an optimizer description refers to no objects")


def optimizer_to_spec(
    optimizer: torch.optim.Optimizer, ref: Callable[[torch.Tensor], ParamRef | None] = _no_ref
) -> OptimizerSpec:
    """Describe ``optimizer``; ``ref(param)`` names a parameter some other object holds
    (None: the description carries the tensor itself).

    Raises:
        UnsupportedError: its class is not allowlisted, or its state holds something
            other than tensors, numbers, strings and lists of them.

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
        >>> w.sum().backward(); opt.step()
        >>> spec = optimizer_to_spec(opt)
        >>> spec.cls, spec.groups[0].options["momentum"], sorted(spec.state[0])
        ('SGD', 0.9, ['momentum_buffer'])
    """
    name = OPTIMIZER_NAMES.get(type(optimizer))
    if name is None:
        raise UnsupportedError(
            f"{type(optimizer).__name__} is not an allowlisted optimizer; use one of "
            f"{sorted(OPTIMIZER_CLASSES)}"
        )
    saved = optimizer.state_dict()
    groups = []
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        params: list[ParamRef | TensorData] = []
        for p in group["params"]:
            r = ref(p)
            params.append(r if r is not None else tensor_to_data(p))
        options = {k: to_arg(v, _no_ref) for k, v in saved_group.items() if k != "params"}
        groups.append(OptimizerGroup(params, options))
    count = sum(len(g.params) for g in groups)
    state = [
        {k: to_arg(v, _no_ref) for k, v in saved["state"].get(i, {}).items()} for i in range(count)
    ]
    defaults = {k: to_arg(v, _no_ref) for k, v in optimizer.defaults.items()}
    return OptimizerSpec(name, groups, defaults, state)


def spec_to_optimizer(
    spec: OptimizerSpec, resolve: Callable[[ParamRef], torch.Tensor] = _no_resolve
) -> torch.optim.Optimizer:
    """Build the optimizer ``spec`` describes over the tensors ``resolve`` finds for its
    references, and load its state.

    Raises:
        OpNotAllowed: the class is not on the allowlist.
        SerdeError: the description does not fit the class (or refers to a missing tensor).

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> opt = torch.optim.Adam([w], lr=0.1)
        >>> w.sum().backward(); opt.step()
        >>> spec = optimizer_to_spec(opt, lambda p: ParamRef(1) if p is w else None)
        >>> again = spec_to_optimizer(spec, lambda r: w)
        >>> again.param_groups[0]["params"][0] is w, again.state[w]["step"].item()
        (True, 1.0)
    """
    cls = OPTIMIZER_CLASSES.get(spec.cls)
    if cls is None:
        raise OpNotAllowed(
            f"optimizer class {spec.cls[:60]!r} is not on this node's allowlist; see "
            "veil.ops.OPTIMIZER_CLASSES"
        )
    try:
        groups = [
            [resolve(p) if isinstance(p, ParamRef) else tensor_from_data(p, copy=True)
             for p in group.params]
            for group in spec.groups
        ]  # fmt: skip
        accepted = inspect.signature(cls.__init__).parameters
        defaults = {k: from_arg(v, _no_resolve) for k, v in spec.defaults.items() if k in accepted}
        optimizer = cls([{"params": params} for params in groups], **defaults)
        index, saved_groups = 0, []
        for group, params in zip(spec.groups, groups, strict=True):
            options = {k: from_arg(v, _no_resolve) for k, v in group.options.items()}
            saved_groups.append({**options, "params": list(range(index, index + len(params)))})
            index += len(params)
        if len(spec.state) not in (0, index):
            raise SerdeError(f"state for {len(spec.state)} parameters, the groups have {index}")
        state = {
            i: {k: from_arg(v, _no_resolve) for k, v in s.items()}
            for i, s in enumerate(spec.state)
            if s
        }
        optimizer.load_state_dict({"state": state, "param_groups": saved_groups})
    except (SerdeError, OpNotAllowed):
        raise
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise SerdeError(f"cannot rebuild a {spec.cls} optimizer: {exc}") from exc
    return optimizer
