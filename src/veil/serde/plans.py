"""Plans on the wire: a traced program of allowlisted ops, and the plans capability's messages.

A plan is data, never code: its ops are names on the node's allowlist, its arguments are
the same typed values a single op carries (:data:`~veil.serde.messages.Arg`), and every
value it computes is a numbered *slot*. Slots are the plan's inputs, its state (the
tensors, models and optimizers it was traced with, which the caller keeps on the node),
and the results of its ops. The content hash (:func:`program_hash`) covers everything that
decides what the plan computes, and nothing else (not its name, not the lines of the
user's code that traced it), so a data owner's approval binds to exactly that.

Example:
    >>> from veil.serde.messages import Ref
    >>> spec = PlanSpec("double", [PlanSlot(1, "x", shape=[2], dtype="float32")], [],
    ...                 [PlanOp("Tensor.__add__", [Ref(1), Ref(1)], out=Ref(2))], Ref(2))
    >>> decode_plan(encode_plan(spec)) == spec
    True
    >>> len(program_hash(spec))
    64
"""

from __future__ import annotations

import hashlib

import msgspec

from veil.errors import SerdeError
from veil.serde.messages import Arg, ModuleSpec, OptimizerSpec

#: Version of the plan format (a node refuses versions it does not know).
PLAN_VERSION = 1


class PlanSlot(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """An input or a piece of state of a plan.

    ``kind`` is ``"tensor"``, ``"module"`` or ``"optimizer"``. A tensor slot states its
    shape and dtype; a module slot its architecture (a :class:`ModuleSpec` without
    weights); an optimizer slot its class and options, its parameters as
    ``ParamRef(record=<slot of the module or tensor>, slot=<parameter name>)``.
    """

    id: int
    name: str
    kind: str = "tensor"
    shape: list[int] = []
    dtype: str = ""
    requires_grad: bool = False
    module: ModuleSpec | None = None
    optimizer: OptimizerSpec | None = None


class PlanOp(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One traced op: its wire name, its arguments (``Ref(slot)`` for traced values,
    constants inline), and ``out``: the slots its result fills (a ``Ref``, or a
    ``TupleArg``/``ListArg`` of them; None: it returns nothing). ``line``: where the
    user's code called it (for errors and review; not part of the hash)."""

    op: str
    args: list[Arg] = []
    kwargs: dict[str, Arg] = {}
    out: Arg = None
    line: str = ""


class PlanSpec(msgspec.Struct, tag="plan", frozen=True, omit_defaults=True, gc=False):
    """A traced plan: inputs, state, ops in order, and what it returns (``Ref`` leaves in
    tuples/lists)."""

    name: str
    inputs: list[PlanSlot]
    state: list[PlanSlot]
    ops: list[PlanOp]
    outputs: Arg = None
    #: What each op result slot holds (shape, dtype, requires_grad), for review and printing.
    values: list[PlanSlot] = []
    version: int = PLAN_VERSION


def encode_plan(spec: PlanSpec) -> bytes:
    """The plan as msgpack bytes (what travels and what a node stores).

    Example:
        >>> decode_plan(encode_plan(PlanSpec("p", [], [], []))).name
        'p'
    """
    return msgspec.msgpack.encode(spec)


def decode_plan(data: bytes | memoryview) -> PlanSpec:
    """Decode and type-check a plan (raises :class:`~veil.errors.SerdeError` on anything
    that is not one).

    Example:
        >>> decode_plan(b"junk")
        Traceback (most recent call last):
        ...
        veil.errors.SerdeError: not a plan: ...
    """
    try:
        return msgspec.msgpack.decode(data, type=PlanSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SerdeError(f"not a plan: {str(exc)[:300]}") from None


def program_hash(spec: PlanSpec) -> str:
    """SHA-256 (hex) of what the plan computes: inputs, state slots, ops and outputs, without
    its name and the source lines it was traced from.

    Example:
        >>> a = PlanSpec("a", [], [], [PlanOp("torch.ones", [2], line="x.py:1")])
        >>> b = PlanSpec("b", [], [], [PlanOp("torch.ones", [2], line="y.py:9")])
        >>> program_hash(a) == program_hash(b)
        True
    """
    bare = msgspec.structs.replace(
        spec, name="", ops=[msgspec.structs.replace(op, line="") for op in spec.ops]
    )
    return hashlib.sha256(msgspec.msgpack.encode(bare)).hexdigest()


# ------------------------------------------------------- the plans capability's methods


class StorePlan(msgspec.Struct, frozen=True, gc=False):
    """Store a plan on the node (content-addressed: storing it twice is a no-op)."""

    plan: bytes  # encode_plan(spec): checked by the node before anything else


class PlanStored(msgspec.Struct, frozen=True, gc=False):
    hash: str
    ops: int


class AskPlan(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Prepare a review of plan ``hash`` for ``runs`` runs on ``dataset`` (the request
    itself is then made with ``RequestAccess(kind="plan", subject=hash)``).

    ``inputs`` names, per plan input, the dataset asset it will be (``""``: the scientist
    supplies it; it is zeros for the review's mock run); ``state``: ids of the scientist's
    objects the plan's state slots will be, for the mock run."""

    hash: str
    dataset: str
    runs: int
    inputs: list[str] = []
    state: list[int] = []
    #: Ask also that the requester may fetch each run's results (the owner's release
    #: policy ``plan-outputs`` must be on for that).
    release: bool = False


class PlanReviewInfo(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """What a data owner reviews: the plan as code, its result on the mock data, what it
    could release, its hash, and the runs asked for and used."""

    hash: str
    name: str
    dataset: str
    runs: int
    code: str
    mock_result: str
    releases: str
    used: int = 0
    request: int = 0
    status: str = ""
    requester: str = ""
    reason: str = ""
    release: bool = False


class ListPlans(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    status: str | None = None


class PlanReviews(msgspec.Struct, frozen=True, gc=False):
    items: list[PlanReviewInfo]


class ShowPlan(msgspec.Struct, frozen=True, gc=False):
    request: int


class PlanSettings(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A node's plan settings (owners change them; None: leave as is). ``review_only``: run
    scientists' code on private data only as plans the owner approved (single ops and
    unapproved plans on private data are refused)."""

    review_only: bool | None = None
    #: The release policy ``plan-outputs``: results of approved runs of plans whose request
    #: asked for them may be fetched by their requester.
    release_outputs: bool | None = None


def check_version(spec: PlanSpec) -> None:
    """Refuse a plan of a format this side does not know."""
    if spec.version != PLAN_VERSION:
        raise SerdeError(
            f"plan format version {spec.version} is not supported here (this side reads "
            f"version {PLAN_VERSION}); trace the plan again with this veil"
        )
