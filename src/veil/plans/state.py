"""The plans capability's state on a node: stored plans, settings, and what each approval covers."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, NamedTuple

from veil.errors import ObjectNotFound, PermissionDenied
from veil.node.capability import CapabilityState
from veil.node.store import RequestRow
from veil.node.users import Session
from veil.serde.plans import PlanSpec, decode_plan

#: Most runs one approval may grant, and one message may ask for.
MAX_RUNS = 1_000_000
#: Most ops one message may run (runs x ops): a plan holds the node for one message.
MAX_OPS_PER_MESSAGE = 10_000_000
#: Longest a run on public objects may hold the node (seconds; checked between ops).
MAX_PUBLIC_SECONDS = 600.0
#: Mock runs for a review read at most this many elements of mock data.
MAX_MOCK_ELEMENTS = 50_000_000
#: Largest plan a node stores (its encoded bytes).
MAX_PLAN_BYTES = 64 * 1024**2
#: The release policy of plans, and the label of the results it may release.
RELEASE_POLICY = "plan-outputs"
OUTPUT_LABEL = "plans.out:"

#: Durable rows: stored plans (by hash), reviews being prepared (by user and hash), the
#: review each request froze (by request id), runs used (by request id), released results
#: (by object id), settings.
PROGRAMS, PENDING, REQUESTS = "plans.program", "plans.review", "plans.request"
RUNS, OUTPUTS, SETTINGS = "plans.runs", "plans.output", "plans.setting"


class Terms(NamedTuple):
    """What an approval of a plan request covers."""

    hash: str
    runs: int
    release: bool
    dataset: str


def terms(row: RequestRow) -> Terms:
    """The terms a plan request's digest states (``hash:runs:release:dataset``).

    Example:
        >>> from veil.node.store import RequestRow
        >>> terms(RequestRow(1, 0, 2, "r", "approved", 0.0, digest="ab:5:1:scans:v2"))
        Terms(hash='ab', runs=5, release=True, dataset='scans:v2')
    """
    return parse_terms(row.digest)


def parse_terms(digest: str) -> Terms:
    """:func:`terms` of a digest string (``hash:runs:release:dataset``).

    Example:
        >>> parse_terms("ab:3:0:digits").runs
        3
    """
    plan_hash, runs, release, dataset = digest.split(":", 3)
    return Terms(plan_hash, int(runs), release == "1", dataset)


#: Request kinds of capabilities above plans whose approvals also let a plan run, each with
#: how to read the plan terms from such a request (``veil.fl``: an enrolment in a federation
#: approves its training plan for its rounds). Their runs are counted like a plan request's.
AUTHORIZERS: dict[str, Callable[[RequestRow], Terms]] = {}


def register_authorizer(kind: str, read: Callable[[RequestRow], Terms]) -> None:
    """Let approved requests of ``kind`` authorize plan runs on the terms ``read`` gives
    (never results to release: their release is the capability's own policy).

    Example:
        >>> register_authorizer("doc.kind", lambda row: parse_terms(row.digest))
        >>> "doc.kind" in AUTHORIZERS
        True
        >>> del AUTHORIZERS["doc.kind"]
    """
    if kind == "plan":
        raise ValueError("'plan' requests authorize plans already")
    AUTHORIZERS[kind] = read


class PlansState(CapabilityState):
    """The plans a node holds (by hash, decoded once), its settings, and the runs used."""

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self._programs: dict[str, PlanSpec] = {}
        self._running = False  # inside an approved plans.run

    @property
    def review_only(self) -> bool:
        """Does this node run code on private data only as approved plans?"""
        row = self.node.row("review_only", SETTINGS)
        return bool(row and row.get("enabled"))

    def before_private_op(self, session: Session, op: str) -> None:
        if self._running or op == "plans.run" or not self.review_only:
            return
        raise PermissionDenied(
            f"node {self.node.name!r} runs code on private data only as plans its owner "
            f"approved, so {op} on private data is refused: trace your code into a plan "
            "(@veil.plan), try it on the mock data, then ask with plan.request(node, "
            "dataset=..., reason=..., runs=...)"
        )

    def program(self, plan_hash: str) -> PlanSpec:
        """A stored plan by its hash (ObjectNotFound if this node has none)."""
        spec = self._programs.get(plan_hash)
        if spec is None:
            row = self.node.row(plan_hash, PROGRAMS)
            if row is None:
                raise ObjectNotFound(
                    f"node {self.node.name!r} has no plan {plan_hash[:16]!r}; send it first "
                    "(plan.send(worker))"
                )
            spec = decode_plan(base64.b64decode(row["plan"]))
            self._programs[plan_hash] = spec
        return spec

    def used(self, request_id: int) -> int:
        """Runs used of an approved plan request."""
        row = self.node.row(str(request_id), RUNS)
        return int(row["used"]) if row else 0

    def frozen(self, request_id: int) -> dict[str, Any]:
        """The review a plan request froze when it was made (what the owner decides on)."""
        return dict(self.node.row(str(request_id), REQUESTS) or {})
