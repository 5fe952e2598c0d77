"""Models sent in place (PySyft 0.2's ``model.send(worker)``): the same object becomes remote.

``model.send(bob)`` sends every parameter and buffer to ``bob`` and makes the module itself
a remote model: ``model.weight`` is now a :class:`~veil.PointerTensor` (kept in the
instance's ``__dict__``, which Python reads before ``nn.Module``'s parameter table), so the
module's own ``forward`` runs op by op on ``bob``. The ``nn.Parameter`` objects stay in
``model.parameters()``, each carrying the pointer that now stands for it, so that a torch
optimizer created over them, before or after the send, keeps working: its ``step()`` is
carried out on the node by a :class:`~veil.RemoteOptimizer` of the same class and
hyperparameters (see :func:`route_step`). ``model.get()`` fetches the values back into
those same ``Parameter`` objects (and their gradients, where the node lets you read them).

No code crosses the wire: the forward is traced op by op through the pointers, as for a
model sent with ``mode="params"``; the node runs only allowlisted ops.

Example:
    >>> import torch, veil as sy
    >>> bob = sy.VirtualWorker("bob")
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> before = model.weight.detach().clone()
    >>> _ = model.send(bob)
    >>> model.location.name
    'bob'
    >>> loss = model(torch.ones(3, 2).send(bob)).sum()
    >>> opt.zero_grad(); loss.backward(); opt.step()
    >>> model.get() is model, torch.allclose(model.weight, before - 0.3)
    (True, True)
"""

from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from veil.errors import InvalidRequest, PermissionDenied, UnsupportedError, WorkerMismatch
from veil.ops.modules import OPTIMIZER_NAMES
from veil.pointers.module import RemoteOptimizer
from veil.pointers.tensor import PointerTensor

if TYPE_CHECKING:
    from veil.pointers.remote import Remote

#: The attribute of a sent ``nn.Parameter`` (or buffer) that holds its pointer.
POINTER_ATTR = "_veil_pointer"
_STATE_ATTR = "_veil_sent"
#: Hyperparameters of a param group that travel to the node's optimizer (plain values only).
_OPTION_TYPES = (bool, int, float, tuple)


@dataclass(slots=True)
class _Entry:
    module: nn.Module
    name: str
    local: torch.Tensor
    pointer: PointerTensor
    is_param: bool


@dataclass(slots=True)
class _SentState:
    location: Remote
    entries: list[_Entry]
    hook: Any
    had_location: bool


def is_sent(module: nn.Module) -> bool:
    """Whether ``module`` was sent in place and not fetched back.

    Example:
        >>> import torch, veil
        >>> m = torch.nn.Linear(1, 1)
        >>> is_sent(m), is_sent(m.send(veil.VirtualWorker("bob")))
        (False, True)
    """
    return _STATE_ATTR in module.__dict__


def _state(module: nn.Module) -> _SentState:
    state = module.__dict__.get(_STATE_ATTR)
    if state is None:
        raise InvalidRequest(
            f"this {type(module).__name__} is local: send it first (model.send(worker))"
        )
    return state  # type: ignore[no-any-return]


def send_module(module: nn.Module, location: Remote) -> nn.Module:
    """Make ``module`` remote on ``location`` in place and return it (PySyft's ``model.send``).

    A model already on another worker moves there (:func:`move_module`); one already on
    ``location`` is returned as it is.

    Example:
        >>> import torch, veil
        >>> bob = veil.VirtualWorker("bob")
        >>> m = torch.nn.Linear(2, 1)
        >>> m.send(bob) is m, type(m.weight).__name__
        (True, 'PointerTensor')
    """
    if is_sent(module):
        if _state(module).location is location:
            return module
        return move_module(module, location)
    entries: list[_Entry] = []
    memo: dict[int, PointerTensor] = {}  # a tensor shared by two layers is sent once
    for sub in module.modules():
        for table, is_param in ((sub._parameters, True), (sub._buffers, False)):
            for name, t in table.items():
                if t is None:
                    continue
                ptr = memo.get(id(t))
                if ptr is None:
                    ptr = location.send(t.detach().requires_grad_(t.requires_grad))  # type: ignore[attr-defined]
                    memo[id(t)] = ptr
                entries.append(_Entry(sub, name, t, ptr, is_param))
    for e in entries:  # all sent: only now change the module (a refused send changes nothing)
        e.module.__dict__[e.name] = e.pointer
        setattr(e.local, POINTER_ATTR, e.pointer)
    had_location = "location" in module.__dict__
    if not had_location:
        module.__dict__["location"] = location
    hook = module.register_forward_pre_hook(_check_inputs, with_kwargs=True)
    module.__dict__[_STATE_ATTR] = _SentState(location, entries, hook, had_location)
    return module


def _check_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse to run a sent model on local data (it would compute nothing on the node)."""
    where = _state(module).location
    stack: list[Any] = [args, kwargs]
    while stack:
        obj = stack.pop()
        if isinstance(obj, PointerTensor):
            if obj.location is not where:
                raise WorkerMismatch(
                    f"this model is on {where.name!r} but its input is on "
                    f"{obj.location.name!r}: send the model there (model.send(...)) or move "
                    "the data"
                )
            return
        if isinstance(obj, list | tuple):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
    raise InvalidRequest(
        f"this model lives on {where.name!r}: call it on pointers to data there "
        f"(x.send({where.name})), or bring it back first with model.get()"
    )


def get_module(module: nn.Module) -> nn.Module:
    """Fetch a sent model's values into its own parameters and make it local again.

    Every value is fetched before anything changes, so a refused ``get`` (the model was
    trained on private data) leaves the model remote. Gradients come back too where the
    node lets you read them. The remote copies are then released.

    Example:
        >>> import torch, veil
        >>> m = torch.nn.Linear(2, 1)
        >>> w = m.weight
        >>> _ = m.send(veil.VirtualWorker("bob"))
        >>> m.get().weight is w
        True
    """
    state = _state(module)
    fetched: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for e in state.entries:
        if id(e.pointer) not in fetched:
            fetched[id(e.pointer)] = (e.pointer.get(), _readable_grad(e.pointer))
    for e in state.entries:
        value, grad = fetched[id(e.pointer)]
        e.module.__dict__.pop(e.name, None)
        with torch.no_grad():
            e.local.data = value.to(e.local.dtype)
        if e.is_param:
            e.local.grad = None if grad is None else grad.to(e.local.dtype)
        if getattr(e.local, POINTER_ATTR, None) is e.pointer:
            delattr(e.local, POINTER_ATTR)
    _forget(module, state)
    return module


def _forget(module: nn.Module, state: _SentState) -> None:
    state.hook.remove()
    if not state.had_location:
        module.__dict__.pop("location", None)
    del module.__dict__[_STATE_ATTR]
    for e in state.entries:
        e.pointer.delete()


def _readable_grad(ptr: PointerTensor) -> torch.Tensor | None:
    """``ptr.grad`` fetched, or None when it has none or it is private (a warning says so)."""
    if not ptr.requires_grad:
        return None
    grad = ptr.grad
    if grad is None:
        return None
    try:
        return grad.get()
    except PermissionDenied:  # decided by where the gradient came from, not by values
        warnings.warn(
            f"the gradient on {ptr.location.name!r} is derived from private data and stays "
            "there; ask for it with ptr.grad.request('reason')",
            stacklevel=3,
        )
        return None


def move_module(module: nn.Module, destination: Remote) -> nn.Module:
    """Move a sent model to another worker in place (``model.move(secure_worker)``).

    Each parameter and buffer moves node to node (:meth:`PointerTensor.move`), so moving
    needs the same permission as ``get`` (a model trained on private data stays where it is
    until its owner approves). If one of them cannot move, those already moved go back and
    the model stays where it was.

    Example:
        >>> import torch, veil
        >>> bob, carol = veil.VirtualWorker("bob"), veil.VirtualWorker("carol")
        >>> m = torch.nn.Linear(2, 1).send(bob)
        >>> m.move(carol).location.name, bob.node.object_count()
        ('carol', 0)
    """
    state = _state(module)
    source = state.location
    moved: dict[int, PointerTensor] = {}
    try:
        for e in state.entries:
            if id(e.pointer) not in moved:
                moved[id(e.pointer)] = e.pointer.move(destination)
    except BaseException:
        _rewire(state, {k: p.move(source) for k, p in moved.items()})  # back: unchanged
        raise
    _rewire(state, moved)
    state.location = destination
    if not state.had_location:
        module.__dict__["location"] = destination
    return module


def _rewire(state: _SentState, new: dict[int, PointerTensor]) -> None:
    """Point the entries whose pointer was replaced (keyed by the old pointer's id) at
    their new pointers."""
    plan = [(e, new[id(e.pointer)]) for e in state.entries if id(e.pointer) in new]
    for e, ptr in plan:
        if getattr(e.local, POINTER_ATTR, None) is e.pointer:
            setattr(e.local, POINTER_ATTR, ptr)
        e.module.__dict__[e.name] = ptr
        e.pointer = ptr


def copy_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (PySyft's ``model.copy()``); a sent model's copy is a new remote
    model on the same worker, its values cloned there.

    Example:
        >>> import torch, veil
        >>> bob = veil.VirtualWorker("bob")
        >>> m = torch.nn.Linear(2, 1).send(bob)
        >>> c = m.copy()
        >>> c.location.name, c.weight.id != m.weight.id
        ('bob', True)
    """
    if not is_sent(module):
        return copy.deepcopy(module)
    state = _state(module)
    clones: dict[int, PointerTensor] = {}
    for e in state.entries:
        if id(e.pointer) not in clones:
            c = e.pointer.detach().clone()  # type: ignore[attr-defined]
            clones[id(e.pointer)] = c.requires_grad_(True) if e.pointer.requires_grad else c
    memo: dict[int, Any] = {id(state): None, id(state.location): state.location}
    memo.update({id(e.pointer): clones[id(e.pointer)] for e in state.entries})
    shell = copy.deepcopy(module, memo)
    entries: list[_Entry] = []
    for new, old in zip(shell.modules(), module.modules(), strict=True):
        for key, fn in list(new._forward_pre_hooks.items()):
            if fn is _check_inputs:  # the original's hook, copied: the copy gets its own
                del new._forward_pre_hooks[key]
                new._forward_pre_hooks_with_kwargs.pop(key, None)
        for table, is_param in ((new._parameters, True), (new._buffers, False)):
            for name, t in table.items():
                ptr = old.__dict__.get(name)
                if t is None or not isinstance(ptr, PointerTensor):
                    continue
                clone = clones[id(ptr)]
                new.__dict__[name] = clone
                setattr(t, POINTER_ATTR, clone)
                entries.append(_Entry(new, name, t, clone, is_param))
    handle = shell.register_forward_pre_hook(_check_inputs, with_kwargs=True)
    shell.__dict__[_STATE_ATTR] = _SentState(state.location, entries, handle, state.had_location)
    return shell


# ----------------------------------------------------------------- optimizer steps

#: Remote optimizers stepped since the last backward on their node: their gradients are
#: cleared before the next backward there (see :func:`before_backward`).
_STEPPED: weakref.WeakKeyDictionary[Any, list[weakref.ref[RemoteOptimizer]]] = (
    weakref.WeakKeyDictionary()
)


def route_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Optimizer step pre-hook: carry out the step of sent parameters on their nodes.

    For each param group and node, a :class:`RemoteOptimizer` of the optimizer's class with
    the group's hyperparameters (built once, kept on the optimizer) steps the pointers. The
    local step that torch runs next finds no local gradient on those parameters and leaves
    them alone. Optimizer state (momentum, Adam's moments) lives on the node with the
    remote optimizer.

    Example:
        >>> import torch, veil
        >>> m = torch.nn.Linear(1, 1, bias=False).send(veil.VirtualWorker("bob"))
        >>> opt = torch.optim.SGD(m.parameters(), lr=1.0)
        >>> w0 = m.weight.get().item()
        >>> m(torch.ones(1, 1).send(m.location)).sum().backward(); opt.step()
        >>> round(m.weight.get().item() - w0, 4)
        -1.0
    """
    cache: dict[tuple[int, ...], tuple[list[PointerTensor], RemoteOptimizer]]
    cache = optimizer.__dict__.setdefault("_veil_remote", {})
    for stale in [k for k, (ptrs, _) in cache.items() if not all(p._owned for p in ptrs)]:
        del cache[stale]  # the model came back: its remote optimizer goes (released on drop)
    for group in optimizer.param_groups:
        by_location: dict[int, list[PointerTensor]] = {}
        for p in group["params"]:
            ptr = getattr(p, POINTER_ATTR, None)
            if isinstance(ptr, PointerTensor) and ptr._owned:
                by_location.setdefault(id(ptr.location), []).append(ptr)
        for ptrs in by_location.values():
            key = tuple(p.id for p in ptrs)
            if key not in cache:
                cache[key] = (ptrs, _remote_optimizer(optimizer, group, ptrs))
            remote = cache[key][1]
            remote.step()
            _STEPPED.setdefault(remote.location, []).append(weakref.ref(remote))


def _remote_optimizer(optimizer: torch.optim.Optimizer, group: dict[str, Any],
                      ptrs: list[PointerTensor]) -> RemoteOptimizer:  # fmt: skip
    cls = type(optimizer)
    if cls not in OPTIMIZER_NAMES:
        raise UnsupportedError(
            f"{cls.__name__} cannot step a remote model: the node builds only the "
            f"optimizers {sorted(OPTIMIZER_NAMES.values())}"
        )
    options = {
        k: (float(v) if isinstance(v, torch.Tensor) else v)
        for k, v in group.items()
        if k not in ("params", "initial_lr")
        and (isinstance(v, _OPTION_TYPES) or (isinstance(v, torch.Tensor) and v.numel() == 1))
    }
    return RemoteOptimizer(cls, ptrs, **options)


def before_backward(location: Remote) -> None:
    """Clear the gradients of the remote optimizers stepped on ``location`` since its last
    backward: the ``opt.zero_grad()`` that the local optimizer cannot forward.

    Example:
        >>> import veil
        >>> before_backward(veil.VirtualWorker("bob"))  # nothing stepped there: no call
    """
    stepped = _STEPPED.pop(location, None)
    for ref in stepped or ():
        remote = ref()
        if remote is not None and remote._owned:
            remote.zero_grad()
