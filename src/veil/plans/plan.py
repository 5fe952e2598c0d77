"""Plan: a function or a model traced once, sent to nodes, and run there in one round trip.

Example:
    >>> import torch, veil
    >>> @veil.plan
    ... def double_abs(x):
    ...     return torch.abs(x + x)
    >>> _ = double_abs.build(torch.ones(2))
    >>> bob = veil.VirtualWorker("bob")
    >>> _ = double_abs.send(bob)
    >>> double_abs(torch.tensor([1.0, -2.0]).send(bob)).get()
    tensor([2., 4.])
"""

from __future__ import annotations

import inspect
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import torch
from torch import nn

from veil.errors import OpNotAllowed, UnsupportedError, VeilError
from veil.node import capability
from veil.plans import program, text
from veil.plans.tracer import TracedTensor, Tracer, tracing
from veil.pointers import PointerModule, PointerTensor, RemoteOptimizer, pipeline
from veil.serde.messages import ListArg, ParamRef, Ref, RequestInfo, TensorData, TupleArg
from veil.serde.plans import (
    AskPlan,
    PlanOp,
    PlanReviewInfo,
    PlanSpec,
    PlanStored,
    StorePlan,
    encode_plan,
    program_hash,
)
from veil.serde.tensors import dtype_from_name, dtype_name
from veil.serde.values import from_arg, to_arg

__all__ = ["Plan", "func2plan", "plan"]


@dataclass
class _Deployment:
    """A plan's state on one node: pointers to its models, tensors and optimizers."""

    worker: Any
    state: list[Any] = field(default_factory=list)


#: Per node, the pointer each local state object was sent as: plans sent to one node share
#: the models, tensors and optimizers they have in common (split learning's plans do).
_SHARED: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, Any]]] = weakref.WeakKeyDictionary()


class _StateReader:
    """PySyft's ``state`` argument of a ``func2plan`` with ``state={...}``: ``state.read(name)``."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def read(self, name: str) -> Any:
        if name not in self._values:
            raise KeyError(f"the plan has no state {name!r}; it has {sorted(self._values)}")
        return self._values[name]


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        f = fr.filename.replace("\\", "/")
        if "/veil/" not in f and "/torch/" not in f:
            return f"{fr.filename}:{fr.lineno}"
    return "?"


class Plan(nn.Module):
    """A computation traced once into allowlisted ops, run locally or on nodes.

    Two ways to make one: decorate a function (``@veil.plan``, or PySyft's
    ``@sy.func2plan(args_shape=[(1, 4)])``), or subclass ``Plan`` with layers and a
    ``forward`` (PySyft's ``class Net(sy.Plan)``). ``build(*examples)`` traces it on
    example inputs (only their shapes and dtypes are used). The models, parameters and
    optimizers the code uses are the plan's *state*; ``send(worker)`` puts the plan and
    its state on a node, ``plan(ptr, ...)`` runs it there in one message and returns
    pointers, ``plan.run(..., repeat=n)`` runs it ``n`` times in one message (a
    training step keeps its model and optimizer on the node), and ``get()`` brings the
    state back into the local objects.

    Python runs once, at build time: loops are unrolled and branches are taken as they
    were then; a branch on a traced value (``if x.sum() > 0``), ``.item()`` and
    ``.get()`` are refused when building.

    Example:
        >>> import torch, torch.nn.functional as F, veil
        >>> class Net(veil.Plan):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1 = torch.nn.Linear(2, 3)
        ...         self.fc2 = torch.nn.Linear(3, 2)
        ...     def forward(self, x):
        ...         return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=0)
        >>> net = Net()
        >>> _ = net.build(torch.tensor([1.0, 2.0]))
        >>> alice = veil.VirtualWorker("alice")
        >>> _ = net.send(alice)
        >>> out = net(torch.tensor([1.0, 2.0]).send(alice))
        >>> out.shape
        torch.Size([2])
    """

    def __init__(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
                 args_shape: Sequence[Sequence[int]] | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> None:  # fmt: skip
        nn.Module.__init__(self)  # not super(): a @veil.plan class puts its model's class next
        self._fn = fn
        self.plan_name = name or (fn.__name__ if fn is not None else type(self).__name__)
        self._state_tensors = dict(state or {})
        self.spec: PlanSpec | None = None
        self.hash = ""
        self._objects: dict[int, Any] = {}
        self._deployments: dict[int, _Deployment] = {}
        self.location: Any = None
        self._state_names: list[str] = []
        if fn is not None:
            self.__doc__ = fn.__doc__
        if args_shape is not None:
            self.build(*[torch.zeros(*[1 if d == -1 else int(d) for d in s]) for s in args_shape])
            assert self.spec is not None
            inputs = [  # built from shapes alone: any dtype, and -1 is any size
                msgspec.structs.replace(slot, dtype="", shape=[int(d) for d in shape])
                for slot, shape in zip(self.spec.inputs, args_shape)
            ]
            self.spec = msgspec.structs.replace(self.spec, inputs=inputs)
            self.hash = program_hash(self.spec)

    # -- PySyft's state spellings ---------------------------------------------------------
    @property
    def state(self) -> list[str]:
        """Names of the attributes that are state (every model, parameter and optimizer
        the plan uses is state; this list is kept for PySyft's ``self.state += [...]``)."""
        return self._state_names

    @state.setter
    def state(self, names: list[str]) -> None:
        self._state_names = list(names)

    def add_to_state(self, *names: str) -> None:
        """PySyft's ``self.add_to_state('fc1', 'fc2')`` (every layer is state anyway)."""
        self._state_names.extend(names)

    # -- building -------------------------------------------------------------------------
    @property
    def is_built(self) -> bool:
        """Has the plan been traced (``build``)?"""
        return self.spec is not None

    def forward(self, *args: Any) -> Any:
        if self._fn is None:
            raise NotImplementedError("a Plan subclass defines forward(self, ...)")
        return self._fn(*args)

    def _input_names(self, n: int) -> list[str]:
        target = self._fn if self._fn is not None else self.forward
        try:
            params = list(inspect.signature(target).parameters.values())
        except (TypeError, ValueError):
            params = []
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if self._state_tensors and names and names[-1] == "state":
            names = names[:-1]
        return [names[i] if i < len(names) else f"arg{i}" for i in range(n)]

    def _register_state(self, tracer: Tracer) -> None:
        for name, child in self.named_children():
            tracer.add_state(name, child)
        for name, p in self.named_parameters(recurse=False):
            tracer.add_state(name, p)
        for name, b in self.named_buffers(recurse=False):
            tracer.add_state(name, b)
        referenced: dict[str, Any] = {}
        if self._fn is not None:
            try:
                cv = inspect.getclosurevars(self._fn)
                referenced = {**cv.globals, **cv.nonlocals}
            except (TypeError, ValueError):
                referenced = {}
        for name, obj in referenced.items():
            if isinstance(obj, nn.Module) and not isinstance(obj, Plan):
                tracer.add_state(name, obj)
            elif isinstance(obj, nn.Parameter):
                tracer.add_state(name, obj)
        optimizers = {**referenced, **{k: v for k, v in vars(self).items()}}
        for name, obj in optimizers.items():
            if isinstance(obj, torch.optim.Optimizer):
                try:
                    tracer.add_state(name, obj)
                except UnsupportedError:
                    pass  # an optimizer of something else: refused if the code steps it

    def build(self, *examples: Any) -> Plan:
        """Trace the plan on example inputs (tensors; only shapes and dtypes are read).

        Raises:
            OpNotAllowed: the code calls an op that is not on the allowlist (the error
                names the line).
            UnsupportedError: the code branches on a traced value, reads one (``.item()``,
                ``.get()``), or calls an op whose result's shape depends on the data.
        """
        tracer = Tracer()
        self._register_state(tracer)
        names = self._input_names(len(examples))
        traced = [tracer.add_input(n, e) for n, e in zip(names, examples)]
        extra: list[Any] = []
        if self._state_tensors:
            values = {}
            for sname, t in self._state_tensors.items():
                slot = tracer.add_state(sname, t)
                values[sname] = tracer._pointer(slot, t.detach().to("meta"))
            extra.append(_StateReader(values))
        try:
            with tracing(tracer):
                out = self.forward(*traced, *extra)
        except OpNotAllowed as exc:
            raise OpNotAllowed(f"{_user_frame(exc)}: {exc}") from None
        try:
            outputs = to_arg(out, tracer._ref)
        except VeilError as exc:
            raise UnsupportedError(f"the plan's return value: {exc}") from None
        if any(True for _ in _constants(outputs)):
            raise UnsupportedError(
                "the plan returns a tensor that is not computed from its inputs or state; "
                "return only values the plan computes"
            )
        ops = [
            PlanOp(r.op, r.args, r.kwargs, out, line)
            for r, out, line in zip(tracer.queue.drain(), tracer.outs, tracer.lines)
        ]
        used = {
            ref for op in ops for a in [*op.args, *op.kwargs.values()] for ref in program.refs(a)
        }
        for s in tracer.state:
            if s.kind == "optimizer" and s.id in used and s.optimizer is not None:
                used |= {p.record for g in s.optimizer.groups for p in g.params
                         if isinstance(p, ParamRef)}  # fmt: skip
        used |= set(program.refs(outputs))
        state = [s for s in tracer.state if s.id in used]
        spec = PlanSpec(self.plan_name, tracer.inputs, state, ops, outputs, tracer.values)
        program.check(spec)
        self.spec, self.hash = spec, program_hash(spec)
        self._objects = {s.id: tracer.objects[s.id] for s in state}
        self._deployments.clear()
        self.location = None
        return self

    def _built(self) -> PlanSpec:
        if self.spec is None:
            raise UnsupportedError(
                f"plan {self.plan_name!r} is not built yet: call plan.build(example inputs) "
                "first (or give @func2plan(args_shape=[...]))"
            )
        return self.spec

    # -- reading --------------------------------------------------------------------------
    def code(self) -> str:
        """The plan as Python-like code with shapes (what ``print(plan)`` shows)."""
        return text.code(self._built())

    def __str__(self) -> str:
        return self.code() if self.spec is not None else repr(self)

    def __repr__(self) -> str:
        built = f"hash={self.hash[:12]}, {len(self.spec.ops)} ops" if self.spec else "not built"
        where = f", on {self.location.name!r}" if self.location is not None else ""
        return f"<Plan {self.plan_name} {built}{where}>"

    def summary(self) -> str:
        """Op counts, parameter counts, inputs and outputs, and the hash."""
        return text.summary(self._built(), self.hash)

    def to_module(self) -> nn.Module:
        """The plan as an ``nn.Module`` that runs it locally (what :func:`veil.export` writes)."""
        return program.PlanModule(self._built(), dict(self._objects))

    # -- running --------------------------------------------------------------------------
    def __call__(self, *args: Any) -> Any:  # type: ignore[override]
        if any(type(a) is TracedTensor for a in args):  # a plan inside a plan: inlined
            return self.forward(*args)
        return self.run(*args)

    def run(self, *args: Any, repeat: int = 1) -> Any:
        """Run the plan: on the node holding the pointer arguments (one message, ``repeat``
        times), or locally on local tensors. Returns what the plan returns (pointers
        when it ran on a node).

        Example:
            >>> import torch, veil
            >>> @veil.plan
            ... def inc(x):
            ...     return x + 1
            >>> inc.run(torch.zeros(2))  # not built yet: built on these inputs, run locally
            tensor([1., 1.])
        """
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be a positive int, got {repeat!r}")
        pointers = [a for a in args if isinstance(a, PointerTensor)]
        if not self.is_built:
            self.build(*[_example(a) for a in args])
        spec = self._built()
        if not pointers:
            result = None
            for _ in range(repeat):
                result = program.run(spec, list(args), self._objects)
            return result
        program.check_inputs(spec, list(args))
        worker = pointers[0].location
        dep = self._deployments.get(id(worker)) or self._deploy(worker)
        meta = self._prediction(args) if worker.pipeline else None
        if meta is not None and pipeline.owned_and_public((list(args), dep.state)):
            # queued like a pipelined op: it rides on the next call that needs an answer
            call = (self.hash, dep.state, list(args))
            return worker._enqueue("plans.run", call, {"repeat": repeat}, meta)
        reply = worker.call_op("plans.run", self.hash, dep.state, list(args), repeat=repeat)
        return worker._unwrap(reply, tuple(args))

    def _prediction(self, args: tuple[Any, ...]) -> Any:
        """What a pipelining client predicts for a run: the shape, dtype and requires_grad of
        the plan's single result, when the inputs are exactly as traced (else None)."""
        spec = self._built()
        out = spec.outputs
        if type(out) is not Ref:
            return None
        slot = next((v for v in spec.values if v.id == out.id), None)
        if slot is None:
            return None
        for s, a in zip(spec.inputs, args):
            if not s.dtype or list(a.shape) != s.shape or dtype_name(a.dtype) != s.dtype:
                return None
        return tuple(slot.shape), dtype_from_name(slot.dtype), slot.requires_grad

    # -- nodes ----------------------------------------------------------------------------
    def send(self, *workers: Any) -> Plan:
        """Put the plan and its state on each worker (one copy of the state per node);
        returns the plan, now runnable on pointers to those nodes. Plans sent to one node
        share the state objects they have in common (split learning's plans share a model);
        sending a plan again puts a fresh copy of its state there, as the local objects are
        now.

        Raises:
            UnsupportedError: the plan is not built.
        """
        for w in workers:
            self._deploy(w)
        return self

    def _deploy(self, worker: Any) -> _Deployment:
        spec = self._built()
        stored = capability.call(worker, "plans", "store", StorePlan(encode_plan(spec)), PlanStored)
        if stored.hash != self.hash:
            raise VeilError(
                f"node {worker.name!r} stored plan {stored.hash[:12]}, not {self.hash[:12]}"
            )
        ptrs: dict[int, Any] = {}
        shared = _SHARED.setdefault(worker, {})
        again = id(worker) in self._deployments  # sent again: a fresh copy of its state
        for s in spec.state:
            obj = self._objects[s.id]
            known = shared.get(id(obj))
            if known is not None and known[0] is obj and not again:
                ptrs[s.id] = known[1]
                continue
            if s.kind == "module":
                ptrs[s.id] = PointerModule.send(obj, worker, mode="module")
            elif s.kind == "tensor":
                ptrs[s.id] = worker.send(obj.detach().requires_grad_(obj.requires_grad))
            else:
                ptrs[s.id] = self._send_optimizer(s, obj, ptrs)
            shared[id(obj)] = (obj, ptrs[s.id])
        dep = _Deployment(worker, [ptrs[s.id] for s in spec.state])
        self._deployments[id(worker)] = dep
        self.location = worker
        return dep

    @staticmethod
    def _send_optimizer(slot: Any, opt: torch.optim.Optimizer, ptrs: dict[int, Any]) -> Any:
        named: dict[int, dict[str, Any]] = {}
        groups = []
        for g in slot.optimizer.groups:
            params = []
            for p in g.params:
                owner = ptrs[p.record]
                if isinstance(owner, PointerModule):
                    if p.record not in named:
                        named[p.record] = dict(owner.named_parameters())
                    params.append(named[p.record][p.slot])
                else:
                    params.append(owner)
            options = {k: from_arg(v, lambda i: None) for k, v in g.options.items()}
            groups.append({**options, "params": params})
        return RemoteOptimizer(slot.optimizer.cls, groups)

    def get(self) -> Plan:
        """Bring the state back from the node the plan was last sent to (trained weights
        land in the local models and tensors; optimizer moments stay behind) and forget
        the copy there. Returns the plan."""
        if self.location is None:
            raise UnsupportedError(f"plan {self.plan_name!r} is not on a node; send it first")
        dep = self._deployments.pop(id(self.location))
        shared = _SHARED.get(self.location, {})
        spec = self._built()
        with torch.no_grad():
            for s, ptr in zip(spec.state, dep.state):
                obj = self._objects[s.id]
                if s.kind == "module":
                    obj.load_state_dict(ptr.get().state_dict())
                elif s.kind == "tensor":
                    obj.copy_(ptr.get())
                shared.pop(id(obj), None)
        self.location = None
        return self

    def request(self, node: Any, *, dataset: str, reason: str, runs: int = 1,
                inputs: dict[str, str] | Sequence[str] | None = None,
                release: bool = False) -> RequestInfo:  # fmt: skip
        """Ask ``node``'s owner to let this plan run ``runs`` times on ``dataset``'s
        private data. The owner sees the plan as code, its result on the dataset's mock
        data, what it could release and its hash; an approval covers this plan (its hash)
        and that many runs only.

        ``inputs`` names the dataset asset each plan input will be (by input name, or in
        order; ``""``: one you supply); by default an asset whose shape and dtype fit.
        ``release=True`` asks also to fetch each approved run's results (the owner sees it,
        and the node lets them out only while the owner's ``plan-outputs`` release policy is
        on: ``veil plans release-outputs on``).
        """
        spec = self._built()
        dep = self._deployments.get(id(node)) or self._deploy(node)
        names = [s.name for s in spec.inputs]
        if isinstance(inputs, dict):
            unknown = set(inputs) - set(names)
            if unknown:
                raise ValueError(f"the plan has no inputs {sorted(unknown)}; it has {names}")
            bound = [inputs.get(n, "") for n in names]
        else:
            bound = list(inputs or [])
        state_ids = [getattr(p, "id", 0) or 0 for p in dep.state]
        capability.call(node, "plans", "ask",
                        AskPlan(self.hash, dataset, int(runs), bound, state_ids, bool(release)),
                        PlanReviewInfo)  # fmt: skip
        return capability.request(node, "plan", self.hash, reason)


def _constants(arg: Any) -> Any:
    """The constant tensors in a plan's return value (lists and tuples of slots)."""
    if isinstance(arg, TensorData):
        yield arg
    elif isinstance(arg, ListArg | TupleArg):
        for v in arg.items:
            yield from _constants(v)


def _example(a: Any) -> Any:
    if isinstance(a, PointerTensor):
        return torch.empty(tuple(a.shape), dtype=a.dtype, device="meta").requires_grad_(
            a.requires_grad
        )
    return a


def plan(fn: Callable[..., Any] | type | None = None, *, name: str | None = None) -> Any:
    """Make a function (or an ``nn.Module`` class) a :class:`Plan`: ``@veil.plan``.

    On a function it returns a plan to ``build`` on example inputs (or that builds on
    its first call); on an ``nn.Module`` subclass it returns a ``Plan`` subclass with the
    same layers and ``forward``.

    Example:
        >>> import torch, veil
        >>> @veil.plan
        ... def affine(x):
        ...     return 2 * x + 1
        >>> affine(torch.tensor([1.0, 2.0]))
        tensor([3., 5.])
        >>> print(affine.summary().splitlines()[3])
          ops:     2 (Tensor.__rmul__ 1, Tensor.__add__ 1)
    """
    if fn is None:
        return lambda f: plan(f, name=name)
    if isinstance(fn, type):
        if not issubclass(fn, nn.Module):
            raise TypeError("@veil.plan decorates a function or an nn.Module subclass")
        body = {"__module__": fn.__module__, "__init__": _module_plan_init(fn),
                "forward": fn.forward, "__doc__": fn.__doc__}  # fmt: skip
        return type(fn.__name__, (Plan, fn), body)
    return Plan(fn, name=name)


def _module_plan_init(cls: type) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        Plan.__init__(self)
        cls.__init__(self, *args, **kwargs)  # type: ignore[misc]
        self.plan_name = cls.__name__

    return __init__


def func2plan(args_shape: Sequence[Sequence[int]] | None = None, *,
              state: dict[str, torch.Tensor] | None = None) -> Callable[[Callable[..., Any]], Plan]:  # fmt: skip
    """PySyft's decorator: ``@sy.func2plan(args_shape=[(1, 4)])`` builds the plan at once on
    zeros of those shapes (``-1`` is taken as 1); ``state={"bias": t}`` gives the function
    a last argument ``state`` with ``state.read("bias")``.

    Example:
        >>> import torch, veil as sy
        >>> @sy.func2plan(args_shape=[(-1, 1)])
        ... def plan_double_abs(x):
        ...     x = x + x
        ...     return torch.abs(x)
        >>> plan_double_abs.is_built
        True
    """

    def wrap(fn: Callable[..., Any]) -> Plan:
        return Plan(fn, args_shape=args_shape, state=state)

    return wrap
