"""The owner's side of plan review, from Python: list plan requests, show one, decide.

Example:
    >>> import torch, veil
    >>> owner = veil.VirtualWorker("clinic")
    >>> _ = owner.datasets.create("ages", private=torch.tensor([30.0, 40.0]), mock=torch.ones(2))
    >>> _ = owner.create_user("ds@x.org", "pw-123456")
    >>> sci = owner.login("ds@x.org", "pw-123456")
    >>> mean = veil.plan(lambda x: x.mean()).build(torch.ones(2))
    >>> req = mean.request(sci, dataset="ages", reason="the mean age", runs=3)
    >>> [r.runs for r in reviews(owner, status="pending")]
    [3]
    >>> print(review(owner, req.id).mock_result)
    float32[] [1]   with x = mock of data
    >>> approve(owner, req.id).status
    'approved'
"""

from __future__ import annotations

from typing import Any

from veil.node import capability
from veil.serde.messages import RequestInfo
from veil.serde.plans import ListPlans, PlanReviewInfo, PlanReviews, ShowPlan

__all__ = ["approve", "deny", "review", "reviews"]


def reviews(worker: Any, status: str | None = None) -> list[PlanReviewInfo]:
    """Plan requests with what the owner reviews (all of them for owners and admins, your
    own otherwise); ``status``: pending, approved, denied."""
    return capability.call(worker, "plans", "list", ListPlans(status), PlanReviews).items


def review(worker: Any, request_id: int) -> PlanReviewInfo:
    """One plan request: the plan as code, its result on the mock data, what it could
    release, its hash, and the runs asked for and used."""
    return capability.call(worker, "plans", "show", ShowPlan(int(request_id)), PlanReviewInfo)


def approve(worker: Any, request_id: int, note: str = "") -> RequestInfo:
    """Owners: approve a plan request (its hash, dataset and number of runs)."""
    return worker.requests.approve(request_id, note)  # type: ignore[no-any-return]


def deny(worker: Any, request_id: int, note: str = "") -> RequestInfo:
    """Owners: deny a plan request."""
    return worker.requests.deny(request_id, note)  # type: ignore[no-any-return]
