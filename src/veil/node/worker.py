"""Worker: the user's handle on a node (send, datasets, requests, users); VirtualWorker runs one in-process."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Any, Self

import torch
from torch import nn

from veil.errors import InvalidRequest, ObjectNotFound, TransportError
from veil.node.node import Node
from veil.node.spellings import PySyftSpellings
from veil.node.transports import InProcessTransport
from veil.node.users import Session
from veil.pointers import PointerModule, PointerTensor, Remote
from veil.pointers.hook import TorchHook, tags_to_text
from veil.serde.messages import (
    AssetInfo,
    AssetSpec,
    AuditEntry,
    AuditLog,
    BudgetInfo,
    BudgetList,
    ClearObjects,
    CreateDataset,
    CreateUser,
    DatasetInfo,
    DatasetList,
    DecideRequest,
    GetAudit,
    GetDataset,
    GetInfo,
    ListBudgets,
    ListDatasets,
    ListObjects,
    ListRequests,
    ListUsers,
    NodeInfo,
    ObjectInfo,
    ObjectList,
    RequestInfo,
    RequestList,
    SendObject,
    SetBudget,
    UserInfo,
    UserList,
)
from veil.serde.tensors import tensor_from_data, tensor_to_data


class Worker(PySyftSpellings, Remote):
    """What every node handle offers, in-process (:class:`VirtualWorker`) or remote
    (:class:`~veil.node.client.NodeClient`)."""

    def send(self, obj: torch.Tensor | nn.Module, *, description: str = "",
             private: bool = False, mode: str = "auto") -> Any:  # fmt: skip
        """Send a tensor or model to the node; returns a pointer to it.

        Args:
            obj: a tensor (-> :class:`PointerTensor`) or ``nn.Module`` (-> :class:`PointerModule`).
            description: shown to the node's owner.
            private: owners only: mark the uploaded tensor private.
            mode: for models, see :meth:`PointerModule.send`.

        Example:
            >>> import torch, veil
            >>> bob = veil.VirtualWorker("bob")
            >>> bob.send(torch.zeros(2, 3))
            PointerTensor(node='bob', id=..., shape=2x3, dtype=float32)
        """
        send_hook = getattr(type(obj), "__veil_send__", None)
        if send_hook is not None:  # encrypted tensors (veil.he) send themselves
            return send_hook(obj, self, description=description)
        if isinstance(obj, nn.Module):
            return PointerModule.send(obj, self, mode=mode)  # type: ignore[arg-type]
        if isinstance(obj, PointerTensor):
            return obj.move(self)
        if not isinstance(obj, torch.Tensor):
            raise TypeError(f"send() takes a tensor or an nn.Module, got {type(obj).__name__}")
        if not description:  # tags and description set with x.tag(...) / x.describe(...)
            description = tags_to_text(getattr(obj, "_veil_tags", ()),
                                       getattr(obj, "_veil_description", ""))  # fmt: skip
        info = self.call(SendObject(tensor_to_data(obj), description, private))
        assert isinstance(info, ObjectInfo)
        ptr = PointerTensor(self, info)
        ptr._leaf = True
        return ptr

    # -- node state ---------------------------------------------------------------
    def info(self) -> NodeInfo:
        """Node name, versions, and the number/bytes of objects you hold there."""
        reply = self.call(GetInfo())
        assert isinstance(reply, NodeInfo)
        return reply

    def objects(self) -> list[ObjectInfo]:
        """Your objects on the node (all objects, for owners)."""
        reply = self.call(ListObjects())
        assert isinstance(reply, ObjectList)
        return reply.items

    def pointer(self, obj_id: int) -> Any:
        """A pointer to one of your existing objects on the node (e.g. after reconnecting).

        The pointer does not own the object: dropping it does not delete it.

        Example:
            >>> import torch, veil
            >>> bob = veil.VirtualWorker("bob")
            >>> x = bob.send(torch.ones(2))
            >>> bob.pointer(x.id).get()
            tensor([1., 1.])
        """
        for info in self.objects():
            if info.id == obj_id:
                if info.kind == "tensor":
                    return PointerTensor(self, info, owned=False)
                ptr = self._wrap(info)
                ptr._owned = False
                return ptr
        raise ObjectNotFound(f"you hold no object {obj_id} on node {self.name!r}")

    def clear(self) -> None:
        """Delete every object you hold on the node (datasets are kept)."""
        self.call(ClearObjects())

    def close(self) -> None:
        """Send pipelined ops and the deletions of dropped pointers now; a network client
        then closes its connections (an in-process worker stays usable).

        Example:
            >>> import torch, veil
            >>> with veil.VirtualWorker("bob") as bob:
            ...     x = torch.ones(2).send(bob)
            ...     del x  # released on the next call, or at close()
            >>> bob.node.object_count()
            0
        """
        try:
            self.flush()
        except TransportError:  # the link is gone: nothing more can be sent
            pass
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def datasets(self) -> Datasets:
        """The node's datasets: ``worker.datasets["name"].private`` / ``.mock``."""
        return Datasets(self)

    @property
    def requests(self) -> Requests:
        """Access requests: yours, or all of them for the node's owner."""
        return Requests(self)

    @property
    def budgets(self) -> Budgets:
        """veil.dp privacy budgets: set them (owners), inspect them (everyone: their own)."""
        return Budgets(self)

    def create_user(self, email: str, password: str, *, role: str = "data_scientist",
                    name: str = "") -> UserInfo:  # fmt: skip
        """Owners and admins: add a user to the node."""
        reply = self.call(CreateUser(email, password, role, name))
        assert isinstance(reply, UserInfo)
        return reply

    def users(self) -> list[UserInfo]:
        reply = self.call(ListUsers())
        assert isinstance(reply, UserList)
        return reply.items

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        """Owners and admins: the newest audit entries, newest first."""
        reply = self.call(GetAudit(limit))
        assert isinstance(reply, AuditLog)
        return reply.items

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Asset:
    """One piece of a dataset: a pointer to the private data and the local mock."""

    def __init__(self, worker: Worker, info: AssetInfo) -> None:
        self.name = info.name
        self.columns = list(info.columns)
        self.bounds = [tuple(b) for b in info.bounds]
        self.description = info.description
        self.private = PointerTensor(worker, info.pointer, owned=False)
        self.mock = tensor_from_data(info.mock, copy=True)

    def __repr__(self) -> str:
        return f"Asset({self.name!r}, private={self.private!r}, mock={tuple(self.mock.shape)})"


class Dataset:
    """A dataset on a node, as its users see it: pointers to private data plus mocks."""

    def __init__(self, worker: Worker, info: DatasetInfo) -> None:
        self.name = info.name
        self.description = info.description
        self.assets = {a.name: Asset(worker, a) for a in info.assets}

    def __getitem__(self, name: str) -> Asset:
        return self.assets[name]

    @property
    def _main(self) -> Asset:
        return next(iter(self.assets.values()))

    @property
    def private(self) -> PointerTensor:
        """Pointer to the (first asset's) private data: compute on it, you cannot get it."""
        return self._main.private

    @property
    def mock(self) -> torch.Tensor:
        """Local fake data of the same shape and dtype, to develop code against."""
        return self._main.mock

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, assets={list(self.assets)}, {self.description!r})"


class Datasets:
    """``worker.datasets``: list, look up and (owners) create datasets."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def __getitem__(self, name: str) -> Dataset:
        reply = self._worker.call(GetDataset(name))
        assert isinstance(reply, DatasetInfo)
        return Dataset(self._worker, reply)

    def list(self) -> builtins.list[Dataset]:
        reply = self._worker.call(ListDatasets())
        assert isinstance(reply, DatasetList)
        return [Dataset(self._worker, d) for d in reply.items]

    def __iter__(self) -> Iterator[Dataset]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())

    def create(self, name: str, *, private: torch.Tensor | dict[str, torch.Tensor],
               mock: torch.Tensor | dict[str, torch.Tensor], description: str = "",
               columns: builtins.list[str] | None = None,
               bounds: builtins.list[tuple[float, float]] | tuple[float, float] | None = None,
               subjects: Any = None) -> Dataset:  # fmt: skip
        """Owners: publish a dataset of private data with a mock of the same shape.

        Args:
            private / mock: one tensor, or a dict asset name -> tensor (same keys).
            columns: names of the last dimension's columns (single-asset datasets).
            bounds: ``(low, high)`` for all values, or one per column; later used for
                sensitivity in differentially private releases (the data must lie inside).
            subjects: the data subject of each row (a list or 1-D tensor of ids), for DP
                releases that protect a person with several rows; default one per row.

        Example:
            >>> import torch, veil
            >>> node = veil.VirtualWorker("bank")
            >>> ds = node.datasets.create("loans", private=torch.rand(5, 2),
            ...     mock=torch.rand(5, 2), columns=["amount", "rate"], bounds=[(0, 1), (0, 1)])
            >>> ds.private.shape
            torch.Size([5, 2])
        """
        privs = private if isinstance(private, dict) else {"data": private}
        mocks = mock if isinstance(mock, dict) else {"data": mock}
        if set(privs) != set(mocks):
            raise InvalidRequest(
                f"private and mock assets differ: {sorted(privs)} vs {sorted(mocks)}"
            )
        if bounds is not None and len(bounds) == 2 and not isinstance(bounds[0], list | tuple):
            bounds = [bounds]  # type: ignore[list-item]
        specs = [
            AssetSpec(
                n,
                tensor_to_data(privs[n]),
                tensor_to_data(mocks[n]),
                list(columns or []),
                [(float(lo), float(hi)) for lo, hi in (bounds or [])],  # type: ignore[misc]
                subjects=[
                    int(v)
                    for v in (
                        subjects.tolist()
                        if isinstance(subjects, torch.Tensor)
                        else (subjects or [])
                    )
                ],
            )  # fmt: skip
            for n in privs
        ]
        reply = self._worker.call(CreateDataset(name, description, specs))
        assert isinstance(reply, DatasetInfo)
        return Dataset(self._worker, reply)


class Budgets:
    """Privacy budgets per user and dataset, enforced by the node on every ``publish``.

    Example:
        >>> import torch, veil
        >>> owner = veil.VirtualWorker("clinic")
        >>> _ = owner.datasets.create("ages", private=torch.tensor([30.0, 40.0]),
        ...                           mock=torch.zeros(2), bounds=(0, 120))
        >>> _ = owner.create_user("ds@x.org", "pw-123456")
        >>> owner.budgets.set("ds@x.org", "ages", epsilon=2.0, delta=1e-6).epsilon
        2.0
        >>> [(b.user, b.spent_epsilon) for b in owner.budgets.list()]
        [('ds@x.org', 0.0)]
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def set(self, user: str, dataset: str, *, epsilon: float, delta: float = 0.0) -> BudgetInfo:
        """Owners/admins: give ``user`` (an email) a budget of (ε, δ) on ``dataset``."""
        reply = self._worker.call(SetBudget(user, dataset, float(epsilon), float(delta)))
        assert isinstance(reply, BudgetInfo)
        return reply

    def list(self, user: str | None = None) -> builtins.list[BudgetInfo]:
        """Budgets with what was spent: all of them for owners, else your own."""
        reply = self._worker.call(ListBudgets(user))
        assert isinstance(reply, BudgetList)
        return reply.items

    def __iter__(self) -> Iterator[BudgetInfo]:
        return iter(self.list())

    def __repr__(self) -> str:
        return f"Budgets({self._worker.name!r})"


class Requests:
    """``worker.requests``: access requests (owners see and decide all of them)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def list(self, status: str | None = None) -> builtins.list[RequestInfo]:
        reply = self._worker.call(ListRequests(status))
        assert isinstance(reply, RequestList)
        return reply.items

    def __iter__(self) -> Iterator[RequestInfo]:
        return iter(self.list("pending"))

    def approve(self, request_id: int, note: str = "") -> RequestInfo:
        reply = self._worker.call(DecideRequest(request_id, True, note))
        assert isinstance(reply, RequestInfo)
        return reply

    def deny(self, request_id: int, note: str = "") -> RequestInfo:
        reply = self._worker.call(DecideRequest(request_id, False, note))
        assert isinstance(reply, RequestInfo)
        return reply


class VirtualWorker(Worker):
    """An in-process node, plus a client session on it (its owner's, unless logged in).

    Every call still goes through the wire format, so what works on a VirtualWorker
    works against a node server; its :attr:`transport` is an
    :class:`~veil.node.transports.InProcessTransport` that hands frames to the node.

    Args:
        name: the node's name; ``VirtualWorker(hook, id="alice")`` and
            ``VirtualWorker(id="alice", hook=hook)`` (PySyft 0.2) also work (veil needs no
            hook: it is accepted and unused).
        node: an existing :class:`Node` to attach to (for tests and multi-user setups).

    Example:
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> x = torch.tensor([1.0, 2, 3, 4]).send(alice)
        >>> (x * 2).sum().get()
        tensor(20.)
    """

    def __init__(self, name: Any = None, id: str | None = None, *, node: Node | None = None,  # noqa: A002
                 session: Session | None = None, hook: TorchHook | None = None,
                 **node_options: Any) -> None:  # fmt: skip
        if isinstance(name, TorchHook) or name is None:
            name = id
        if node is None:
            if not isinstance(name, str) or not name:
                raise ValueError("VirtualWorker needs a name: VirtualWorker('alice')")
            node = Node(name, **node_options)
        if session is None:
            owner = next(u for u in node._users.values() if u.role == "owner")
            session = Session(owner.id, owner.email, owner.role)
        self._local = InProcessTransport(node, session)
        super().__init__(node.name, self._local)
        self.node = node
        self.id = node.name

    @property
    def session(self) -> Session:
        """The user this worker acts as on its node."""
        return self._local.session

    @session.setter
    def session(self, session: Session) -> None:
        self._local.session = session

    def login(self, email: str, password: str) -> VirtualWorker:
        """Another client of the same node, as the given user."""
        return VirtualWorker(node=self.node, session=self.node.login(email, password))

    def __repr__(self) -> str:
        return f"VirtualWorker({self.name!r}, user={self.session.email!r})"
