"""veil.plans: trace a function or a model once, run it on a node in one round trip, have it reviewed.

``@veil.plan`` (or PySyft's ``@sy.func2plan`` and ``class Net(sy.Plan)``) traces code into
a :class:`Plan` of allowlisted ops; ``plan.send(worker)`` and ``plan(ptr)`` run it on a
node in one message (``plan.run(..., repeat=n)`` for a training loop), under the node's
privacy rules; ``plan.request(node, dataset=..., reason=..., runs=...)`` asks the owner to
let it run on private data. :class:`Protocol` runs plans on several nodes in order.
See docs/plans.md.
"""

from __future__ import annotations

from veil.plans import node as _node  # noqa: F401  (installs the capability)
from veil.plans.plan import Plan, func2plan, plan
from veil.plans.protocol import Protocol
from veil.plans.review import approve, deny, require_review, review, reviews, settings
from veil.plans.tracer import TracedTensor

__all__ = [
    "Plan",
    "Protocol",
    "TracedTensor",
    "approve",
    "deny",
    "func2plan",
    "plan",
    "require_review",
    "review",
    "reviews",
    "settings",
]
