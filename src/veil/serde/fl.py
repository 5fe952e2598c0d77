"""Federated learning on the wire: the ``fl`` capability's messages (see :mod:`veil.fl.node`).

A scientist enrols a node in a federation (:class:`Enrol`, then a request of kind ``"fl"``
that the node's owner approves once), then runs each round with one :class:`FitRound`
(train with the approved plan from the global parameters) and, under secure aggregation,
the protocol's steps (:class:`SecAggStep`). Parameters and updates travel as little-endian
float32 bytes; secure-aggregation payloads as the bytes of
:mod:`veil.fl.secagg.messages`, signed with the node's identity key.

Example:
    >>> import msgspec
    >>> m = FitRound(enrolment=3, round=1, params=b"\\x00" * 8, seed=7)
    >>> msgspec.msgpack.decode(msgspec.msgpack.encode(m), type=FitRound) == m
    True
"""

from __future__ import annotations

import msgspec

__all__ = [
    "Enrol",
    "EnrolInfo",
    "FitReply",
    "FitRound",
    "Identity",
    "IdentityInfo",
    "Member",
    "SecAggReply",
    "SecAggStep",
    "ShowEnrolment",
]

_OPTS = {"frozen": True, "forbid_unknown_fields": True, "omit_defaults": True}


class Identity(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Ask a node for its federation identity key."""


class IdentityInfo(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """A node's name and its Ed25519 public key (it signs its secure-aggregation messages)."""

    node: str
    key: bytes


class Member(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """A member of a federation: its node's name and identity key."""

    node: str
    key: bytes


class Enrol(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Prepare an enrolment in a federation (the request itself is then made with
    ``RequestAccess(kind="fl", subject=<the digest answered>)``).

    ``plan``: the training plan's hash (stored on the node); ``inputs``: the dataset assets
    its first inputs are (the last input is the node's shuffling permutation); ``state``: the
    scientist's objects that are the plan's state (model, optimizer); ``rounds``: how many
    rounds the owner is asked to approve; ``mode``: how an update leaves the node:
    ``"secagg"`` (only in a secure aggregate of at least ``min_clients`` members),
    ``"dp"`` (clipped and noised on the node), ``"secagg+dp"`` (both), ``"local-dp"``
    (the node trains the plan's model with DP-SGD itself: ``clip`` is the per-example
    gradient norm, ``batch_size / examples`` the sampling rate, ``loss`` the loss), or
    ``"approval"`` (each round's update is a private object the owner approves a request for).
    """

    federation: str
    plan: str
    dataset: str
    inputs: list[str]
    state: list[int]
    rounds: int
    mode: str
    members: list[Member] = []
    client_id: int = 0
    min_clients: int = 2
    threshold: int = 0
    clip: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 0.0
    adaptive: bool = False
    count_noise: float = 0.0
    examples: int = 0
    batch_size: int = 0
    loss: str = ""


class EnrolInfo(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """The terms an enrolment states, by their digest (the approval binds to it)."""

    digest: str
    text: str


class FitRound(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Train one round: load ``params`` (the global model) into the plan's model, run the
    approved plan once on the enrolled data, and keep or release the update as the
    enrolment says. ``seed`` draws the shuffling permutation (public); ``clip`` is the
    clipping norm of this round under adaptive clipping (else the enrolment's)."""

    enrolment: int
    round: int
    params: bytes
    seed: int = 0
    clip: float = 0.0


class FitReply(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """What a round's fit answers: the examples trained on; under secure aggregation the
    node's signed key advertisement; under ``"dp"`` the noised update; under
    ``"approval"`` the id of the private update object; ``epsilon``: the spend on the
    node's ledger after this round (DP modes)."""

    examples: int
    advertise: bytes = b""
    signature: bytes = b""
    update: bytes = b""
    update_id: int = 0
    epsilon: float = 0.0


class SecAggStep(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """One secure-aggregation step of a round: ``step`` is ``"share"`` (payload: the
    ``KeysBroadcast``; ``signatures``: each member's signature of its advertisement),
    ``"mask"`` (payload: the ``SharesDelivery``), ``"confirm"`` (payload: the
    ``UnmaskRequest``: the node signs the survivor list once) or ``"unmask"`` (payload:
    the ``UnmaskRequest``; ``signatures``: the survivors' confirmations)."""

    enrolment: int
    round: int
    step: str
    payload: bytes
    signatures: dict[int, bytes] = {}


class ShowEnrolment(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Ask for the review text of enrolment request ``id`` (its owner, admins, its requester)."""

    id: int


class SecAggReply(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """A step's answer: the client's protocol message, and a signature where one is due."""

    payload: bytes = b""
    signature: bytes = b""
