"""A plan as people read it: Python-like code with shapes, and a summary of what it does.

Example:
    >>> import torch, veil
    >>> @veil.plan
    ... def double_abs(x):
    ...     return torch.abs(x + x)
    >>> print(double_abs.build(torch.ones(2)))
    def double_abs(x: float32[2]):
        t2 = x + x  # float32[2]
        t3 = torch.abs(t2)  # float32[2]
        return t3
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from veil.serde.messages import (
    DictArg,
    DTypeArg,
    EllipsisArg,
    ListArg,
    ModuleSpec,
    Ref,
    SliceArg,
    TensorData,
    TupleArg,
)
from veil.serde.plans import PlanSlot, PlanSpec

_OPERATORS = {
    "__add__": "+", "__radd__": "+", "__sub__": "-", "__rsub__": "-", "__mul__": "*",
    "__rmul__": "*", "__truediv__": "/", "__rtruediv__": "/", "__floordiv__": "//",
    "__rfloordiv__": "//", "__mod__": "%", "__rmod__": "%", "__pow__": "**", "__rpow__": "**",
    "__matmul__": "@", "__rmatmul__": "@", "__and__": "&", "__rand__": "&", "__or__": "|",
    "__ror__": "|", "__xor__": "^", "__rxor__": "^", "__lshift__": "<<", "__rshift__": ">>",
    "__eq__": "==", "__ne__": "!=", "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">=",
    "__iadd__": "+=", "__isub__": "-=", "__imul__": "*=", "__itruediv__": "/=",
}  # fmt: skip
_UNARY = {"__neg__": "-", "__pos__": "+", "__abs__": "abs", "__invert__": "~"}


def _shape(slot: PlanSlot) -> str:
    dims = ", ".join(str(d) if d >= 0 else "*" for d in slot.shape)
    return f"{slot.dtype or 'any'}[{dims}]"


def _describe_module(spec: ModuleSpec) -> str:
    config = ", ".join(f"{k}={_const(v)}" for k, v in spec.config.items())
    if spec.children:
        inner = ", ".join(_describe_module(c) for _, c in spec.children)
        return f"{spec.cls}({inner})"
    return f"{spec.cls}({config})"


#: Constants with at most this many elements are shown in full; larger ones summarized.
SHOWN_ELEMENTS = 64


def _const(v: Any) -> str:
    if isinstance(v, TensorData):
        return _tensor_text(v)
    if isinstance(v, DTypeArg):
        return f"torch.{v.name}"
    if isinstance(v, EllipsisArg):
        return "..."
    if isinstance(v, SliceArg):
        parts = ["" if p is None else _const(p) for p in (v.start, v.stop, v.step)]
        return ":".join(parts).rstrip(":") or ":"
    if isinstance(v, ListArg):
        return "[" + ", ".join(_const(i) for i in v.items) + "]"
    if isinstance(v, TupleArg):
        inner = ", ".join(_const(i) for i in v.items)
        return f"({inner},)" if len(v.items) == 1 else f"({inner})"
    if isinstance(v, DictArg):
        return "{" + ", ".join(f"{k!r}: {_const(i)}" for k, i in v.items.items()) + "}"
    return repr(v)


def _tensor_text(v: TensorData) -> str:
    """A constant tensor as the owner reads it: its values, or (when large) its dtype,
    shape, range, mean and a digest of its bytes."""
    import hashlib

    from veil.serde.tensors import tensor_from_data

    t = tensor_from_data(v)
    if t.numel() <= SHOWN_ELEMENTS:
        return f"tensor({t.tolist()})" if t.dim() else f"tensor({t.item()})"
    shape = ", ".join(map(str, v.shape))
    f = t.double() if not t.is_complex() else t.abs().double()
    stats = f"min={f.min().item():.4g}, max={f.max().item():.4g}, mean={f.mean().item():.4g}"
    digest = hashlib.sha256(bytes(v.data)).hexdigest()[:16]
    return f"tensor<{v.dtype}[{shape}] {stats}, sha256 {digest}>"


class _Namer:
    def __init__(self, spec: PlanSpec) -> None:
        self.names: dict[int, str] = {}
        for s in spec.inputs:
            self.names[s.id] = s.name or f"in{s.id}"
        for s in spec.state:
            self.names[s.id] = f"self.{s.name}" if s.name else f"self.state{s.id}"
        self.slots = {s.id: s for s in [*spec.inputs, *spec.state, *spec.values]}

    def arg(self, v: Any) -> str:
        if isinstance(v, Ref):
            return self.names.get(v.id, f"t{v.id}")
        if isinstance(v, ListArg):
            return "[" + ", ".join(self.arg(i) for i in v.items) + "]"
        if isinstance(v, TupleArg):
            inner = ", ".join(self.arg(i) for i in v.items)
            return f"({inner},)" if len(v.items) == 1 else f"({inner})"
        if isinstance(v, SliceArg):
            parts = ["" if p is None else self.arg(p) for p in (v.start, v.stop, v.step)]
            return ":".join(parts).rstrip(":") or ":"
        return _const(v)

    def out(self, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, Ref):
            self.names.setdefault(v.id, f"t{v.id}")
            return self.names[v.id]
        items = [self.out(i) if i is not None else "_" for i in v.items]
        return ", ".join(items) if items else "()"

    def shapes(self, v: Any) -> str:
        if isinstance(v, Ref):
            s = self.slots.get(v.id)
            return _shape(s) if s is not None else "?"
        if isinstance(v, ListArg | TupleArg):
            return ", ".join(self.shapes(i) for i in v.items if i is not None)
        return ""


def _call(op: str, args: list[str], kwargs: list[str]) -> str:
    prefix, _, name = op.partition(".")
    every = ", ".join([*args[1:], *kwargs])
    if prefix == "Tensor":
        if name in _OPERATORS and len(args) == 2 and not kwargs:
            sym = _OPERATORS[name]
            if name.startswith("__r") and name not in ("__rshift__",):
                return f"{args[1]} {sym} {args[0]}"
            return f"{args[0]} {sym} {args[1]}"
        if name in _UNARY and len(args) == 1:
            sym = _UNARY[name]
            return f"abs({args[0]})" if sym == "abs" else f"{sym}{args[0]}"
        if name == "__getitem__" and len(args) == 2:
            return f"{args[0]}[{args[1].strip('()').rstrip(',') if args[1].startswith('(') else args[1]}]"
        if name == "__getattr__" and len(args) == 2:
            return f"{args[0]}.{args[1].strip(chr(39))}"
        return f"{args[0]}.{name}({every})"
    if prefix == "Module" and name == "__call__":
        return f"{args[0]}({every})"
    if prefix in ("Module", "Optimizer"):
        return f"{args[0]}.{name}({every})"
    return f"{op}({', '.join([*args, *kwargs])})"


def _defaults(op: str) -> dict[str, Any]:
    """The op's keyword defaults (to leave out of the code what the user did not write)."""
    import inspect

    from veil.ops import default_registry

    spec = default_registry().specs.get(op)
    try:
        params = inspect.signature(spec.fn).parameters if spec is not None else {}
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def code(spec: PlanSpec) -> str:
    """The plan as Python-like code, one line per op, each result's shape in a comment
    (see the module docstring)."""
    n = _Namer(spec)
    params = ", ".join(f"{n.names[s.id]}: {_shape(s)}" for s in spec.inputs)
    lines = [f"def {spec.name or 'plan'}({params}):"]
    for s in spec.state:
        if s.kind == "module" and s.module is not None:
            lines.append(f"    # {n.names[s.id]} = {_describe_module(s.module)}")
        elif s.kind == "optimizer" and s.optimizer is not None:
            opts = s.optimizer.groups[0].options if s.optimizer.groups else {}
            shown = ", ".join(f"{k}={_const(v)}" for k, v in opts.items() if k in ("lr", "momentum",
                              "weight_decay", "betas", "eps"))  # fmt: skip
            lines.append(f"    # {n.names[s.id]} = {s.optimizer.cls}({shown})")
        elif s.kind == "tensor":
            lines.append(f"    # {n.names[s.id]}: {_shape(s)} (state)")
    for op in spec.ops:
        args = [n.arg(a) for a in op.args]
        defaults = _defaults(op.op)
        kwargs = [
            f"{k}={n.arg(v)}" for k, v in op.kwargs.items()
            if not k.startswith("_") and not (k in defaults and defaults[k] == v)
        ]  # fmt: skip
        call = _call(op.op, args, kwargs)
        if op.out is None:
            lines.append(f"    {call}")
            continue
        target = n.out(op.out)
        lines.append(f"    {target} = {call}  # {n.shapes(op.out)}")
    lines.append(f"    return {n.arg(spec.outputs) if spec.outputs is not None else 'None'}")
    return "\n".join(lines)


def parameter_count(spec: PlanSpec) -> int:
    """Elements in the plan's state tensors and models' parameters and buffers."""
    total = 0
    for s in spec.state:
        tensors = [list(s.shape)] if s.kind == "tensor" else []
        if s.kind == "module" and s.module is not None:
            tensors = [list(t.shape) for t in s.module.state.values()]
        for shape in tensors:
            k = 1
            for d in shape:
                k *= d
            total += k
    return total


def summary(spec: PlanSpec, plan_hash: str) -> str:
    """Op counts, state and parameter counts, inputs and outputs, and the hash.

    Example:
        >>> import torch, veil
        >>> @veil.plan
        ... def f(x):
        ...     return torch.abs(x + x)
        >>> print(f.build(torch.ones(2)).summary())  # doctest: +ELLIPSIS
        plan f  (hash ...)
          inputs:  x: float32[2]
          outputs: float32[2]
          ops:     2 (Tensor.__add__ 1, torch.abs 1)
          state:   none (0 parameters)
    """
    n = _Namer(spec)
    counts = Counter(op.op for op in spec.ops)
    ops = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    state = ", ".join(f"{n.names[s.id]} ({s.kind})" for s in spec.state) or "none"
    outs = n.shapes(spec.outputs) if spec.outputs is not None else "nothing"
    ins = ", ".join(f"{n.names[s.id]}: {_shape(s)}" for s in spec.inputs) or "none"
    return "\n".join([
        f"plan {spec.name}  (hash {plan_hash[:16]})",
        f"  inputs:  {ins}",
        f"  outputs: {outs}",
        f"  ops:     {len(spec.ops)} ({ops})",
        f"  state:   {state} ({parameter_count(spec):,} parameters)",
    ])  # fmt: skip
