"""Typed wire messages (msgspec Structs). The only types that ever cross the wire."""

from __future__ import annotations

from typing import Union

import msgspec

# ----------------------------------------------------------------------------- values


class TensorData(msgspec.Struct, tag="tensor", frozen=True):
    """A tensor as dtype name + shape + raw little-endian bytes (C order)."""

    dtype: str
    shape: list[int]
    data: memoryview  # bytes-like; decoded as a view into the frame
    requires_grad: bool = False


class Ref(msgspec.Struct, tag="ref", frozen=True):
    """A reference to an object in the receiving node's store."""

    id: int


class SliceArg(msgspec.Struct, tag="slice", frozen=True):
    start: int | Ref | None = None
    stop: int | Ref | None = None
    step: int | Ref | None = None


class EllipsisArg(msgspec.Struct, tag="ellipsis", frozen=True):
    pass


class DTypeArg(msgspec.Struct, tag="dtype", frozen=True):
    name: str


class ListArg(msgspec.Struct, tag="list", frozen=True):
    items: list[Arg]


class TupleArg(msgspec.Struct, tag="tuple", frozen=True):
    items: list[Arg]


class DictArg(msgspec.Struct, tag="dict", frozen=True):
    items: dict[str, Arg]


class ModuleSpec(msgspec.Struct, tag="module", frozen=True):
    """An ``nn.Module`` tree of allowlisted classes: class name, constructor config,
    children, and its state (parameters and buffers)."""

    cls: str
    config: dict[str, Arg] = {}
    children: list[tuple[str, ModuleSpec]] = []
    state: dict[str, TensorData] = {}
    training: bool = True


Arg = Union[  # noqa: UP007 - msgspec needs a runtime Union here
    None,
    bool,
    int,
    float,
    str,
    Ref,
    TensorData,
    ListArg,
    TupleArg,
    DictArg,
    SliceArg,
    EllipsisArg,
    DTypeArg,
    ModuleSpec,
]

# --------------------------------------------------------------------------- requests


class SendObject(msgspec.Struct, tag="send", frozen=True):
    value: TensorData | ModuleSpec
    description: str = ""
    private: bool = False


class RunOp(msgspec.Struct, tag="op", frozen=True):
    op: str
    args: list[Arg] = []
    kwargs: dict[str, Arg] = {}


class GetObject(msgspec.Struct, tag="get", frozen=True):
    id: int


class DeleteObjects(msgspec.Struct, tag="delete", frozen=True):
    ids: list[int]


class ClearObjects(msgspec.Struct, tag="clear", frozen=True):
    pass


class ListObjects(msgspec.Struct, tag="list_objects", frozen=True):
    pass


class RequestAccess(msgspec.Struct, tag="request", frozen=True):
    id: int
    reason: str


class ListRequests(msgspec.Struct, tag="list_requests", frozen=True):
    status: str | None = None


class DecideRequest(msgspec.Struct, tag="decide", frozen=True):
    id: int
    approve: bool
    note: str = ""


class AssetSpec(msgspec.Struct, frozen=True):
    name: str
    private: TensorData
    mock: TensorData
    columns: list[str] = []
    bounds: list[tuple[float, float]] = []
    description: str = ""
    #: veil.dp: the data subject each row belongs to (empty: one subject per row)
    subjects: list[int] = []


class CreateDataset(msgspec.Struct, tag="create_dataset", frozen=True):
    name: str
    description: str
    assets: list[AssetSpec]


class ListDatasets(msgspec.Struct, tag="list_datasets", frozen=True):
    pass


class GetDataset(msgspec.Struct, tag="get_dataset", frozen=True):
    name: str


class CreateUser(msgspec.Struct, tag="create_user", frozen=True):
    email: str
    password: str
    role: str = "data_scientist"
    name: str = ""


class ListUsers(msgspec.Struct, tag="list_users", frozen=True):
    pass


class GetAudit(msgspec.Struct, tag="audit", frozen=True):
    limit: int = 100


class GetInfo(msgspec.Struct, tag="info", frozen=True):
    pass


# --------------------------------------------------------------- veil.dp: DP releases


class Publish(msgspec.Struct, tag="publish", frozen=True):
    """Release an object with DP noise calibrated to its tracked sensitivity (charged to the caller)."""

    id: int
    epsilon: float
    delta: float = 0.0


class SetBudget(msgspec.Struct, tag="set_budget", frozen=True):
    """Owners/admins: a user's privacy budget on a dataset (``user`` is an email)."""

    user: str
    dataset: str
    epsilon: float
    delta: float = 0.0


class ListBudgets(msgspec.Struct, tag="list_budgets", frozen=True):
    user: str | None = None


class BudgetInfo(msgspec.Struct, tag="budget", frozen=True):
    user: str
    dataset: str
    epsilon: float
    delta: float
    spent_epsilon: float = 0.0
    spent_delta: float = 0.0
    releases: int = 0


class BudgetList(msgspec.Struct, tag="budgets", frozen=True):
    items: list[BudgetInfo]


Request = Union[  # noqa: UP007
    SendObject,
    RunOp,
    GetObject,
    DeleteObjects,
    ClearObjects,
    ListObjects,
    RequestAccess,
    ListRequests,
    DecideRequest,
    CreateDataset,
    ListDatasets,
    GetDataset,
    CreateUser,
    ListUsers,
    GetAudit,
    GetInfo,
    Publish,
    SetBudget,
    ListBudgets,
]


class Call(msgspec.Struct, frozen=True):
    """One client -> node message: a request plus ids of pointers the client dropped."""

    msg: Request
    release: list[int] = []


# ---------------------------------------------------------------------------- replies


class ObjectInfo(msgspec.Struct, tag="object", frozen=True):
    """What a pointer knows about its remote object without fetching it."""

    id: int
    kind: str  # "tensor" | "module" | "optimizer"
    shape: list[int] = []
    dtype: str = ""
    requires_grad: bool = False
    private: bool = False
    owner: str = ""
    sources: list[str] = []
    names: list[str] = []  # parameter names of a module
    description: str = ""


class Results(msgspec.Struct, tag="results", frozen=True):
    """Several objects returned by one op (``torch.max(x, 0)``, ``split``...)."""

    items: list[ObjectInfo | Results | None]  # nested for (output, (h, c)) style results
    tuple_type: str = ""  # name of a torch.return_types namedtuple, if any


class Done(msgspec.Struct, tag="done", frozen=True):
    pass


class Value(msgspec.Struct, tag="value", frozen=True):
    value: TensorData | ModuleSpec


class ObjectList(msgspec.Struct, tag="objects", frozen=True):
    items: list[ObjectInfo]


class RequestInfo(msgspec.Struct, tag="request_info", frozen=True):
    id: int
    object_id: int
    requester: str
    reason: str
    status: str
    created: float
    decided_by: str = ""
    note: str = ""
    object: ObjectInfo | None = None


class RequestList(msgspec.Struct, tag="requests", frozen=True):
    items: list[RequestInfo]


class AssetInfo(msgspec.Struct, frozen=True):
    name: str
    pointer: ObjectInfo
    mock: TensorData
    columns: list[str] = []
    bounds: list[tuple[float, float]] = []
    description: str = ""


class DatasetInfo(msgspec.Struct, tag="dataset", frozen=True):
    name: str
    description: str
    assets: list[AssetInfo]
    created: float = 0.0


class DatasetList(msgspec.Struct, tag="datasets", frozen=True):
    items: list[DatasetInfo]


class UserInfo(msgspec.Struct, tag="user", frozen=True):
    id: int
    email: str
    role: str
    name: str = ""


class UserList(msgspec.Struct, tag="users", frozen=True):
    items: list[UserInfo]


class AuditEntry(msgspec.Struct, frozen=True):
    ts: float
    user: str
    action: str
    detail: str = ""
    objects: list[int] = []
    sources: list[str] = []


class AuditLog(msgspec.Struct, tag="audit_log", frozen=True):
    items: list[AuditEntry]


class NodeInfo(msgspec.Struct, tag="node_info", frozen=True):
    name: str
    version: str
    wire_version: int
    user: str = ""
    role: str = ""
    objects: int = 0
    object_bytes: int = 0


class ErrorReply(msgspec.Struct, tag="error", frozen=True):
    code: str
    message: str


Reply = Union[  # noqa: UP007
    ObjectInfo,
    Results,
    Done,
    Value,
    ObjectList,
    RequestInfo,
    RequestList,
    DatasetInfo,
    DatasetList,
    UserInfo,
    UserList,
    AuditLog,
    NodeInfo,
    ErrorReply,
    BudgetInfo,
    BudgetList,
]
