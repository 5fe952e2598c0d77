"""Typed wire messages (msgspec Structs). The only types that ever cross the wire."""

from __future__ import annotations

from typing import Union

import msgspec

# ----------------------------------------------------------------------------- values


class TensorData(msgspec.Struct, tag="tensor", frozen=True, gc=False):
    """A tensor as dtype name + shape + raw little-endian bytes (C order)."""

    dtype: str
    shape: list[int]
    data: memoryview  # bytes-like; decoded as a view into the frame
    requires_grad: bool = False


class Ref(msgspec.Struct, tag="ref", frozen=True, gc=False):
    """A reference to an object in the receiving node's store."""

    id: int


class SliceArg(msgspec.Struct, tag="slice", frozen=True, gc=False):
    start: int | Ref | None = None
    stop: int | Ref | None = None
    step: int | Ref | None = None


class EllipsisArg(msgspec.Struct, tag="ellipsis", frozen=True, gc=False):
    pass


class DTypeArg(msgspec.Struct, tag="dtype", frozen=True, gc=False):
    name: str


class ListArg(msgspec.Struct, tag="list", frozen=True, gc=False):
    items: list[Arg]


class TupleArg(msgspec.Struct, tag="tuple", frozen=True, gc=False):
    items: list[Arg]


class DictArg(msgspec.Struct, tag="dict", frozen=True, gc=False):
    items: dict[str, Arg]


class ModuleSpec(msgspec.Struct, tag="module", frozen=True, gc=False):
    """An ``nn.Module`` tree of allowlisted classes: class name, constructor config,
    children, and its state (parameters and buffers)."""

    cls: str
    config: dict[str, Arg] = {}
    children: list[tuple[str, ModuleSpec]] = []
    state: dict[str, TensorData] = {}
    training: bool = True


class KerasModelData(msgspec.Struct, tag="keras", frozen=True, gc=False):
    """A Keras 3 model (``veil.keras``): its config as Keras's own JSON, checked against the
    allowlist of Keras's built-in classes (``veil.ops.keras``) before a peer builds it, and
    its variables as tensors, in ``model.weights`` order, with their paths."""

    config: str
    paths: list[str] = []
    weights: list[TensorData] = []


# ---------------------------------------------------- homomorphic encryption (veil.he)


class EncryptedData(msgspec.Struct, tag="encrypted", frozen=True, gc=False):
    """A homomorphically encrypted tensor (veil.he): the scheme, its public shape, the
    ciphertexts in the scheme library's own serialization, and layout metadata.

    ``context`` names the node object holding its public context (client -> node);
    ``context_data`` carries that public context inline (the node's own storage only).
    """

    scheme: str  # "paillier" | "ckks"
    shape: list[int]
    parts: list[memoryview]
    meta: dict[str, int | float | str | bool] = {}
    layout: TensorData | None = None
    context: int | None = None
    context_data: memoryview | None = None


class EncryptionContextData(msgspec.Struct, tag="he_context", frozen=True, gc=False):
    """A public encryption context (veil.he): a Paillier modulus or a TenSEAL context
    serialized without its secret key."""

    scheme: str
    data: memoryview


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

# -------------------------------------------- a node's own storage (never sent on the wire)


class TensorView(msgspec.Struct, tag="tensor_view", frozen=True, gc=False):
    """A stored tensor that shares memory with a tensor of another record, its base: the
    node rebuilds it as a view of that tensor (``as_strided``), so that a write through
    one is seen through the other after a restart too.

    ``slot`` names the base's tensor ("" for a tensor record; a parameter or buffer name
    of a module); ``offset`` is the view's storage offset minus that tensor's (elements);
    ``same``: the view is that very tensor (a module's parameter as its own record).
    ``leaf``: it had no autograd history (rebuilt detached, with ``requires_grad``);
    otherwise it is rebuilt linked to its base's graph."""

    base: int
    slot: str
    offset: int
    shape: list[int]
    stride: list[int]
    same: bool = False
    leaf: bool = True
    requires_grad: bool = False


class ParamRef(msgspec.Struct, tag="param_ref", frozen=True, gc=False):
    """A tensor another record holds: its ``slot`` (see :class:`TensorView`)."""

    record: int
    slot: str = ""


class OptimizerGroup(msgspec.Struct, frozen=True, gc=False):
    """One parameter group: its parameters (references, or the tensors themselves when
    no record holds them) and its hyperparameters."""

    params: list[ParamRef | TensorData]
    options: dict[str, Arg] = {}


class OptimizerSpec(msgspec.Struct, tag="optimizer", frozen=True, gc=False):
    """A torch optimizer of an allowlisted class (``veil.ops.OPTIMIZER_CLASSES``): its
    constructor defaults, parameter groups, and per-parameter state (momentum buffers,
    Adam moments, step counts), in the order of the groups' parameters."""

    cls: str
    groups: list[OptimizerGroup]
    defaults: dict[str, Arg] = {}
    state: list[dict[str, Arg]] = []


# --------------------------------------------------------------------------- requests


class SendObject(msgspec.Struct, tag="send", frozen=True, gc=False):
    value: TensorData | ModuleSpec | KerasModelData | EncryptedData | EncryptionContextData
    description: str = ""
    private: bool = False


class RunOp(msgspec.Struct, tag="op", frozen=True, omit_defaults=True, gc=False):
    """Run an allowlisted op. ``out``: the id the (single) result must get, chosen by a
    client that pipelines ops (0: the node picks; see ``CLIENT_IDS``)."""

    op: str
    args: list[Arg] = []
    kwargs: dict[str, Arg] = {}
    out: int = 0


#: Ids a client may choose for results (``RunOp.out``); a node never assigns these itself.
CLIENT_IDS = range(2**62, 2**63)


class GetObject(msgspec.Struct, tag="get", frozen=True, gc=False):
    id: int


class DeleteObjects(msgspec.Struct, tag="delete", frozen=True, gc=False):
    ids: list[int]


class ClearObjects(msgspec.Struct, tag="clear", frozen=True, gc=False):
    pass


class ListObjects(msgspec.Struct, tag="list_objects", frozen=True, gc=False):
    pass


class RequestAccess(msgspec.Struct, tag="request", frozen=True, omit_defaults=True, gc=False):
    """Ask the owner for object ``id``, or (``kind`` other than ``"object"``) for what a
    capability's request kind names by ``subject`` (e.g. runs of a plan, by its hash)."""

    id: int
    reason: str
    kind: str = "object"
    subject: str = ""


class ListRequests(msgspec.Struct, tag="list_requests", frozen=True, gc=False):
    status: str | None = None


class DecideRequest(msgspec.Struct, tag="decide", frozen=True, gc=False):
    id: int
    approve: bool
    note: str = ""


class AssetSpec(msgspec.Struct, frozen=True, gc=False):
    name: str
    private: TensorData
    mock: TensorData
    columns: list[str] = []
    bounds: list[tuple[float, float]] = []
    description: str = ""
    #: veil.dp: the data subject each row belongs to (empty: one subject per row)
    subjects: list[int] = []


class CreateDataset(msgspec.Struct, tag="create_dataset", frozen=True, gc=False):
    name: str
    description: str
    assets: list[AssetSpec]


class ListDatasets(msgspec.Struct, tag="list_datasets", frozen=True, gc=False):
    pass


class GetDataset(msgspec.Struct, tag="get_dataset", frozen=True, gc=False):
    name: str


class CreateUser(msgspec.Struct, tag="create_user", frozen=True, gc=False):
    email: str
    password: str
    role: str = "data_scientist"
    name: str = ""


class ListUsers(msgspec.Struct, tag="list_users", frozen=True, gc=False):
    pass


class GetAudit(msgspec.Struct, tag="audit", frozen=True, gc=False):
    limit: int = 100


class GetInfo(msgspec.Struct, tag="info", frozen=True, gc=False):
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


class CapabilityCall(msgspec.Struct, tag="capability", frozen=True, gc=False):
    """A typed call of a capability's method (:mod:`veil.node.capability`): ``body`` is the
    msgpack of the method's request Struct, decoded by the node against the type the
    capability registered (so it is validated like every other message)."""

    capability: str
    method: str
    body: bytes


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
    CapabilityCall,
]


class Call(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One client -> node message: ops the client deferred (run first, in order), ids of
    pointers the client dropped (released next), then the request."""

    msg: Request
    release: list[int] = []
    before: list[RunOp] = []


# ---------------------------------------------------------------------------- replies


class ObjectInfo(msgspec.Struct, tag="object", frozen=True, omit_defaults=True, gc=False):
    """What a pointer knows about its remote object without fetching it."""

    id: int
    kind: str  # "tensor" | "module" | "optimizer" | extension kinds ("encrypted", "he_context")
    shape: list[int] = []
    dtype: str = ""
    requires_grad: bool = False
    private: bool = False
    owner: str = ""
    sources: list[str] = []
    names: list[str] = []  # parameter names of a module
    description: str = ""


class Results(msgspec.Struct, tag="results", frozen=True, gc=False):
    """Several objects returned by one op (``torch.max(x, 0)``, ``split``...)."""

    items: list[ObjectInfo | Results | None]  # nested for (output, (h, c)) style results
    tuple_type: str = ""  # name of a torch.return_types namedtuple, if any


class Done(msgspec.Struct, tag="done", frozen=True, gc=False):
    pass


class Value(msgspec.Struct, tag="value", frozen=True, gc=False):
    value: TensorData | ModuleSpec | KerasModelData | EncryptedData | EncryptionContextData


class ObjectList(msgspec.Struct, tag="objects", frozen=True, gc=False):
    items: list[ObjectInfo]


class RequestInfo(msgspec.Struct, tag="request_info", frozen=True, gc=False):
    id: int
    object_id: int
    requester: str
    reason: str
    status: str
    created: float
    decided_by: str = ""
    note: str = ""
    object: ObjectInfo | None = None
    kind: str = "object"
    subject: str = ""
    #: What the request kind tells the owner about its subject.
    summary: str = ""


class RequestList(msgspec.Struct, tag="requests", frozen=True, gc=False):
    items: list[RequestInfo]


class AssetInfo(msgspec.Struct, frozen=True, gc=False):
    name: str
    pointer: ObjectInfo
    mock: TensorData
    columns: list[str] = []
    bounds: list[tuple[float, float]] = []
    description: str = ""


class DatasetInfo(msgspec.Struct, tag="dataset", frozen=True, gc=False):
    name: str
    description: str
    assets: list[AssetInfo]
    created: float = 0.0


class DatasetList(msgspec.Struct, tag="datasets", frozen=True, gc=False):
    items: list[DatasetInfo]


class UserInfo(msgspec.Struct, tag="user", frozen=True, gc=False):
    id: int
    email: str
    role: str
    name: str = ""


class UserList(msgspec.Struct, tag="users", frozen=True, gc=False):
    items: list[UserInfo]


class AuditEntry(msgspec.Struct, frozen=True, gc=False):
    ts: float
    user: str
    action: str
    detail: str = ""
    objects: list[int] = []
    sources: list[str] = []


class AuditLog(msgspec.Struct, tag="audit_log", frozen=True, gc=False):
    items: list[AuditEntry]


class NodeInfo(msgspec.Struct, tag="node_info", frozen=True, gc=False):
    name: str
    version: str
    wire_version: int
    user: str = ""
    role: str = ""
    objects: int = 0
    object_bytes: int = 0


class ErrorReply(msgspec.Struct, tag="error", frozen=True, omit_defaults=True, gc=False):
    """A failure. ``deferred``: the index in ``Call.before`` of the deferred op that
    failed (the ops after it and the request did not run); -1: the request failed."""

    code: str
    message: str
    deferred: int = -1


class CapabilityReply(msgspec.Struct, tag="capability_reply", frozen=True, gc=False):
    """A capability method's answer: the msgpack of its reply Struct."""

    body: bytes


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
    CapabilityReply,
]

#: What a node writes to its store for one object: its value, or (when it shares tensors
#: with other objects) a view of another object's tensor, or an optimizer that refers to
#: the tensors it steps.
Stored = Union[Value, TensorView, OptimizerSpec]  # noqa: UP007
