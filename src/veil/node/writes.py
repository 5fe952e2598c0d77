"""What ops write and read on a node: declared writes, in-place modules, autograd graphs, sizes."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
from torch import nn

from veil.node.objects import (
    ObjectRecord,
    autograd_graph,
    tensors_of,
)
from veil.ops import OpSpec

log = logging.getLogger("veil.node")


def span(t: torch.Tensor) -> int:
    """A tensor's size for output bounds: its dimensions' product, empty ones as 1, >= 2."""
    n = 1
    for d in t.shape:
        n *= d or 1
    return max(n, 2)


def elements(value: Any) -> int:
    """Elements of the tensors in an argument (lists and modules included)."""
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, list | tuple):
        return sum(elements(v) for v in value)
    return sum(t.numel() for t in tensors_of(value)) if isinstance(value, nn.Module) else 0


def versions(value: Any) -> list[int]:
    """Version counters of an object's tensors (torch bumps them on every in-place write)."""
    return [t._version for t in tensors_of(value)]


@functools.cache
def signature_of(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


#: Modules whose output may be their input itself or a view of it.
PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                 nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)  # fmt: skip


def writes_its_input(module: Any) -> bool:
    """Does calling ``module`` write into its input (``ReLU(inplace=True)`` first, or after
    layers that pass the input through)?"""
    return input_effect(module) == "writes"


def input_effect(module: Any) -> str:
    """Whether a module "writes" into its input, "passes" it (or a view) on, or makes a
    "new" tensor."""
    if isinstance(module, nn.Sequential):
        for m in module:
            effect = input_effect(m)
            if effect != "passes":
                return effect
        return "passes"
    if getattr(module, "inplace", False) is True:
        return "writes"
    return "passes" if isinstance(module, PASS_THROUGH) else "new"


def module_may_write(module: nn.Module) -> bool:
    """Can a forward pass write into the module itself (BatchNorm statistics in training,
    ``Embedding(max_norm=...)`` renormalizing the rows it looks up)?"""
    for m in module.modules():
        if getattr(m, "max_norm", None) is not None:
            return True
        if m.training and any(True for _ in m.buffers(recurse=False)):
            return True
    return False


def private_in(args: list[Any], inputs: list[ObjectRecord]) -> bool:
    """Does an argument hold (in a tuple or slice too) a tensor of a private input?"""
    ids = {id(r.value) for r in inputs if r.private}
    stack = list(args)
    while stack:
        a = stack.pop()
        if isinstance(a, torch.Tensor):
            if id(a) in ids:
                return True
        elif isinstance(a, list | tuple):
            stack.extend(a)
        elif isinstance(a, slice):
            stack.extend((a.start, a.stop, a.step))
    return False


def tensor_args(args: list[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(tensor_args(list(a)))
    return out


def graph_tensors(root: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
    """Tensors a ``root.backward()`` reads: the root, the graph's leaves (with their
    gradients) and every tensor its nodes saved; and whether a saved tensor could not be
    read because it was written in place since it was saved."""
    leaves, nodes = autograd_graph(root)
    out = [root, *leaves]
    unreadable = False
    for fn in nodes:
        for name in dir(fn):
            if name.startswith("_saved_"):
                try:
                    v = getattr(fn, name)
                except RuntimeError as exc:  # freed, or written in place since it was saved
                    unreadable = unreadable or "modified by an inplace" in str(exc)
                    continue
                if isinstance(v, torch.Tensor):
                    out.append(v)
                elif isinstance(v, list | tuple):
                    out.extend(t for t in v if isinstance(t, torch.Tensor))
    return out, unreadable


def may_write(spec: OpSpec) -> bool:
    """Can ``spec`` write into an argument other than through its declared effect?"""
    return spec.facts is not None and bool(spec.facts.writes)


def written_args(spec: OpSpec, args: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    """Arguments ``spec`` will write into besides its declared effect (``inplace=True``...)."""
    if spec.name.startswith("optim.") and args:  # an optimizer steps its parameters later
        out: list[Any] = []
        for group in args[0] if isinstance(args[0], list | tuple) else [args[0]]:
            params = group.get("params", []) if isinstance(group, dict) else group
            out.extend(params if isinstance(params, list | tuple) else [params])
        return out
    if spec.name == "Module.__call__" and args and writes_its_input(args[0]):
        return [a for a in [*args[1:], *kwargs.values()] if isinstance(a, torch.Tensor)]
    facts = spec.facts
    if facts is None or not facts.writes or spec.name == "Module.__call__":
        return []
    params, switch = facts.writes, facts.write_switch
    sig = signature_of(spec.fn)
    if sig is None or switch not in sig.parameters:
        return []
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return []  # the call itself will fail with torch's own message
    bound.apply_defaults()
    on = bound.arguments.get(switch)
    if on is None or on is False:
        return []
    return [bound.arguments[p] for p in params if bound.arguments.get(p) is not None]
