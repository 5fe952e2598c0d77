"""The plans capability on a node: what it adds through the seam (see :mod:`veil.node.capability`).

A node stores plans by their content hash after checking them (:mod:`.reviewing`), runs
them with ``plans.run`` under the privacy rules (:mod:`.running`), lets its owner review
the plans scientists ask to run on private data (request kind ``"plan"``), and releases the
results of approved runs that asked for them when the owner enables the release policy
``plan-outputs``. Review-only nodes refuse single ops on private data
(:meth:`~veil.plans.state.PlansState.before_private_op`).
"""

from __future__ import annotations

from veil.node import capability
from veil.node.capability import Capability, Method, ReleasePolicy, RequestKind
from veil.ops import OpFacts, OpSpec
from veil.plans import program, reviewing
from veil.plans.running import run_plan
from veil.plans.state import MAX_RUNS, RELEASE_POLICY, PlansState
from veil.serde.plans import AskPlan, ListPlans, PlanSettings, ShowPlan, StorePlan

CAPABILITY = Capability(
    "plans",
    state=PlansState,
    methods={
        "store": Method(StorePlan, reviewing.store),
        "ask": Method(AskPlan, reviewing.ask),
        "list": Method(ListPlans, reviewing.list_plans),
        "show": Method(ShowPlan, reviewing.show),
        "settings": Method(PlanSettings, reviewing.configure),
    },
    ops=[
        OpSpec(
            "plans.run",
            run_plan,
            "node",
            OpFacts(size="input", pipeline="never", private_args=("state.*", "args.*")),
        ),  # fmt: skip
    ],
    request_kinds=[RequestKind("plan", reviewing.open_request, reviewing.describe)],
    release_policies=[
        ReleasePolicy(
            RELEASE_POLICY,
            reviewing.releasable,
            "results of approved plan runs whose request asked to fetch them, to "
            "their requester, unchanged",
        ),  # fmt: skip
    ],
    info=lambda node: {"plans": {"max_ops": program.MAX_OPS, "max_runs": MAX_RUNS}},
)

if not capability.is_installed("plans"):
    capability.install(CAPABILITY)

__all__ = ["CAPABILITY", "MAX_RUNS", "RELEASE_POLICY", "PlansState", "run_plan"]
