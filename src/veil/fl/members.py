"""The scientist's side of a federation over nodes: enrol each node, then run its rounds.

A :class:`Member` is one node of a :class:`~veil.fl.Federation`: its training plan (traced
for its dataset's size), the plan's state on the node, and its approved enrolment.
:func:`secure_round` drives one SecAgg+ session over the members of a round, as its server:
it routes the members' messages and never sees an update unmasked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from veil.errors import PermissionDenied, VeilError
from veil.fl.node.rounds import secagg_config
from veil.fl.secagg import messages as wire
from veil.fl.secagg.server import SecAggServer
from veil.node import capability
from veil.plans import Plan
from veil.serde.fl import (
    Enrol,
    EnrolInfo,
    FitReply,
    FitRound,
    Identity,
    IdentityInfo,
    SecAggReply,
    SecAggStep,
    ShowEnrolment,
)
from veil.serde.messages import GetObject, RequestAccess, RequestInfo, Value
from veil.serde.tensors import tensor_from_data

__all__ = ["Member", "identity", "review", "secure_round", "training_plan"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def identity(node: Any) -> IdentityInfo:
    """A node's federation identity: its name and Ed25519 public key.

    Example:
        >>> import veil
        >>> identity(veil.VirtualWorker("h")).node
        'h'
    """
    return capability.call(node, "fl", "identity", Identity(), IdentityInfo)


def review(owner: Any, request_id: int) -> str:
    """What a node's owner reviews for enrolment request ``request_id``: the federation's
    terms (rounds, how updates leave, the members and their key fingerprints) and the
    training plan as code. Approve with ``owner.requests.approve(request_id)``.

    Example:
        >>> import veil
        >>> review(veil.VirtualWorker("h"), 1)
        Traceback (most recent call last):
        ...
        veil.errors.PermissionDenied: no enrolment 1 you may read
    """
    return capability.call(owner, "fl", "show", ShowEnrolment(request_id), EnrolInfo).text


def training_plan(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Loss,
                  examples: Sequence[torch.Tensor], *, epochs: int, batch_size: int) -> Plan:  # fmt: skip
    """The plan one node runs each round: ``epochs`` passes over its ``n`` rows in the
    order given (an ``[epochs, n]`` permutation the node draws), minibatch steps of
    ``optimizer`` on ``loss_fn``; it returns the mean training loss. Traced on the
    ``examples`` (the dataset's mocks: only shapes and dtypes are read).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> m = torch.nn.Linear(3, 2)
        >>> p = training_plan(m, torch.optim.SGD(m.parameters(), lr=0.1), F.cross_entropy,
        ...                   [torch.zeros(10, 3), torch.zeros(10, dtype=torch.long)],
        ...                   epochs=1, batch_size=4)
        >>> [s.shape for s in p._built().inputs]
        [[10, 3], [10], [1, 10]]
    """
    n = int(examples[0].shape[0])
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")

    def train_round(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        total: Any = None
        for e in range(epochs):
            idx = order[e]
            xs, ys = x.index_select(0, idx), y.index_select(0, idx)
            for s in range(0, n, batch_size):
                xb, yb = xs[s : s + batch_size], ys[s : s + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                part = loss.detach() * float(xb.shape[0])
                total = part if total is None else total + part
        return total / float(n * epochs)

    plan = Plan(train_round, name="train_round")
    return plan.build(*examples, torch.zeros(epochs, n, dtype=torch.long))


@dataclass
class Member:
    """One node of a federation, as the scientist holds it."""

    node: Any
    name: str
    key: bytes
    examples: int
    plan: Plan | None = None
    state_ids: list[int] = field(default_factory=list)
    request: RequestInfo | None = None
    client_id: int = 0

    @property
    def enrolment(self) -> int:
        return self.request.id if self.request is not None else 0

    def enrol(self, terms: Enrol, reason: str) -> EnrolInfo:
        """Ask this node's owner to approve the enrolment (``terms``)."""
        info = capability.call(self.node, "fl", "enrol", terms, EnrolInfo)
        self.request = capability.request(self.node, "fl", info.digest, reason)
        return info

    def fit(self, server_round: int, params: bytes, seed: int, clip: float) -> FitReply:
        """Train one round on the node (one message)."""
        msg = FitRound(self.enrolment, server_round, params, seed=seed, clip=clip)
        return capability.call(self.node, "fl", "fit", msg, FitReply)

    def step(self, server_round: int, step: str, payload: bytes,
             signatures: dict[int, bytes] | None = None) -> SecAggReply:  # fmt: skip
        """One secure-aggregation step of a round (one message)."""
        msg = SecAggStep(self.enrolment, server_round, step, payload, dict(signatures or {}))
        return capability.call(self.node, "fl", "secagg", msg, SecAggReply)

    def approved_update(self, update_id: int, reason: str, timeout: float) -> torch.Tensor:
        """The private update ``update_id``, once its owner approves the request made here;
        waits up to ``timeout`` seconds (PermissionDenied after that)."""
        self.node.call(RequestAccess(update_id, reason))
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.node.call(GetObject(update_id))
            except PermissionDenied:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            assert isinstance(reply, Value)
            return tensor_from_data(reply.value)  # type: ignore[arg-type]


def _parallel(members: Sequence[Member], fn: Callable[[Member], Any],
              deadline: float | None = None) -> dict[int, Any]:  # fmt: skip
    """``fn`` on every member at once (one thread each); a member whose call fails, or has
    not answered ``deadline`` seconds after the start (a straggler), maps to its exception
    (a dropout: its late answer is ignored)."""

    def guarded(m: Member) -> Any:
        try:
            return fn(m)
        except (VeilError, OSError, TimeoutError) as exc:
            return exc

    if len(members) == 1 and deadline is None:
        return {members[0].client_id: guarded(members[0])}
    pool = ThreadPoolExecutor(max_workers=min(len(members), 16))
    try:
        futures = {m.client_id: pool.submit(guarded, m) for m in members}
        wait(futures.values(), timeout=deadline)
        return {
            c: f.result() if f.done() else TimeoutError(
                f"member {c} did not answer within the round's deadline of {deadline:g} s"
            )
            for c, f in futures.items()
        }  # fmt: skip
    finally:
        pool.shutdown(wait=deadline is None, cancel_futures=True)


def _ok(got: dict[int, Any]) -> dict[int, Any]:
    return {k: v for k, v in got.items() if not isinstance(v, BaseException)}


def secure_round(members: Sequence[Member], terms: Enrol, server_round: int,
                 replies: dict[int, FitReply], length: int,
                 deadline: float | None = None) -> tuple[np.ndarray, list[int], int]:  # type: ignore[type-arg]  # fmt: skip
    """Run SecAgg+ over the members whose fit answered ``replies`` (as the server), on
    vectors of ``length``: returns the sum of the survivors' vectors, the survivors, and
    the bytes moved.

    Raises:
        ProtocolError / InvalidRequest: too many members dropped (nothing is revealed).
    """
    by_id = {m.client_id: m for m in members}
    server = SecAggServer(config=secagg_config(terms, server_round, length))
    moved = 0
    sigs: dict[int, bytes] = {}
    for cid, rep in replies.items():
        server.receive(wire.decode(rep.advertise))
        sigs[cid] = rep.signature
        moved += len(rep.advertise)
    keys = wire.encode(server.keys())
    live = [by_id[c] for c in replies]
    shared = _ok(_parallel(live, lambda m: m.step(server_round, "share", keys, sigs), deadline))
    for rep in shared.values():
        server.receive(wire.decode(rep.payload))
        moved += len(keys) + len(rep.payload)
    deliveries = server.deliveries()
    live = [by_id[c] for c in shared]
    masked = _ok(_parallel(live, lambda m: m.step(
        server_round, "mask", wire.encode(deliveries[m.client_id])), deadline))  # fmt: skip
    for rep in masked.values():
        server.receive(wire.decode(rep.payload))
        moved += len(rep.payload)
    request = wire.encode(server.unmask_request())
    live = [by_id[c] for c in masked]
    confirmed = _ok(_parallel(live, lambda m: m.step(server_round, "confirm", request), deadline))
    signatures = {c: r.signature for c, r in confirmed.items()}
    live = [by_id[c] for c in confirmed]
    unmasked = _ok(
        _parallel(live, lambda m: m.step(server_round, "unmask", request, signatures), deadline)
    )
    for rep in unmasked.values():
        server.receive(wire.decode(rep.payload))
        moved += len(rep.payload)
    result = server.result()
    return result.total.numpy(), list(result.survivors), moved
