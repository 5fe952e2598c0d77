"""Pointers to pointers (PySyft 0.2's ``x.send(bob).send(alice)``) and the client's own name.

In PySyft, ``x.send(bob).send(alice)`` stored on alice a pointer to bob's object, and alice
forwarded every op to bob. veil has no node-to-node channel (a node never acts on another
node with a scientist's credentials), so the second hop is a :class:`RelayPointer` held by
this client: it names ``alice`` as its location and wraps the pointer to the data on ``bob``.
Ops on it run on ``bob`` (where the data is) and give relay pointers again; ``get()``
unwinds one level (the pointer to bob's data); ``remote_get()`` brings the data to alice
(:meth:`PointerTensor.move`, with the same permission check as ``get``); ``move(w)`` moves
it to ``w``. Alice's node holds nothing until then.

Example:
    >>> import torch, veil as sy
    >>> bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    >>> x = torch.tensor([1, 2, 3]).send(bob).send(alice)
    >>> x.location.name, x.get().location.name
    ('alice', 'bob')
    >>> (x + x).get().get()
    tensor([2, 4, 6])
    >>> x.remote_get().location.name, x.get().location.name
    ('alice', 'alice')
"""

from __future__ import annotations

from typing import Any

import torch

from veil.pointers import classes
from veil.pointers.tensor import PointerTensor


class LocalWorker:
    """This client, as PySyft 0.2 called it (``sy.local_worker``, ``hook.local_worker``,
    ``ptr.owner``). It holds no objects and patches nothing: veil keeps no global store
    of local tensors, so this is a name for the client and an empty view.

    Example:
        >>> import veil as sy
        >>> sy.local_worker, sy.local_worker.id, sy.local_worker._objects
        (LocalWorker(id='me'), 'me', {})
    """

    id = "me"
    name = "me"
    is_client_worker = True

    @property
    def _objects(self) -> dict[int, Any]:
        return {}

    _tensors = _objects

    def __repr__(self) -> str:
        return f"LocalWorker(id={self.id!r})"


#: The one local worker (stateless: a name for "this client").
local_worker = LocalWorker()


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, RelayPointer):
        return obj.inner
    if isinstance(obj, list | tuple):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _rewrap(obj: Any, hop: Any) -> Any:
    if isinstance(obj, PointerTensor):
        return RelayPointer(obj, hop)
    if isinstance(obj, list | tuple):
        return type(obj)(_rewrap(o, hop) for o in obj)
    return obj


def _hop(args: Any) -> Any:
    stack = [args]
    while stack:
        obj = stack.pop()
        if isinstance(obj, RelayPointer):
            return obj.location
        if isinstance(obj, list | tuple):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
    return None


class RelayPointer:
    """A pointer, for ``location``, to a pointer to data on another node (see the module).

    Example:
        >>> import torch, veil
        >>> bob, alice = veil.VirtualWorker("bob"), veil.VirtualWorker("alice")
        >>> p = torch.ones(2).send(bob).send(alice)
        >>> p
        RelayPointer(location='alice', inner=PointerTensor(node='bob', id=..., shape=2, dtype=float32))
    """

    def __init__(self, inner: PointerTensor, location: Any) -> None:
        if inner.location is location:
            raise ValueError("a pointer sent to the node it points to needs no relay")
        self.inner = inner
        self.location = location

    @property
    def shape(self) -> torch.Size:
        return self.inner.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def owner(self) -> LocalWorker:
        return local_worker

    @property
    def id_at_location(self) -> int:
        """The id of the data on the node that holds it."""
        return self.inner.id

    def get(self) -> PointerTensor:
        """Unwind one level: the pointer to the data's node."""
        return self.inner

    def remote_get(self) -> RelayPointer:
        """Bring the data to this relay's node (it must be readable by you, as for ``get``);
        afterwards ``get()`` returns a pointer to it there."""
        self.inner = self.inner.move(self.location)
        return self

    def move(self, destination: Any, requires_grad: bool = False) -> PointerTensor:
        """Move the data to ``destination`` (see :meth:`PointerTensor.move`)."""
        return self.inner.move(destination, requires_grad=requires_grad)

    def send(self, destination: Any) -> RelayPointer:
        """A further hop (the data stays where it is)."""
        return RelayPointer(self.inner, destination)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        hop = _hop((args, kwargs))
        return _rewrap(func(*_unwrap(args), **_unwrap(kwargs or {})), hop)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def method(*args: Any, **kwargs: Any) -> Any:
            return _rewrap(attr(*_unwrap(args), **_unwrap(kwargs)), self.location)

        return method

    def __repr__(self) -> str:
        return f"RelayPointer(location={self.location.name!r}, inner={self.inner!r})"


def _operator(name: str) -> Any:
    def fn(self: RelayPointer, *args: Any) -> Any:
        return _rewrap(getattr(self.inner, name)(*_unwrap(args)), self.location)

    fn.__name__ = name
    return fn


for _name in (
    "__add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __pow__ "
    "__matmul__ __rmatmul__ __neg__ __abs__ __getitem__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__"
).split():
    setattr(RelayPointer, _name, _operator(_name))

classes.relay, classes.local_worker = RelayPointer, local_worker
