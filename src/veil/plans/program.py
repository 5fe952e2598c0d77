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

import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from veil.errors import InvalidRequest, OpNotAllowed
from veil.ops import OPTIMIZER_CLASSES, default_registry
from veil.serde.messages import DictArg, ListArg, ParamRef, Ref, SliceArg, TupleArg
from veil.serde.modules import meta_module
from veil.serde.optimizers import spec_to_optimizer
from veil.serde.plans import PlanSpec
from veil.serde.tensors import DTYPES, dtype_name
from veil.serde.values import from_arg

#: Most ops in one plan (a node refuses larger ones).
MAX_OPS = 100_000
#: The families of allowlisted ops a plan may hold (torch's; not a capability's ops).
PLAN_OPS = ("torch.", "Tensor.", "F.", "linalg.", "Module.", "Optimizer.")
#: Names of inputs and state: Python identifiers (state: dotted), not the printer's own.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z0-9_]{1,64}){0,16}")
_RESERVED = re.compile(r"(t|in|state)[0-9]+|self|torch|F|def|return")
#: Most elements a slot may state.
MAX_ELEMENTS = 2**40
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
    if spec.name != "<lambda>" and not _NAME.fullmatch(spec.name):
        problems.append(f"plan name {spec.name[:40]!r} is not a Python name")
    problems += _slot_problems(spec)
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
        if not op.op.startswith(PLAN_OPS):
            refused.append(f"op {i} {op.op[:60]} is not a torch op (a plan holds torch ops)")
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


def _slot_problems(spec: PlanSpec) -> list[str]:
    """Names, shapes and dtypes of the slots a plan states."""
    problems = []
    names: set[str] = set()
    for s in [*spec.inputs, *spec.state, *spec.values]:
        where = "value" if s in spec.values else "state" if s in spec.state else "input"
        if s.name or where == "input":
            if not _NAME.fullmatch(s.name) or _RESERVED.fullmatch(s.name) or s.name in names:
                problems.append(f"{where} slot {s.id} has a name that is not a free Python name")
            names.add(s.name)
        if s.kind != "tensor":
            continue
        if len(s.shape) > 32 or any(type(d) is not int or d < (-1 if where == "input" else 0)
                                    for d in s.shape):  # fmt: skip
            problems.append(f"{where} slot {s.id} states an invalid shape")
        elif torch.Size([max(d, 1) for d in s.shape]).numel() > MAX_ELEMENTS:
            problems.append(f"{where} slot {s.id} states more than {MAX_ELEMENTS} elements")
        if s.dtype not in DTYPES and not (where == "input" and s.dtype == ""):
            problems.append(f"{where} slot {s.id} states an unknown dtype {s.dtype[:20]!r}")
    return problems


def verify(spec: PlanSpec) -> None:
    """Run a checked plan on meta tensors (shapes and dtypes, no data) and refuse it unless
    every op runs and every result has the shape and dtype the plan states: what a data
    owner reads in the plan's code is what it computes.

    Raises:
        InvalidRequest: an op fails on the shapes stated, or a result differs from them.

    Example:
        >>> import torch, msgspec, veil
        >>> p = veil.plan(lambda x: x.sum(0)).build(torch.ones(3, 2))
        >>> verify(p.spec)
        >>> lie = msgspec.structs.replace(p.spec.values[0], shape=[5])
        >>> verify(msgspec.structs.replace(p.spec, values=[lie]))
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: plan <lambda>: slot 2 is float32[2] when run, not float32[5] as stated
    """
    values: dict[int, Any] = {}
    for s in spec.inputs:
        dtype = DTYPES[s.dtype] if s.dtype else torch.float32
        values[s.id] = torch.empty([max(d, 1) for d in s.shape], dtype=dtype, device="meta")
        values[s.id].requires_grad_(s.requires_grad and dtype.is_floating_point)
    params: dict[tuple[int, str], torch.Tensor] = {}
    try:
        for s in spec.state:
            if s.kind == "module" and s.module is not None:
                values[s.id] = meta_module(s.module)
                params.update({(s.id, n): p for n, p in values[s.id].named_parameters()})
            elif s.kind == "tensor":
                t = torch.empty(s.shape, dtype=DTYPES[s.dtype], device="meta")
                values[s.id] = t.requires_grad_(s.requires_grad and t.dtype.is_floating_point)
                params[(s.id, "")] = values[s.id]
            elif s.kind == "optimizer" and s.optimizer is not None:
                values[s.id] = spec_to_optimizer(s.optimizer, lambda r: params[(r.record, r.slot)])
    except Exception as exc:
        raise InvalidRequest(f"plan {spec.name}: its state cannot be built: {exc}"[:500]) from None
    stated = {v.id: v for v in spec.values}
    given = {s.id for s in [*spec.inputs, *spec.state]}
    reg = default_registry().specs
    get = values.__getitem__
    with torch.enable_grad():
        for i, op in enumerate(spec.ops):
            try:
                args = [to_meta(from_arg(a, get)) for a in op.args]
                kwargs = {k: to_meta(from_arg(v, get)) for k, v in op.kwargs.items()}
                if op.op in ("Tensor.__getitem__", "Tensor.__setitem__") and len(args) > 1:
                    args[1] = scalar_index(args[1])
                bind(op.out, reg[op.op].fn(*args, **kwargs), values)
            except Exception as exc:
                raise InvalidRequest(
                    f"plan {spec.name}: op {i} ({op.op}) does not run on the shapes the plan "
                    f"states: {type(exc).__name__}: {str(exc)[:300]}"
                ) from None
            for r in _out_leaves(op.out):
                got, want = values[r], stated.get(r)
                if want is None and r in given:  # in place: the op gave its own input back
                    continue
                if not isinstance(got, torch.Tensor) or want is None:
                    raise InvalidRequest(f"plan {spec.name}: slot {r} states no tensor result")
                shown = f"{dtype_name(got.dtype)}{list(got.shape)}"
                if [list(got.shape), dtype_name(got.dtype)] != [want.shape, want.dtype]:
                    raise InvalidRequest(
                        f"plan {spec.name}: slot {r} is {shown} when run, not "
                        f"{want.dtype}{want.shape} as stated"
                    )


def to_meta(value: Any) -> Any:
    """Tensors (in lists, tuples and dicts) on the meta device; other values as they are.

    Example:
        >>> import torch
        >>> to_meta([torch.ones(2), 3])[0].device
        device(type='meta')
    """
    if isinstance(value, torch.Tensor):
        return value if value.device.type == "meta" else value.to("meta")
    if type(value) is list or type(value) is tuple:
        return type(value)(to_meta(v) for v in value)
    if type(value) is dict:
        return {k: to_meta(v) for k, v in value.items()}
    return value


def scalar_index(index: Any) -> Any:
    """An index with its 0-d integer tensors as 0: torch reads their value to index (which
    meta tensors have not), and the result's shape does not depend on it.

    Example:
        >>> import torch
        >>> scalar_index((torch.tensor(3), slice(None)))
        (0, slice(None, None, None))
    """
    if isinstance(index, torch.Tensor) and index.dim() == 0 and not index.is_floating_point():
        return 0 if index.dtype != torch.bool else index
    if type(index) is tuple:
        return tuple(scalar_index(i) for i in index)
    return index


def bind(out: Any, result: Any, values: dict[int, Any], depth: int = 0) -> None:
    """Give the slots of an op's ``out`` the matching parts of its ``result``."""
    if out is None:
        return
    if type(out) is Ref:
        if isinstance(result, list | tuple) and not isinstance(result, torch.Size):
            raise InvalidRequest("an op gave several results where the plan states one")
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
