"""A plan's program: checking one (what a node does before it stores a plan) and running it locally.

:func:`check` refuses anything that is not a well-formed plan of allowlisted torch ops:
an op off the allowlist or a capability's node op, a slot used before it is defined, a
result written over a defined slot (other than an in-place op's own input), malformed
state, or more than :data:`MAX_OPS` ops. It returns every problem at once.

:func:`run` interprets a program with plain torch on values the caller holds: a plan
called on local tensors, a data owner's review run on a dataset's mock data, and the
module :func:`veil.export` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from veil.errors import InvalidRequest, OpNotAllowed
from veil.ops import OPTIMIZER_CLASSES, default_registry
from veil.serde.messages import DictArg, ListArg, ParamRef, Ref, SliceArg, TupleArg
from veil.serde.plans import PlanSpec
from veil.serde.values import from_arg

#: Most ops in one plan (a node refuses larger ones).
MAX_OPS = 100_000
#: Most slots a plan's ops may fill.
MAX_SLOTS = 1_000_000


def refs(arg: Any, depth: int = 0) -> Iterator[int]:
    """The slot ids an argument refers to.

    Example:
        >>> list(refs(TupleArg([Ref(3), 1, ListArg([Ref(4)])])))
        [3, 4]
    """
    if depth > 40:
        raise InvalidRequest("plan argument nested too deeply")
    t = type(arg)
    if t is Ref:
        yield arg.id
    elif t is ListArg or t is TupleArg:
        for v in arg.items:
            yield from refs(v, depth + 1)
    elif t is DictArg:
        for v in arg.items.values():
            yield from refs(v, depth + 1)
    elif t is SliceArg:
        for v in (arg.start, arg.stop, arg.step):
            yield from refs(v, depth + 1)


def _out_leaves(out: Any, depth: int = 0) -> Iterator[int]:
    t = type(out)
    if out is None:
        return
    if t is Ref:
        yield out.id
    elif (t is ListArg or t is TupleArg) and depth < 8:
        for v in out.items:
            if v is not None:
                yield from _out_leaves(v, depth + 1)
    else:
        raise InvalidRequest(f"a plan op's result must be slots, got {t.__name__}")


def check(spec: PlanSpec) -> None:
    """Refuse a malformed plan, naming every problem (see the module docstring).

    Raises:
        OpNotAllowed: an op is not on the allowlist, or is a capability's node op.
        InvalidRequest: anything else.

    Example:
        >>> from veil.serde.plans import PlanOp, PlanSlot
        >>> x = PlanSlot(1, "x", shape=[2], dtype="float32")
        >>> check(PlanSpec("p", [x], [], [PlanOp("os.system", [Ref(1)], out=Ref(2))], Ref(2)))
        Traceback (most recent call last):
        ...
        veil.errors.OpNotAllowed: plan 'p' cannot run here: op 0 os.system is not on the allowlist
    """
    problems: list[str] = []
    refused: list[str] = []
    if len(spec.ops) > MAX_OPS:
        raise InvalidRequest(f"plan {spec.name[:60]!r} has {len(spec.ops)} ops; at most {MAX_OPS}")
    defined: dict[int, str] = {}
    for s in [*spec.inputs, *spec.state]:
        if s.id <= 0 or s.id in defined:
            problems.append(f"slot {s.id} is defined twice or not positive")
        defined[s.id] = s.kind
        if s.kind not in ("tensor", "module", "optimizer"):
            problems.append(f"slot {s.id} has unknown kind {s.kind[:20]!r}")
        elif s.kind == "module" and s.module is None:
            problems.append(f"module slot {s.id} states no architecture")
        elif s.kind == "optimizer":
            opt = s.optimizer
            if opt is None or opt.cls not in OPTIMIZER_CLASSES:
                refused.append(f"slot {s.id}: optimizer {opt.cls[:40] if opt else None!r}")
            else:
                for g in opt.groups:
                    for p in g.params:
                        if not isinstance(p, ParamRef) or defined.get(p.record) not in (
                            "module",
                            "tensor",
                        ):
                            problems.append(f"optimizer slot {s.id} steps an unknown tensor")
                            break
    if any(s.kind != "tensor" for s in spec.inputs):
        problems.append("plan inputs must be tensors (models and optimizers are state)")
    reg = default_registry()
    for i, op in enumerate(spec.ops):
        opspec = reg.specs.get(op.op)
        if opspec is None:
            refused.append(f"op {i} {op.op[:60]} is not on the allowlist")
            continue
        if opspec.effect == "node":
            refused.append(f"op {i} {op.op[:60]} is a capability's node op")
            continue
        if op.kwargs.get("out") is not None:
            problems.append(f"op {i} ({op.op}) writes with out=, which a node does not run")
        used = [r for a in [*op.args, *op.kwargs.values()] for r in refs(a)]
        for r in used:
            if r not in defined:
                problems.append(f"op {i} ({op.op}) uses slot {r} before it is defined")
        try:
            outs = list(_out_leaves(op.out))
        except InvalidRequest as exc:
            problems.append(f"op {i}: {exc}")
            continue
        for r in outs:
            if r in defined and not (used and used[0] == r):
                problems.append(f"op {i} ({op.op}) writes slot {r}, which is already defined")
            defined[r] = "tensor"
        if len(defined) > MAX_SLOTS:
            problems.append(f"the plan fills more than {MAX_SLOTS} slots")
            break
    try:
        for r in refs(spec.outputs):
            if r not in defined:
                problems.append(f"the plan returns slot {r}, which no op defines")
    except InvalidRequest as exc:
        problems.append(str(exc))
    if refused:
        raise OpNotAllowed(f"plan {spec.name[:60]!r} cannot run here: " + "; ".join(refused[:10]))
    if problems:
        raise InvalidRequest(f"malformed plan {spec.name[:60]!r}: " + "; ".join(problems[:10]))


def check_inputs(spec: PlanSpec, inputs: list[Any]) -> None:
    """Refuse inputs that do not fit the plan: each must have the dtype and the shape it was
    traced with, except its first (batch) dimension.

    Example:
        >>> import torch, veil
        >>> p = veil.plan(lambda x: x + 1).build(torch.ones(4, 3))
        >>> check_inputs(p.spec, [torch.ones(9, 3)])  # another batch size: fine
        >>> check_inputs(p.spec, [torch.ones(4, 2)])
        Traceback (most recent call last):
        ...
        TypeError: plan <lambda>: input x must be float32[*, 3] (traced as float32[4, 3]), got float32[4, 2]
    """
    if len(inputs) != len(spec.inputs):
        raise TypeError(f"plan {spec.name} takes {len(spec.inputs)} inputs, got {len(inputs)}")
    for slot, value in zip(spec.inputs, inputs):
        shape = list(getattr(value, "shape", ()))
        dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
        fits = all(w in (-1, g) for w, g in zip(slot.shape[1:], shape[1:]))
        if slot.dtype not in ("", dtype) or len(shape) != len(slot.shape) or not fits:
            want = ", ".join(
                ["*", *(str(d) if d >= 0 else "*" for d in slot.shape[1:])][: len(slot.shape)]
            )
            raise TypeError(
                f"plan {spec.name}: input {slot.name} must be {slot.dtype}[{want}] (traced as "
                f"{slot.dtype}[{', '.join(map(str, slot.shape))}]), got "
                f"{dtype}[{', '.join(map(str, shape))}]"
            )


def bind(out: Any, result: Any, values: dict[int, Any], depth: int = 0) -> None:
    """Give the slots of an op's ``out`` the matching parts of its ``result``."""
    if out is None:
        return
    if type(out) is Ref:
        values[out.id] = result
        return
    if not isinstance(result, list | tuple) or len(result) != len(out.items) or depth > 8:
        raise InvalidRequest("the op's result does not have the structure traced for it")
    for o, r in zip(out.items, result):
        bind(o, r, values, depth + 1)


def outputs(arg: Any, values: dict[int, Any]) -> Any:
    """The plan's return value from the slots' values."""
    return from_arg(arg, values.__getitem__)


def run(spec: PlanSpec, inputs: list[Any], state: dict[int, Any],
        check: Callable[[Any, list[Any], dict[str, Any]], None] | None = None) -> Any:  # fmt: skip
    """Run a plan with plain torch: ``inputs`` in order, ``state`` by slot (modules,
    tensors, optimizers, used and updated in place). ``check(op_spec, args, kwargs)``, if
    given, runs before each op (a node's size limit).

    Example:
        >>> import torch, veil
        >>> @veil.plan
        ... def f(x):
        ...     return torch.abs(x + x)
        >>> _ = f.build(torch.ones(2))
        >>> run(f.spec, [torch.tensor([1.0, -2.0])], {})
        tensor([2., 4.])
    """
    check_inputs(spec, inputs)
    values: dict[int, Any] = {s.id: v for s, v in zip(spec.inputs, inputs)}
    values.update(state)
    reg = default_registry().specs
    get = values.__getitem__
    with torch.enable_grad():
        for op in spec.ops:
            opspec = reg[op.op]
            args = [from_arg(a, get) for a in op.args]
            kwargs = {k: from_arg(v, get) for k, v in op.kwargs.items()}
            if check is not None:
                check(opspec, args, kwargs)
            bind(op.out, opspec.fn(*args, **kwargs), values)
    return outputs(spec.outputs, values)


class PlanModule(nn.Module):
    """A plan as an ``nn.Module``: its forward runs the program on its inputs, with the
    plan's models as submodules and its tensors as parameters (what ONNX export traces).

    Example:
        >>> import torch, veil
        >>> net = torch.nn.Linear(3, 2)
        >>> @veil.plan
        ... def f(x):
        ...     return torch.relu(net(x))
        >>> m = f.build(torch.ones(1, 3)).to_module()
        >>> torch.equal(m(torch.ones(4, 3)), torch.relu(net(torch.ones(4, 3))))
        True
    """

    def __init__(self, spec: PlanSpec, state: dict[int, Any]) -> None:
        super().__init__()
        self.spec = spec
        self._slots: dict[int, str] = {}
        for slot, value in state.items():
            name = f"s{slot}"
            if isinstance(value, nn.Module):
                self.add_module(name, value)
            elif isinstance(value, torch.Tensor):
                self.register_buffer(name, value) if not value.requires_grad else (
                    self.register_parameter(name, nn.Parameter(value.detach()))
                )
            else:
                continue  # optimizers take no part in a forward pass
            self._slots[slot] = name

    def forward(self, *inputs: Any) -> Any:
        state = {slot: getattr(self, name) for slot, name in self._slots.items()}
        return run(self.spec, list(inputs), state)
