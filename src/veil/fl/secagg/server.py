"""The secure-aggregation server: routes keys and shares, then unmasks only the sum."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil.errors import InvalidRequest, ProtocolError
from veil.fl.secagg import shamir
from veil.fl.secagg.config import SecAggConfig, check_ids, check_session
from veil.fl.secagg.crypto import agree
from veil.fl.secagg.encoding import expand_seed
from veil.fl.secagg.graph import neighbour_graph
from veil.fl.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    Message,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["SecAggResult", "SecAggServer"]


class _Round(IntEnum):
    ADVERTISE = 0
    SHARE = 1
    MASK = 2
    UNMASK = 3
    DONE = 4


#: The message each round accepts.
_ACCEPTS: dict[_Round, type] = {
    _Round.ADVERTISE: AdvertiseKeys,
    _Round.SHARE: ShareKeys,
    _Round.MASK: MaskedInput,
    _Round.UNMASK: UnmaskResponse,
}


@dataclass(frozen=True, slots=True)
class SecAggResult:
    """The outcome of a session: the decoded sum, the exact ring sum, and who took part.

    Attributes:
        total: the sum of the survivors' inputs (float64), decoded from ``encoded``.
        encoded: the exact sum of the survivors' encoded inputs in Z_{2^bits}.
        survivors: the clients whose inputs are in the sum.
        dropped: the clients who shared keys but sent no input.
    """

    total: torch.Tensor
    encoded: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class SecAggServer:
    """The server of one session (SecAgg / SecAgg+), driven one message at a time.

    Feed every client message to :meth:`receive`; close each round with :meth:`keys`,
    :meth:`deliveries`, :meth:`unmask_request` and :meth:`result` in turn. Clients who send
    nothing in a round have dropped out. The server only ever holds masked inputs,
    ciphertexts it cannot open, and the shares it needs: for each client, of its self-mask
    seed if it sent an input, of its mask key if it did not, never both.

    Args:
        config: the session's public parameters.
        graph_seed: the public randomness of the neighbour graph (default: 32 fresh bytes).

    Example:
        >>> server = SecAggServer(config=SecAggConfig(session="s", vector_length=4, threshold=2))
        >>> server.keys()
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: secure aggregation needs at least 2 clients, got 0
    """

    def __init__(self, *, config: SecAggConfig, graph_seed: bytes | None = None) -> None:
        self.config = config
        self.graph_seed = os.urandom(32) if graph_seed is None else graph_seed
        self._round = _Round.ADVERTISE
        self._keys: dict[int, AdvertiseKeys] = {}
        self._graph: dict[int, frozenset[int]] = {}
        self._shares: dict[int, ShareKeys] = {}
        self._masked: dict[int, np.ndarray] = {}
        self._request: UnmaskRequest | None = None
        self._b_shares: dict[int, dict[int, bytes]] = {}
        self._sk_shares: dict[int, dict[int, bytes]] = {}
        self._answered: set[int] = set()

    # -------------------------------------------------------------------- input
    def receive(self, message: Message) -> None:
        """Take one client message of the current round.

        Raises:
            InvalidRequest: a message of another round or session, from an unknown client,
                a second message from the same client, or one with wrong ids or lengths.
        """
        expected = _ACCEPTS.get(self._round)
        if expected is None or not isinstance(message, expected):
            raise InvalidRequest(
                f"round {self._round.name.lower()} does not accept a {type(message).__name__}"
            )
        check_session(self.config, message.session, f"a {type(message).__name__}")
        if isinstance(message, AdvertiseKeys):
            self._on_advertise(message)
        elif isinstance(message, ShareKeys):
            self._on_shares(message)
        elif isinstance(message, MaskedInput):
            self._on_masked(message)
        elif isinstance(message, UnmaskResponse):
            self._on_unmask(message)

    def _sender(self, client_id: int, pool: Collection[int], seen: Collection[int]) -> None:
        check_ids([client_id], "the message")
        if client_id not in pool:
            raise InvalidRequest(f"client {client_id} is not part of this round")
        if client_id in seen:
            raise InvalidRequest(f"client {client_id} already sent its message for this round")

    def _on_advertise(self, m: AdvertiseKeys) -> None:
        check_ids([m.client_id], "the advertisement")
        if m.client_id in self._keys:
            raise InvalidRequest(f"client {m.client_id} already advertised its keys")
        if len(m.c_pk) != 32 or len(m.s_pk) != 32:
            raise InvalidRequest(f"client {m.client_id}'s public keys are not 32 bytes")
        if any(m.s_pk == a.s_pk or m.c_pk == a.c_pk for a in self._keys.values()):
            raise InvalidRequest(f"client {m.client_id} reuses another client's public key")
        self._keys[m.client_id] = m

    def _on_shares(self, m: ShareKeys) -> None:
        self._sender(m.client_id, self._keys, self._shares)
        receivers = check_ids([s.receiver for s in m.shares], "the share list")
        if set(receivers) != self._graph[m.client_id] or any(
            s.sender != m.client_id or len(s.nonce) != 12 for s in m.shares
        ):
            raise InvalidRequest(
                f"client {m.client_id} must send one share to each of its "
                f"{len(self._graph[m.client_id])} neighbours, from itself"
            )
        self._shares[m.client_id] = m

    def _on_masked(self, m: MaskedInput) -> None:
        self._sender(m.client_id, self._shares, self._masked)
        if len(m.data) != self.config.data_bytes:
            raise InvalidRequest(
                f"client {m.client_id}'s masked input has {len(m.data)} bytes, "
                f"expected {self.config.data_bytes}"
            )
        dtype = np.dtype(self.config.encoding.dtype).newbyteorder("<")
        self._masked[m.client_id] = np.frombuffer(m.data, dtype=dtype).astype(
            self.config.encoding.dtype
        )

    def _on_unmask(self, m: UnmaskResponse) -> None:
        self._sender(m.client_id, self._masked, self._answered)
        nb = self._graph[m.client_id]
        want_b = nb & self._masked.keys()
        want_sk = nb & (self._shares.keys() - self._masked.keys())
        if set(m.b_shares) != want_b or set(m.sk_shares) != want_sk:
            raise InvalidRequest(
                f"client {m.client_id} must send shares of b for {sorted(want_b)} "
                f"and of the mask key for {sorted(want_sk)}"
            )
        if any(len(v) != shamir.SHARE_BYTES for v in [*m.b_shares.values(), *m.sk_shares.values()]):
            raise InvalidRequest(f"client {m.client_id} sent shares of the wrong length")
        x = m.client_id + 1
        for j, v in m.b_shares.items():
            self._b_shares.setdefault(j, {})[x] = v
        for j, v in m.sk_shares.items():
            self._sk_shares.setdefault(j, {})[x] = v
        self._answered.add(m.client_id)

    # ------------------------------------------------------------- round ends
    def _close(self, r: _Round) -> None:
        if self._round != r:
            raise InvalidRequest(
                f"the server is in round {self._round.name.lower()}, not {r.name.lower()}"
            )

    def keys(self) -> KeysBroadcast:
        """Close round 0: every advertisement and the graph seed, for all clients.

        Raises:
            InvalidRequest: called out of order, or too few clients for the threshold.
        """
        self._close(_Round.ADVERTISE)
        k = self.config.degree(len(self._keys))
        self._graph = neighbour_graph(sorted(self._keys), k, self.graph_seed)
        self._round = _Round.SHARE
        return KeysBroadcast(
            session=self.config.session,
            graph_seed=self.graph_seed,
            keys=[self._keys[i] for i in sorted(self._keys)],
        )

    def deliveries(self) -> dict[int, SharesDelivery]:
        """Close round 1: for each client who shared, the ciphertexts its neighbours sent it."""
        self._close(_Round.SHARE)
        shared = sorted(self._shares)
        inbox: dict[int, list[EncryptedShare]] = {i: [] for i in shared}
        for i in shared:
            for s in self._shares[i].shares:
                if s.receiver in inbox:
                    inbox[s.receiver].append(s)
        self._round = _Round.MASK
        return {
            i: SharesDelivery(session=self.config.session, client_id=i, shared=shared, shares=box)
            for i, box in inbox.items()
        }

    def unmask_request(self) -> UnmaskRequest:
        """Close round 2: announce the survivors U (sent an input) and the dropped D.

        Raises:
            ProtocolError: fewer survivors than ``config.survivors_needed``.
        """
        self._close(_Round.MASK)
        survivors = sorted(self._masked)
        if len(survivors) < self.config.survivors_needed:
            self._round = _Round.DONE
            raise ProtocolError(
                f"only {len(survivors)} clients sent masked inputs; at least "
                f"{self.config.survivors_needed} are needed, the round is abandoned"
            )
        dropped = sorted(self._shares.keys() - self._masked.keys())
        self._request = UnmaskRequest(
            session=self.config.session, survivors=survivors, dropped=dropped
        )
        self._round = _Round.UNMASK
        return self._request

    def result(self) -> SecAggResult:
        """Close round 3: reconstruct the needed secrets, remove the masks, return the sum.

        Raises:
            ProtocolError: some secret has fewer than ``threshold`` shares (the message says
                whose, and how many are missing); nothing is unmasked then.
        """
        self._close(_Round.UNMASK)
        self._round = _Round.DONE
        cfg, t = self.config, self.config.threshold
        survivors = sorted(self._masked)
        dropped = sorted(
            j
            for j in self._shares.keys() - self._masked.keys()
            if self._graph[j] & self._masked.keys()
        )
        short = [
            f"client {j}'s {what} has {len(got.get(j, {}))} of {t} shares"
            for what, ids, got in (
                ("self-mask seed", survivors, self._b_shares),
                ("mask key", dropped, self._sk_shares),
            )
            for j in ids
            if len(got.get(j, {})) < t
        ]
        if short:
            raise ProtocolError(
                f"cannot unmask: {len(short)} secrets lack shares ({'; '.join(short[:10])}); "
                "too many clients dropped out, the round failed and nothing was revealed"
            )
        enc = cfg.encoding
        total = np.zeros(cfg.vector_length, dtype=enc.dtype)
        for i in survivors:
            total += self._masked[i]
            b = self._secret(self._b_shares[i], f"client {i}'s self-mask seed")
            total -= expand_seed(b, cfg.vector_length, enc)
        for j in dropped:
            raw = self._secret(self._sk_shares[j], f"client {j}'s mask key")
            sk = X25519PrivateKey.from_private_bytes(raw)
            if sk.public_key().public_bytes_raw() != self._keys[j].s_pk:
                raise ProtocolError(f"client {j}'s mask key shares do not match its public key")
            for i in sorted(self._graph[j] & self._masked.keys()):
                m = expand_seed(
                    agree(sk, self._keys[i].s_pk, "mask", cfg.session, j, i), cfg.vector_length, enc
                )
                total = total - m if i < j else total + m  # undo i's ±PRG(s_ij)
        return SecAggResult(
            total=torch.from_numpy(enc.decode(total)),
            encoded=total,
            survivors=tuple(survivors),
            dropped=tuple(sorted(self._shares.keys() - self._masked.keys())),
        )

    def _secret(self, shares: dict[int, bytes], what: str) -> bytes:
        chosen = dict(sorted(shares.items())[: self.config.threshold])
        try:
            return shamir.reconstruct(chosen)
        except ValueError as exc:
            raise ProtocolError(f"{what} could not be reconstructed: {exc}") from exc
