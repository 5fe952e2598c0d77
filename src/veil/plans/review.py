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
from veil.serde.plans import ListPlans, PlanReviewInfo, PlanReviews, PlanSettings, ShowPlan

__all__ = ["approve", "deny", "require_review", "review", "reviews", "settings"]


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


def require_review(worker: Any, enabled: bool | None = True) -> bool:
    """Owners: make the node run scientists' code on private data only as plans you approved
    (``enabled=False``: single ops on private data are allowed again, under the privacy
    rules; None: only read the setting). Returns the setting now.

    Example:
        >>> import torch, veil
        >>> owner = veil.VirtualWorker("clinic")
        >>> _ = owner.datasets.create("ages", private=torch.tensor([30.0, 40.0]), mock=torch.ones(2))
        >>> require_review(owner)
        True
        >>> _ = owner.create_user("ds@x.org", "pw-123456")
        >>> sci = owner.login("ds@x.org", "pw-123456")
        >>> sci.datasets["ages"].private.mean()
        Traceback (most recent call last):
        ...
        veil.errors.PermissionDenied: node 'clinic' runs code on private data only as plans ...
    """
    return bool(settings(worker, review_only=enabled).review_only)


def settings(worker: Any, *, review_only: bool | None = None,
             release_outputs: bool | None = None) -> PlanSettings:  # fmt: skip
    """Owners: change the node's plan settings (None: leave as is); anyone: read them.

    ``review_only``: see :func:`require_review`. ``release_outputs``: the release policy
    ``plan-outputs``: the requester of an approved plan request that asked for its results
    (``plan.request(..., release=True)``) may fetch each run's results.

    Example:
        >>> import veil
        >>> owner = veil.VirtualWorker("clinic")
        >>> settings(owner, release_outputs=True)
        PlanSettings(review_only=False, release_outputs=True)
    """
    msg = PlanSettings(
        None if review_only is None else bool(review_only),
        None if release_outputs is None else bool(release_outputs),
    )
    return capability.call(worker, "plans", "settings", msg, PlanSettings)
