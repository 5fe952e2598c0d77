"""PointerTensor: a handle to a tensor on a node; torch calls on it run where the data lives."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from veil.errors import OpNotAllowed, PermissionDenied, UnsupportedError
from veil.ops import default_registry
from veil.pointers import classes
from veil.pointers import remote as _remote
from veil.pointers.handle import ReleasedOnDrop
from veil.serde.messages import GetObject, ObjectInfo, Publish, RequestAccess, RequestInfo, Value
from veil.serde.tensors import DTYPES, dtype_from_name, tensor_from_data
from veil.serde.values import SCALAR_TYPES

if TYPE_CHECKING:
    from veil.pointers.remote import Remote


def _find_location(args: Any, kwargs: Any) -> Remote | None:
    stack = [args, kwargs]
    while stack:
        obj = stack.pop()
        if isinstance(obj, PointerTensor):
            return obj.location
        if isinstance(obj, list | tuple):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "location") and hasattr(obj, "_remote_ref"):
            return obj.location  # type: ignore[no-any-return]
    return None


class PointerTensor(ReleasedOnDrop):
    """A pointer to a tensor held by a node.

    Torch functions (``torch.*``, ``torch.nn.functional.*``), operators, methods and
    indexing on a pointer run on the node and return new pointers. The pointer knows the
    remote tensor's shape and dtype without fetching it. ``get()`` fetches a copy if the
    node's privacy rules allow it.

    Example:
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> x = torch.tensor([1.0, 2, 3, 4]).send(alice)
        >>> y = (x * 2).sum()
        >>> y.shape, y.get()
        (torch.Size([]), tensor(20.))
    """

    __slots__ = (
        "location",
        "id",
        "shape",
        "dtype",
        "requires_grad",
        "private",
        "sources",
        "_owned",
        "_error",
        "_leaf",
        "__weakref__",
    )

    location: Remote
    id: int
    shape: torch.Size
    dtype: torch.dtype
    requires_grad: bool
    private: bool
    sources: tuple[str, ...]
    _owned: bool
    _error: Exception | None  # set when the pipelined op that makes it failed
    _leaf: bool  # made by a send: a leaf whose .grad get() brings back

    def __init__(self, location: Remote, info: ObjectInfo, *, owned: bool = True) -> None:
        self.location = location
        self.id = info.id
        self._owned = owned
        self._error = None
        self._leaf = False
        self.shape = torch.Size(info.shape)  # as _update, inline: this runs once per op
        self.dtype = DTYPES.get(info.dtype) or dtype_from_name(info.dtype)
        self.requires_grad = info.requires_grad
        self.private = info.private
        self.sources = tuple(info.sources)

    def _update(self, info: ObjectInfo) -> None:
        self.shape = torch.Size(info.shape)
        self.dtype = DTYPES.get(info.dtype) or dtype_from_name(info.dtype)
        self.requires_grad = info.requires_grad
        self.private = info.private
        self.sources = tuple(info.sources)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.shape) or "scalar"
        dtype = str(self.dtype).removeprefix("torch.")
        tags = []
        if self.private:
            src = f" from {', '.join(self.sources)}" if self.sources else ""
            tags.append(f"private{src}")
        if self.requires_grad:
            tags.append("requires_grad")
        extra = f", {', '.join(tags)}" if tags else ""
        return f"PointerTensor(node={self.location.name!r}, id={self.id}, shape={shape}, dtype={dtype}{extra})"

    # -- the torch protocol -------------------------------------------------------------
    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = default_registry().name_of(func)
        if name is None:
            fname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
            raise OpNotAllowed(
                f"{fname} is not on the allowlist of ops a node runs; see veil.ops.names(), "
                "or .get() the data (if you may) and compute locally"
            )
        location = _find_location(args, kwargs)
        assert location is not None  # torch only dispatches here when a pointer is an argument
        return location._run(name, args, kwargs)

    def _op(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.location.run_op(name, self, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        op = f"Tensor.{name}"
        if op not in default_registry():
            raise AttributeError(
                f"PointerTensor has no method {name!r}: Tensor.{name} is not on the node's "
                "op allowlist (veil.ops.names())"
            )

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.location._run(op, (self, *args), kwargs)

        method.__name__ = name
        return method

    # -- metadata answered locally -------------------------------------------------
    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return self.shape.numel()

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def is_leaf(self) -> bool:
        return True

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d pointer")
        return self.shape[0]

    def __iter__(self) -> Iterator[PointerTensor]:
        for i in range(len(self)):
            yield self[i]

    def __bool__(self) -> bool:
        raise UnsupportedError(
            "a remote tensor has no truth value on this side; fetch it with .get() "
            "(if you may) or keep the condition on the node with torch.where"
        )

    def __hash__(self) -> int:
        return hash((id(self.location), self.id))

    def __deepcopy__(self, memo: dict[int, Any]) -> PointerTensor:
        return self  # a pointer names one remote object; copying the handle would alias it

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedError("a PointerTensor holds no local data; call .get() first")

    # -- attributes that are remote tensors ------------------------------------------
    @property
    def grad(self) -> PointerTensor | None:
        """Pointer to the remote ``.grad`` (None if the node has no gradient yet)."""
        return self.location.run_op("Tensor.__getattr__", self, "grad")  # type: ignore[no-any-return]

    @property
    def data(self) -> PointerTensor:
        return self.location.run_op("Tensor.__getattr__", self, "data")  # type: ignore[no-any-return]

    @property
    def T(self) -> PointerTensor:  # noqa: N802
        return self.location.run_op("Tensor.__getattr__", self, "T")  # type: ignore[no-any-return]

    @property
    def mT(self) -> PointerTensor:  # noqa: N802
        return self.location.run_op("Tensor.__getattr__", self, "mT")  # type: ignore[no-any-return]

    def backward(self, gradient: Any = None, retain_graph: bool | None = None) -> None:
        """Run backward on the node; gradients stay there (``param.grad`` is a pointer)."""
        if classes.before_backward is not None:
            classes.before_backward(self.location)
        self.location.run_op("Tensor.backward", self, gradient, retain_graph)

    # -- moving data -------------------------------------------------------------
    def get(self) -> torch.Tensor:
        """Fetch a copy of the remote tensor; for a tensor you sent (a leaf), with its gradient
        when it has one you may read.

        The remote object stays (veil's ``get`` copies; dropping the pointer, or
        ``delete()``, removes it). A gradient derived from private data stays on the node
        (a warning says so) even when the value itself may be read.

        Raises:
            PermissionDenied: the tensor is (derived from) private data and no request for
                it was approved. Ask with ``ptr.request("reason")``.

        Example:
            >>> import torch, veil
            >>> bob = veil.VirtualWorker("bob")
            >>> w = torch.tensor([1.0, 2.0], requires_grad=True).send(bob)
            >>> (w * w).sum().backward()
            >>> w.get().grad
            tensor([2., 4.])
        """
        if self._error is not None:
            raise self._error
        nbytes = self.shape.numel() * self.dtype.itemsize
        reply = self.location.call(GetObject(self.id), expect_bytes=nbytes)
        assert isinstance(reply, Value)
        value = tensor_from_data(reply.value)  # type: ignore[arg-type]
        if self._leaf and self.requires_grad:
            grad = self.grad
            if grad is not None:
                try:
                    value = value.detach().requires_grad_(True)
                    value.grad = grad.get()
                except PermissionDenied:  # decided by where the gradient came from, not values
                    warnings.warn(
                        f"the gradient on {self.location.name!r} is derived from private data "
                        "and stays there; ask for it with ptr.grad.request('reason')",
                        stacklevel=2,
                    )
        return value

    def item(self) -> Any:
        """``get().item()``: fetches the value (subject to the same permission check)."""
        return self.get().item()

    def tolist(self) -> Any:
        return self.get().tolist()

    def copy(self) -> PointerTensor:
        """A new remote object holding a copy of this one (``clone`` on the node)."""
        return self._op("Tensor.clone")  # type: ignore[no-any-return]

    @property
    def id_at_location(self) -> int:
        """The object's id on its node (PySyft 0.2's name for :attr:`id`)."""
        return self.id

    @property
    def owner(self) -> Any:
        """The client that holds this pointer (PySyft's local worker: see
        :data:`veil.pointers.relay.local_worker`)."""
        return classes.local_worker

    def move(self, destination: Any, requires_grad: bool = False) -> PointerTensor:
        """Move the tensor to another node and drop it here; returns the new pointer.

        The node holding the data delivers it to ``destination`` itself (see
        :mod:`veil.transfer`): the data does not pass through this client. A move needs the
        same permission as ``get()`` (private data cannot leave its owner's node without
        approval), and between node servers the source's owner must have approved the
        destination (``veil peers add``); without that approval, or between an in-process
        and a remote node, the data passes through this client instead (with a warning in
        the first case). ``requires_grad=True`` makes the moved tensor a leaf that requires
        grad there.

        Example:
            >>> import torch, veil
            >>> bob, alice = veil.VirtualWorker("bob"), veil.VirtualWorker("alice")
            >>> x = torch.tensor([1.0, 2.0]).send(bob).move(alice, requires_grad=True)
            >>> x.location.name, x.requires_grad, bob.node.object_count()
            ('alice', True, 0)
        """
        if destination is self.location:
            return self
        grad = bool(requires_grad or self.requires_grad)
        direct = classes.move_direct
        moved = None if direct is None else direct(self, destination, grad)
        if moved is not None:
            return moved
        value = self.get().detach()
        if grad:
            value.requires_grad_(True)
        ptr = destination.send(value)
        self.delete()
        self.location.flush()  # the deletion is sent now: the data leaves this node at once
        return ptr  # type: ignore[no-any-return]

    def send(self, destination: Any) -> Any:
        """A pointer to this pointer, held for ``destination`` (PySyft 0.2's
        ``x.send(bob).send(alice)``): the data stays here; ``.get()`` unwinds one level and
        ``.remote_get()`` moves the data to ``destination``. See :mod:`veil.pointers.relay`.
        """
        return classes.relay(self, destination)

    def remote_get(self) -> PointerTensor:
        """Nothing to unwind: a pointer to data on its node is already there (returns itself)."""
        return self

    def delete(self) -> None:
        """Delete the remote object now (otherwise it goes when the last pointer does)."""
        if self._owned:
            self._owned = False
            self.location._release(self.id)

    # -- veil.dp: differentially private release ---------------------------------------
    def publish(self, *, epsilon: float, delta: float = 0.0) -> torch.Tensor:
        """A differentially private copy: the node adds noise calibrated to the sensitivity it
        tracked for this object (Laplace if ``delta`` is 0, Gaussian otherwise) and charges
        your privacy budget on the dataset.

        Raises:
            BudgetExceeded: the release would pass your budget (or you have none).
            UnboundedSensitivity: the node cannot bound how much one data subject changes it.

        Example:
            >>> import torch, veil
            >>> owner = veil.VirtualWorker("clinic")
            >>> _ = owner.datasets.create("ages", private=torch.tensor([30.0, 40.0, 50.0]),
            ...                           mock=torch.zeros(3), bounds=(0, 120))
            >>> _ = owner.create_user("ds@x.org", "pw-123456")
            >>> _ = owner.budgets.set("ds@x.org", "ages", epsilon=1.0)
            >>> scientist = owner.login("ds@x.org", "pw-123456")
            >>> noisy = scientist.datasets["ages"].private.mean().publish(epsilon=0.5)
            >>> noisy.shape
            torch.Size([])
        """
        reply = self.location.call(Publish(self.id, float(epsilon), float(delta)))
        assert isinstance(reply, Value)
        return tensor_from_data(reply.value)  # type: ignore[arg-type]

    def request(self, reason: str) -> RequestInfo:
        """Ask the node's owner to let you ``get()`` this object; returns the request.

        Example:
            >>> import torch, veil
            >>> owner = veil.VirtualWorker("clinic")
            >>> ds = owner.datasets.create("ages", private=torch.tensor([30.0, 40.0]),
            ...                            mock=torch.tensor([1.0, 2.0]))
            >>> owner.create_user("ds@x.org", "pw-123456", role="data_scientist")
            UserInfo(id=2, email='ds@x.org', role='data_scientist', name='')
            >>> scientist = owner.login("ds@x.org", "pw-123456")
            >>> mean = scientist.datasets["ages"].private.mean()
            >>> req = mean.request("average age for the paper")
            >>> req.status
            'pending'
            >>> _ = owner.requests.approve(req.id)
            >>> mean.get()
            tensor(35.)
        """
        reply = self.location.call(RequestAccess(self.id, reason))
        assert isinstance(reply, RequestInfo)
        return reply

    # -- operators (Python looks these up on the type, so they are spelled out) -------
    def __getitem__(self, idx: Any) -> Any:
        return self._op("Tensor.__getitem__", idx)

    def __setitem__(self, idx: Any, value: Any) -> None:
        self._op("Tensor.__setitem__", idx, value)


def _binary(name: str) -> Any:
    op = f"Tensor.{name}"

    def fn(self: PointerTensor, *args: Any) -> Any:
        if (
            args
            and type(args[0]) not in SCALAR_TYPES
            and getattr(type(args[0]), "_veil_defer_operators", False)
        ):
            return NotImplemented  # an encrypted pointer runs `ptr @ enc` itself (__rmatmul__)
        return self.location._run(op, (self, *args), {})

    fn.__name__ = name
    return fn


for _name in (
    "__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ "
    "__truediv__ __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __ifloordiv__ __mod__ "
    "__rmod__ __imod__ __pow__ __rpow__ __ipow__ __matmul__ __rmatmul__ __neg__ __pos__ "
    "__abs__ __invert__ __and__ __rand__ __iand__ __or__ __ror__ __ior__ __xor__ __rxor__ "
    "__ixor__ __lshift__ __rshift__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__"
).split():
    setattr(PointerTensor, _name, _binary(_name))

_remote._TENSOR_POINTER = PointerTensor  # the client's per-op fast paths compare types with it
classes.tensor = PointerTensor
