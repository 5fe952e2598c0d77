"""The plan tracer: runs user code once on shapes-only tensors and records each torch op it calls.

A plan is built by calling the user's function with :class:`TracedTensor` arguments:
pointers (the same class as a node's pointers) whose *location* is a :class:`Tracer`
instead of a node. Every torch call on them reaches :meth:`Tracer._run`, which checks the
op against the allowlist, runs it on *meta* tensors (the pipeline's meta-prediction:
shapes and dtypes, no data, no side effect on the user's objects), gives its results new
slots, and queues the op in an :class:`~veil.pointers.queue.OpQueue` that never sends.

The models, parameters and optimizers the code uses become the plan's *state*: a model
of allowlisted layers is one slot (its calls are ``Module.__call__`` ops), the parameters
of any other model are tensor slots, and an optimizer over them is an optimizer slot.
While tracing, ``nn.Module.__call__``, ``Module.zero_grad`` and the allowlisted
optimizers' ``step``/``zero_grad`` are redirected for traced values only (one trace at a
time, under a lock); nothing is patched outside a build.

Python control flow runs once, at build time: loops are unrolled, and a branch on a traced
value (``if x.sum() > 0``), ``.item()`` or ``.get()`` is refused, since its outcome would
depend on the data.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from veil.errors import OpNotAllowed, UnsupportedError, VeilError
from veil.ops import OPTIMIZER_CLASSES, default_registry
from veil.pointers.queue import OpQueue
from veil.pointers.tensor import PointerTensor
from veil.serde.messages import ListArg, ObjectInfo, ParamRef, Ref, TupleArg
from veil.serde.modules import hollow_spec, unsupported_modules
from veil.serde.optimizers import optimizer_to_spec
from veil.serde.plans import PlanSlot
from veil.serde.tensors import dtype_name
from veil.serde.values import from_arg, to_arg

_LOCK = threading.RLock()
_ACTIVE: Tracer | None = None


def user_line() -> str:
    """``file:line`` of the innermost frame of the user's code (outside veil and torch).

    Example:
        >>> isinstance(user_line(), str)
        True
    """
    f: Any = sys._getframe(1)
    while f is not None:
        name = str(f.f_globals.get("__name__", ""))
        if not (name.startswith(("veil.", "torch.", "torch")) or name == "veil"):
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return "?"


def _refuse(what: str) -> UnsupportedError:
    return UnsupportedError(
        f"{user_line()}: {what} inside a plan would make the plan depend on the data; a plan "
        "runs Python once, when it is built (loops are unrolled, branches taken once). Keep "
        "the decision on the node with tensor ops (torch.where, masks, clamp) or return the "
        "value and decide after the plan ran"
    )


class TracedTensor(PointerTensor):
    """A value inside a plan being built: it knows its shape and dtype, not its data.

    Example:
        >>> import torch, veil
        >>> @veil.plan
        ... def f(x):
        ...     return x * 2 if x.shape[0] > 1 else x   # shapes are known: fine
        >>> f.build(torch.ones(3)).is_built
        True
    """

    __slots__ = ()

    def __repr__(self) -> str:
        shape = ", ".join(str(d) for d in self.shape)
        return f"TracedTensor(slot={self.id}, {str(self.dtype).removeprefix('torch.')}[{shape}])"

    def __bool__(self) -> bool:
        raise _refuse("a branch on a traced value (if/while/and/or on a tensor)")

    def __int__(self) -> int:
        raise _refuse("int() of a traced value")

    def __float__(self) -> float:
        raise _refuse("float() of a traced value")

    def __index__(self) -> int:
        raise _refuse("using a traced value as a Python index")

    def item(self) -> Any:
        raise _refuse(".item()")

    def tolist(self) -> Any:
        raise _refuse(".tolist()")

    def get(self) -> torch.Tensor:
        raise _refuse(".get()")

    def numpy(self) -> Any:
        raise _refuse(".numpy()")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("converting a traced value to numpy")


class Tracer:
    """Records the ops of one plan build (see the module docstring).

    Attributes:
        inputs: the plan's input slots, in order.
        state: the plan's state slots (models, parameters, optimizers), in order.
        objects: the user's object behind each state slot.
        values: the op result slots (shape, dtype).
        outs: per recorded op, the slots its result fills.
        lines: per recorded op, the user's line that called it.
    """

    name = "plan tracer"
    pipeline = False
    #: True while an op runs on the meta copies (their own calls are not the user's).
    executing = False

    def __init__(self) -> None:
        self.queue = OpQueue(None)  # detached: records, never sends
        self.inputs: list[PlanSlot] = []
        self.state: list[PlanSlot] = []
        self.objects: dict[int, Any] = {}
        self.values: list[PlanSlot] = []
        self.outs: list[Any] = []
        self.lines: list[str] = []
        self._meta: dict[int, Any] = {}  # slot -> its meta value
        self._by_obj: dict[int, int] = {}  # id(user object) -> state slot
        self._params: dict[int, tuple[int, str]] = {}  # id(param) -> (slot, name in slot)
        self._meta_params: dict[int, tuple[int, str]] = {}
        self._keep: list[Any] = []
        self._next = 1

    # -- slots ----------------------------------------------------------------------
    def _slot(self) -> int:
        n = self._next
        self._next += 1
        return n

    def _pointer(self, slot: int, meta: torch.Tensor) -> TracedTensor:
        info = ObjectInfo(slot, "tensor", list(meta.shape), dtype_name(meta.dtype),
                          bool(meta.requires_grad), False, "", [])  # fmt: skip
        return TracedTensor(self, info, owned=False)  # type: ignore[arg-type]

    def add_input(self, name: str, example: Any) -> TracedTensor:
        """A plan input traced from ``example`` (a tensor; its data is never read)."""
        if not isinstance(example, torch.Tensor):
            raise TypeError(
                f"plan input {name!r} must be a tensor (an example or a shape), got "
                f"{type(example).__name__}; models and optimizers become the plan's state"
            )
        slot = self._slot()
        meta = example.detach().to("meta").requires_grad_(example.requires_grad)
        self._meta[slot] = meta
        self.inputs.append(PlanSlot(slot, name, "tensor", list(meta.shape),
                                    dtype_name(meta.dtype), bool(meta.requires_grad)))  # fmt: skip
        return self._pointer(slot, meta)

    def add_state(self, name: str, obj: Any) -> int:
        """Make ``obj`` (a module, a tensor or an optimizer) a state slot; returns the slot."""
        known = self._by_obj.get(id(obj))
        if known is not None:
            return known
        if isinstance(obj, nn.Module):
            if unsupported_modules(obj):  # its forward is traced; its tensors are state
                for pname, t in [*obj.named_parameters(), *obj.named_buffers()]:
                    self.add_state(f"{name}.{pname}" if name else pname, t)
                self._by_obj[id(obj)] = 0
                self._keep.append(obj)
                return 0
            slot = self._slot()
            meta: Any = copy.deepcopy(obj).to("meta")
            for (pname, p), (_, mp) in zip(obj.named_parameters(), meta.named_parameters()):
                self._params[id(p)] = (slot, pname)
                self._meta_params[id(mp)] = (slot, pname)
            self.state.append(PlanSlot(slot, name, "module", module=hollow_spec(obj)))
        elif isinstance(obj, torch.Tensor):
            slot = self._slot()
            meta = obj.detach().to("meta").requires_grad_(obj.requires_grad)
            self._params[id(obj)] = (slot, "")
            self._meta_params[id(meta)] = (slot, "")
            self.state.append(PlanSlot(slot, name, "tensor", list(obj.shape),
                                       dtype_name(obj.dtype), bool(obj.requires_grad)))  # fmt: skip
        elif isinstance(obj, torch.optim.Optimizer):
            slot, meta = self._add_optimizer(name, obj)
        else:
            raise TypeError(f"plan state {name!r} must be a module, tensor or optimizer")
        self._by_obj[id(obj)] = slot
        self._meta[slot] = meta
        self.objects[slot] = obj
        self._keep.append(obj)
        return slot

    def _add_optimizer(self, name: str, opt: torch.optim.Optimizer) -> tuple[int, Any]:
        missing = [p for g in opt.param_groups for p in g["params"] if id(p) not in self._params]
        if missing:
            raise UnsupportedError(
                f"optimizer {name or type(opt).__name__} steps {len(missing)} tensors that are "
                "not state of this plan; give the plan the model it optimizes (an argument "
                "of build(), an attribute of the Plan, or a name the function uses)"
            )

        def ref(p: torch.Tensor) -> ParamRef:
            slot, pname = self._params[id(p)]
            return ParamRef(slot, pname)

        spec = optimizer_to_spec(opt, ref)
        spec = type(spec)(spec.cls, spec.groups, spec.defaults, [])  # its state is data
        slot = self._slot()
        by_ref = {v: k for k, v in self._meta_params.items()}  # (slot, name) -> id(meta param)
        metas = {id(m): m for s, m in self._meta.items() for m in _tensors(m)}
        groups = []
        for g, sg in zip(opt.param_groups, spec.groups):
            params = [metas[by_ref[(r.record, r.slot)]] for r in sg.params]  # type: ignore[union-attr]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": params})
        meta = type(opt)(groups)  # type: ignore[call-arg]
        self.state.append(PlanSlot(slot, name or type(opt).__name__.lower(), "optimizer",
                                   optimizer=spec))  # fmt: skip
        return slot, meta

    # -- what a location does --------------------------------------------------------
    def call(self, msg: Any, **kwargs: Any) -> Any:
        raise _refuse(f"{type(msg).__name__} (a round trip to a node)")

    def _release(self, oid: int) -> None:
        pass

    def run_op(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self._run(op, args, kwargs)

    def _ref(self, obj: Any) -> Ref | None:
        if type(obj) is TracedTensor:
            if obj.location is not self:
                raise UnsupportedError("a traced value of another plan was used in this one")
            return Ref(obj.id)
        slot = self._by_obj.get(id(obj))
        if slot:
            return Ref(slot)
        if isinstance(obj, nn.Parameter) or (
            isinstance(obj, torch.Tensor) and obj.requires_grad and obj.is_leaf
        ):
            return Ref(self.add_state("", obj))  # a parameter the code reaches: state
        if isinstance(obj, nn.Module | torch.optim.Optimizer):
            return Ref(self.add_state("", obj))
        if isinstance(obj, PointerTensor) or hasattr(obj, "_remote_ref"):
            raise UnsupportedError(
                f"{user_line()}: the plan uses a pointer to an object on node "
                f"{getattr(obj.location, 'name', '?')!r}; pass it as an input of the plan "
                "instead (a plan holds no node's objects)"
            )
        return None

    def _materialize(self, arg: Any) -> Any:
        value = from_arg(arg, self._meta.__getitem__)
        return _to_meta(value)

    def _run(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        line = user_line()
        spec = default_registry().get(op)
        if spec.effect == "node":
            raise OpNotAllowed(f"{line}: {op} is a capability's node op; a plan holds torch ops")
        enc_args = [to_arg(a, self._ref) for a in args]
        enc_kwargs = {k: to_arg(v, self._ref) for k, v in sorted(kwargs.items())}
        margs = [self._materialize(a) for a in enc_args]
        mkwargs = {k: self._materialize(v) for k, v in enc_kwargs.items()}
        if op in ("Tensor.__getitem__", "Tensor.__setitem__") and len(margs) > 1:
            margs[1] = _scalar_index(margs[1])
        try:
            self.executing = True  # its module calls and steps are the meta copies': not traced
            with torch.enable_grad():
                result = spec.fn(*margs, **mkwargs)
        except VeilError:
            raise
        except Exception as exc:
            raise UnsupportedError(
                f"{line}: {op} cannot be traced on shapes-only (meta) tensors: "
                f"{type(exc).__name__}: {str(exc)[:300]}. A plan holds ops whose result's "
                "shape follows from its inputs' shapes (not nonzero, unique, masked_select...)"
            ) from None
        finally:
            self.executing = False
        inputs = {id(v): a.id for a, v in zip(enc_args, margs) if type(a) is Ref}
        out, value = self._outputs(op, result, inputs, line, 0)
        from veil.serde.messages import RunOp

        self.queue.enqueue(RunOp(op, enc_args, enc_kwargs), site=line)
        self.outs.append(out)
        self.lines.append(line)
        return value

    def _outputs(self, op: str, result: Any, inputs: dict[int, int], line: str,
                 depth: int) -> tuple[Any, Any]:  # fmt: skip
        if result is None:
            return None, None
        if isinstance(result, torch.Tensor):
            same = inputs.get(id(result))
            if same is not None:  # in place: the op returns its input
                return Ref(same), self._pointer(same, result)
            slot = self._slot()
            self._meta[slot] = result
            self.values.append(PlanSlot(slot, "", "tensor", list(result.shape),
                                        dtype_name(result.dtype), bool(result.requires_grad)))  # fmt: skip
            return Ref(slot), self._pointer(slot, result)
        if isinstance(result, list | tuple) and not isinstance(result, torch.Size) and depth < 8:
            pairs = [self._outputs(op, r, inputs, line, depth + 1) for r in result]
            outs = [p[0] for p in pairs]
            values = [p[1] for p in pairs]
            if isinstance(result, list):
                return ListArg(outs), values
            if type(result).__module__ == "torch.return_types":
                return TupleArg(outs), type(result)(values)
            return TupleArg(outs), tuple(values)
        raise UnsupportedError(
            f"{line}: {op} returns a {type(result).__name__}, which a plan cannot hold (its "
            "value could depend on the data); keep it a tensor"
        )


def _scalar_index(index: Any) -> Any:
    """An index with its 0-d integer tensors as 0: torch reads their value to index (which
    meta tensors have not), and the result's shape does not depend on it."""
    if isinstance(index, torch.Tensor) and index.dim() == 0 and not index.is_floating_point():
        return 0 if index.dtype != torch.bool else index
    if type(index) is tuple:
        return tuple(_scalar_index(i) for i in index)
    return index


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.Module):
        return list(value.parameters())
    return []


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            return value
        return value.to("meta")
    if type(value) is list or type(value) is tuple:
        return type(value)(_to_meta(v) for v in value)
    if type(value) is dict:
        return {k: _to_meta(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------- redirections while tracing
def _traced_in(args: Any, kwargs: Any) -> bool:
    stack = [*args, *kwargs.values()]
    while stack:
        a = stack.pop()
        if type(a) is TracedTensor:
            return True
        if type(a) is list or type(a) is tuple:
            stack.extend(a)
        elif type(a) is dict:
            stack.extend(a.values())
    return False


_module_call = nn.Module.__call__
_module_zero_grad = nn.Module.zero_grad
_optimizer_zero_grad = torch.optim.Optimizer.zero_grad


def _traced_module_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    tracer = _ACTIVE
    if (
        tracer is None
        or tracer.executing
        or not _traced_in(args, kwargs)
        or unsupported_modules(self)
    ):
        return _module_call(self, *args, **kwargs)
    tracer.add_state("", self)
    return tracer._run("Module.__call__", (self, *args), kwargs)


def _traced_module_zero_grad(self: nn.Module, set_to_none: bool = True) -> None:
    tracer = _ACTIVE
    slot = tracer._by_obj.get(id(self)) if tracer is not None and not tracer.executing else None
    if tracer is None or slot is None:
        return _module_zero_grad(self, set_to_none)
    if slot == 0:
        raise UnsupportedError(
            f"{user_line()}: zero_grad() of a model that is not built of allowlisted layers, "
            "inside a plan: call the optimizer's zero_grad() instead"
        )
    tracer._run("Module.zero_grad", (self, bool(set_to_none)), {})
    return None


def _uses_state(tracer: Tracer, opt: torch.optim.Optimizer) -> bool:
    """Is ``opt`` state of the plan being traced? An optimizer of something else, stepped
    while tracing, is refused: run locally, it would silently do nothing in the plan."""
    if id(opt) in tracer._by_obj:
        return True
    if all(id(p) in tracer._params for g in opt.param_groups for p in g["params"]):
        tracer.add_state("", opt)
        return True
    raise UnsupportedError(
        f"{user_line()}: the plan steps an optimizer whose model is not state of the plan; use "
        "the model in the plan's code (e.g. compute the forward pass inside it) so that the "
        "plan holds the model, and the optimizer steps the node's copy"
    )


def _traced_optimizer_zero_grad(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
    tracer = _ACTIVE
    if tracer is None or tracer.executing or not _uses_state(tracer, self):
        return _optimizer_zero_grad(self, set_to_none)
    tracer._run("Optimizer.zero_grad", (self, bool(set_to_none)), {})
    return None


def _traced_step(original: Callable[..., Any]) -> Callable[..., Any]:
    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        tracer = _ACTIVE
        if tracer is None or tracer.executing or not _uses_state(tracer, self):
            return original(self, closure) if closure is not None else original(self)
        if closure is not None:
            raise UnsupportedError(f"{user_line()}: optimizer.step(closure) inside a plan")
        tracer._run("Optimizer.step", (self,), {})
        return None

    step.hooked = True  # type: ignore[attr-defined]  # torch must not wrap it again
    return step


@contextlib.contextmanager
def tracing(tracer: Tracer) -> Iterator[Tracer]:
    """Redirect module calls and optimizer steps on traced values to ``tracer`` while the
    user's code runs (one trace at a time in a process).

    Example:
        >>> import torch
        >>> t = Tracer()
        >>> with tracing(t):
        ...     y = t.add_input("x", torch.ones(2)).abs()
        >>> [op.op for op in t.queue.drain()]
        ['Tensor.abs']
    """
    global _ACTIVE
    with _LOCK:
        steps = {cls: cls.__dict__["step"] for cls in OPTIMIZER_CLASSES.values()
                 if "step" in cls.__dict__}  # fmt: skip
        _ACTIVE = tracer
        nn.Module.__call__ = _traced_module_call  # type: ignore[method-assign]
        nn.Module.zero_grad = _traced_module_zero_grad  # type: ignore[method-assign]
        torch.optim.Optimizer.zero_grad = _traced_optimizer_zero_grad  # type: ignore[method-assign]
        for cls, original in steps.items():
            cls.step = _traced_step(original)  # type: ignore[method-assign]
        try:
            yield tracer
        finally:
            for cls, original in steps.items():
                cls.step = original  # type: ignore[method-assign]
            torch.optim.Optimizer.zero_grad = _optimizer_zero_grad  # type: ignore[method-assign]
            nn.Module.zero_grad = _module_zero_grad  # type: ignore[method-assign]
            nn.Module.__call__ = _module_call  # type: ignore[method-assign]
            _ACTIVE = None
