"""The two crypto providers: a trusted dealer (a node the parties' owners approved, which
knows every party's seed and deals the last party a delta per group) and dealer-free
(no randomness dealt; linear work and zero-shares only).

Example:
    >>> import torch, veil
    >>> alice, bob = veil.VirtualWorker("alice"), veil.VirtualWorker("bob")
    >>> sess = veil.mpc.MPCSession([alice, bob], DealerFree())
    >>> (torch.tensor([1.0, 2.0]).share(session=sess) * 3).reconstruct()
    tensor([3., 6.])
"""

from __future__ import annotations

import secrets
from typing import Any

from veil.mpc.providers import kinds
from veil.mpc.providers.approvals import approve_for_owner
from veil.mpc.providers.base import CryptoProvider, Dealt, Group, register_provider
from veil.mpc.providers.remote import node_call, public_key, reply_tensor, u8
from veil.mpc.stats import record as record_stats


@register_provider
class TrustedDealer(CryptoProvider):
    """A dealer node (a worker that is none of the parties) that every party's owner approved
    (:mod:`veil.mpc.providers.approvals`). It deals every kind of randomness."""

    kind = "dealer"

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.name = worker.name

    def start(self, session: Any) -> str:
        provider = self.worker
        session.provider_key = public_key(provider)
        for p in session.parties:  # nodes you created in this process: you approve your provider
            approve_for_owner(p, provider, session.provider_key)
        key_list = [u8(k) for k in session.keys]
        raw = reply_tensor(node_call(provider, "mpc.dealer_setup", key_list)).numpy().tobytes()
        sid = raw[:32].decode()
        boxes = [raw[32 + 60 * i : 32 + 60 * (i + 1)] for i in range(session.n)]
        dealer = u8(session.provider_key)
        session.fanout(
            lambda i: node_call(
                session.parties[i], "mpc.join", sid, i, key_list, dealer, u8(boxes[i])
            ),  # fmt: skip
            range(session.n),
        )
        return sid

    def supports(self, kind: str) -> bool:
        return True

    def deal(self, session: Any, groups: list[Group]) -> list[Dealt]:
        specs = [(k, p) for k, p in groups]
        flat = reply_tensor(node_call(self.worker, "mpc.deal", session.sid, specs))
        record_stats(session.labels[-1], (flat.numel() - len(groups)) * 8, rounds=0)
        gids = flat[: len(groups)].tolist()
        out, off = [], len(groups)
        for (kind, params), gid in zip(groups, gids, strict=True):
            slots = kinds.get_kind(kind).slots(params)
            size = sum(kinds.words(s) for s in slots if kinds.has_delta(s))
            out.append((int(gid), flat[off : off + size]))
            off += size
        return out

    def __repr__(self) -> str:
        return f"TrustedDealer({self.name!r})"


@register_provider
class DealerFree(CryptoProvider):
    """No dealer: the driver names the session, each party joins it with the others' keys and
    derives pairwise seeds for zero-sharing (:mod:`veil.mpc.providers.pairwise`). Sharing,
    + and -, sums, products with public values (2 parties: local truncation) and
    :func:`~veil.mpc.tensors.aggregate.secure_sum` work; anything that needs dealt
    randomness raises :class:`~veil.errors.UnsupportedError` saying to configure a dealer."""

    kind = "dealer-free"
    name = "dealer-free"

    def start(self, session: Any) -> str:
        sid = secrets.token_hex(16)
        key_list = [u8(k) for k in session.keys]
        session.fanout(
            lambda i: node_call(session.parties[i], "mpc.join_free", sid, i, key_list),
            range(session.n),
        )
        return sid

    def supports(self, kind: str) -> bool:
        return False

    def deal(self, session: Any, groups: list[Group]) -> list[Dealt]:
        self.require(groups)
        return []

    def __repr__(self) -> str:
        return "DealerFree()"


def as_provider(provider: Any) -> CryptoProvider:
    """A provider given as a :class:`CryptoProvider` or as a dealer's worker.

    Example:
        >>> as_provider(DealerFree())
        DealerFree()
    """
    return provider if isinstance(provider, CryptoProvider) else TrustedDealer(provider)


__all__ = ["DealerFree", "TrustedDealer", "as_provider"]
