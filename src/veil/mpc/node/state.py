"""A node's MPC state: its key pair (kept in the node's store), its sessions as a party and
as a dealer, the groups it opened, and the labels of the shares it makes.

Sessions live in memory (a restarted node starts new ones); the key pair is written to the
store before anyone can see it, so a dealer that restarts keeps the key its approvers know.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied, UnsupportedError
from veil.mpc.providers import kinds, seal
from veil.mpc.providers.kinds import ShareDomain, Slot
from veil.node.capability import CapabilityState
from veil.node.extension import OpContext

#: Groups opened but not finished that a node keeps per user before dropping the oldest.
MAX_PENDING = 4096
#: The store row of the node's own key pair (``Node.put_row`` kind and key).
KEY_KIND, KEY_ROW = "mpc.key", "mpc.key:node"


@dataclass
class PartySession:
    """This node as party ``index`` of a session: its dealer seed (``None`` in a dealer-free
    session), the session's party keys (as the dealer sealed them, or as the driver named
    them when there is no dealer), the group ids it has used, and its pairwise seeds with
    the other parties (derived on first use) and the zero-sharing counters it has used."""

    seed: bytes | None
    index: int
    keys: list[bytes]
    dealer: bytes | None
    used: set[int] = field(default_factory=set)
    pair_seeds: dict[int, bytes] = field(default_factory=dict)
    zero_used: set[int] = field(default_factory=set)

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def dealer_seed(self) -> bytes:
        """The seed of this party's dealer randomness.

        Raises:
            UnsupportedError: the session has no dealer.
        """
        if self.seed is None:
            raise UnsupportedError(
                "this MPC session has no crypto provider (it is dealer-free: sums, means and "
                "products with public values only); products of two shared values, "
                "comparisons, dealer truncation and malicious mode need correlated "
                "randomness: configure a dealer, e.g. x.share(alice, bob, crypto_provider=carol)"
            )
        return self.seed


@dataclass
class DealerSession:
    """This node as the dealer of a session: one seed per party."""

    seeds: list[bytes]
    next_gid: int = 1


@dataclass
class Pending:
    """A group opened by this node and not finished yet (its masks never become objects)."""

    kind: kinds.Kind
    params: dict[str, Any]
    slots: list[Slot]
    masks: dict[str, torch.Tensor]
    inputs: list[torch.Tensor]
    macs: list[torch.Tensor] = field(default_factory=list)  # MAC shares of opened values


class MPCState(CapabilityState):
    """A node's MPC state, as the ``mpc`` capability's per-node state
    (:mod:`veil.node.capability`): the node's key pair (read from its store, or made and
    stored on first use), its sessions as a party and as a dealer, the groups it opened
    and the dealer seeds it has seen."""

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self._keys: seal.KeyPair | None = None
        self._lock = threading.Lock()
        self.parties: dict[tuple[int, str], PartySession] = {}
        self.dealers: dict[tuple[int, str], DealerSession] = {}
        self.pending: dict[tuple[int, str, int], Pending] = {}
        self.seen_seeds: set[bytes] = set()
        #: Sessions the node ended (its owner withdrew their dealer): why, by (user, sid).
        self.ended: dict[tuple[int, str], str] = {}

    @property
    def keys(self) -> seal.KeyPair:
        """The node's X25519 key pair (from its store when it has one)."""
        if self._keys is None:
            with self._lock:  # the info endpoint may ask from another thread
                if self._keys is None:
                    row = self.node.rows(KEY_KIND).get(KEY_ROW)
                    self._keys = (
                        seal.KeyPair.from_private(bytes.fromhex(row["private"]))
                        if row
                        else seal.KeyPair.generate()
                    )
        return self._keys


def state_of(node: Any) -> MPCState:
    """The MPC state of a :class:`~veil.node.Node` (the ``mpc`` capability's state).

    Example:
        >>> import veil
        >>> node = veil.Node("clinic", owner_password="pw-long-enough")
        >>> state_of(node) is state_of(node)
        True
    """
    return node.capability_state("mpc")  # type: ignore[no-any-return]


def public_key_of(node: Any) -> bytes:
    """The node's MPC public key, written to its store first: a key that anyone may see
    (and approve) must survive a restart.

    Example:
        >>> import veil
        >>> node = veil.Node("dealer", owner_password="pw-long-enough")
        >>> key = public_key_of(node)
        >>> node.rows(KEY_KIND)[KEY_ROW]["public"] == key.hex()
        True
    """
    st = state_of(node)
    row = node.rows(KEY_KIND).get(KEY_ROW)
    if row is None or row.get("public") != st.keys.public.hex():
        node.put_row(KEY_ROW, KEY_KIND, {"private": st.keys.private_bytes().hex(),
                                         "public": st.keys.public.hex()})  # fmt: skip
    return st.keys.public


def public_info(node: Any) -> dict[str, str]:
    """What ``GET /api/v1/info`` shows of a node's MPC key (to approve it as a dealer)."""
    key = public_key_of(node)
    return {"public_key": key.hex(), "fingerprint": seal.fingerprint(key)}


# ------------------------------------------------------------------------ labels of shares


def share_label(sid: str, domain: ShareDomain) -> str:
    """The label of a share this node made in session ``sid``: only such objects are
    opened (results of torch ops whose private inputs all carry one label keep it)."""
    return f"mpc.share|{sid}|{domain}"


def check_share(ctx: OpContext, t: torch.Tensor, sid: str, domain: ShareDomain, where: str) -> None:
    """Refuse ``t`` unless it is one of the caller's objects that this node made as a
    ``domain`` share of session ``sid`` (or computed from such shares alone)."""
    rec = ctx.record_of(t)
    if rec is None or rec.label != share_label(sid, domain):
        what = "a tensor sent with the call" if rec is None else f"object {rec.id}"
        raise PermissionDenied(
            f"{where}: node {ctx.node.name!r} opens only {domain} shares it made in MPC session "
            f"{sid} (and results of ops on them alone); {what} is not one. Share data first: "
            "x.share(...) or ptr.fix_precision().share(...)"
        )


# ------------------------------------------------------------------------ small helpers


def raw_bytes(t: Any, what: str, size: int | None = None) -> bytes:
    """The bytes of a 1-d uint8 tensor (a key or a sealed box)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        raise InvalidRequest(f"{what} must be a 1-d uint8 tensor")
    if size is not None and t.numel() != size:
        raise InvalidRequest(f"{what} must be {size} bytes, got {t.numel()}")
    return t.numpy().tobytes()


def u8(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def check_sid(sid: str) -> str:
    if not 8 <= len(sid) <= 64:
        raise InvalidRequest("an MPC session id is a string of 8-64 characters")
    return sid


def context(purpose: str, sid: str, index: int, n: int) -> bytes:
    """Associated data of a sealed box: what it is for, in which session, for which party."""
    return f"{purpose}|{sid}|{index}|{n}".encode()


def seed_context(sid: str, index: int, keys: list[bytes]) -> bytes:
    """A dealer seed's box binds the session, the party and the session's party keys: a
    party joins knowing the keys its dealer dealt for, and shares its data only with them."""
    digest = hashlib.sha256(b"".join(keys)).hexdigest()
    return context("seed", sid, index, len(keys)) + f"|{digest}".encode()


def party_of(ctx: OpContext, sid: str) -> PartySession:
    """The caller's session ``sid`` on this node as a party."""
    st = state_of(ctx.node)
    key = (ctx.session.user_id, check_sid(sid))
    sess = st.parties.get(key)
    if sess is None:
        if key in st.ended:
            raise PermissionDenied(st.ended[key])
        raise InvalidRequest(f"node {ctx.node.name!r} is in no MPC session {sid!r} of yours")
    return sess


def dealer_of(ctx: OpContext, sid: str) -> DealerSession:
    """The caller's session ``sid`` on this node as its dealer."""
    sess = state_of(ctx.node).dealers.get((ctx.session.user_id, check_sid(sid)))
    if sess is None:
        raise InvalidRequest(f"node {ctx.node.name!r} deals for no session {sid!r} of yours")
    return sess
