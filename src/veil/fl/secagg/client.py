"""A secure-aggregation client: its keys, its shares of others' secrets, its masked input."""

from __future__ import annotations

import os
from enum import IntEnum

import msgspec
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil.errors import InvalidRequest, ProtocolError
from veil.fl.secagg import shamir
from veil.fl.secagg.config import SecAggConfig, check_ids, check_session
from veil.fl.secagg.crypto import agree, open_share, seal_share
from veil.fl.secagg.encoding import expand_seed
from veil.fl.secagg.graph import neighbour_graph
from veil.fl.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    ShareBundle,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["SecAggClient"]

_BUNDLE = msgspec.msgpack.Decoder(ShareBundle)


class _Stage(IntEnum):
    ADVERTISE = 0
    SHARE = 1
    MASK = 2
    UNMASK = 3
    DONE = 4


class SecAggClient:
    """One client of a secure-aggregation session; each method is one protocol step.

    A client answers each step once, in order, and refuses anything else (wrong round,
    another session, unknown or duplicate ids, a second unmask request), so a server cannot
    learn both the self-mask seed and the mask key of the same client.

    Args:
        client_id: this client's id, unique in the session, in ``[0, 2^31 - 1)``.
        config: the session's public parameters.

    Example:
        >>> from veil.fl.secagg import SecAggServer
        >>> cfg = SecAggConfig(session="doc", vector_length=3, threshold=2)
        >>> server = SecAggServer(config=cfg)
        >>> clients = [SecAggClient(i, cfg) for i in range(3)]
        >>> for c in clients: server.receive(c.advertise())
        >>> keys = server.keys()
        >>> for c in clients: server.receive(c.share_keys(keys))
        >>> deliveries = server.deliveries()
        >>> for c in clients: server.receive(c.masked_input(deliveries[c.client_id], [1.0, 2.0, c.client_id]))
        >>> request = server.unmask_request()
        >>> for c in clients: server.receive(c.unmask(request))
        >>> server.result().total.tolist()
        [3.0, 6.0, 3.0]
    """

    def __init__(self, client_id: int, config: SecAggConfig) -> None:
        check_ids([client_id], "the client id")
        self.client_id = client_id
        self.config = config
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._stage = _Stage.ADVERTISE
        self._keys: dict[int, AdvertiseKeys] = {}
        self._neighbours: frozenset[int] = frozenset()
        self._b_seed = b""
        self._shared: frozenset[int] = frozenset()
        self._held: dict[int, ShareBundle] = {}
        self._enc: dict[int, bytes] = {}  # the share-channel key with each neighbour

    def _expect(self, stage: _Stage, what: str) -> None:
        if self._stage != stage:
            raise InvalidRequest(
                f"client {self.client_id} is at step {self._stage.name.lower()}, "
                f"not {stage.name.lower()}: refusing {what}"
            )

    # ------------------------------------------------------------------ round 0
    def advertise(self) -> AdvertiseKeys:
        """Round 0: this client's two public keys, for the server to forward."""
        self._expect(_Stage.ADVERTISE, "to advertise keys")
        self._stage = _Stage.SHARE
        return self._advertisement()

    # ------------------------------------------------------------------ round 1
    def share_keys(self, broadcast: KeysBroadcast) -> ShareKeys:
        """Round 1: Shamir-share ``b_i`` and ``s_sk_i`` among the neighbours, encrypted.

        Raises:
            InvalidRequest: a broadcast of another round or session, with duplicate ids,
                without this client's own keys, or with malformed keys.
        """
        if not isinstance(broadcast, KeysBroadcast):
            raise InvalidRequest(f"expected a KeysBroadcast, got {type(broadcast).__name__}")
        self._expect(_Stage.SHARE, "a key broadcast")
        check_session(self.config, broadcast.session, "the key broadcast")
        ids = check_ids([a.client_id for a in broadcast.keys], "the key broadcast")
        keys = {a.client_id: a for a in broadcast.keys}
        for a in broadcast.keys:
            check_session(self.config, a.session, f"client {a.client_id}'s keys")
            if len(a.c_pk) != 32 or len(a.s_pk) != 32:
                raise InvalidRequest(f"client {a.client_id}'s public keys are not 32 bytes")
        mine = keys.get(self.client_id)
        if mine is None or mine != self._advertisement():
            raise InvalidRequest(f"the key broadcast does not carry client {self.client_id}'s keys")
        if len({a.s_pk for a in broadcast.keys}) != len(ids):
            raise InvalidRequest("the key broadcast repeats a public key")
        k = self.config.degree(len(ids))
        try:
            graph = neighbour_graph(ids, k, broadcast.graph_seed)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        self._keys = keys
        self._neighbours = graph[self.client_id]
        self._b_seed = os.urandom(32)
        order = sorted(self._neighbours)
        xs = [j + 1 for j in order]
        t = self.config.threshold
        b_shares = shamir.split(self._b_seed, xs, t)
        sk_shares = shamir.split(self._s_key.private_bytes_raw(), xs, t)
        out = []
        for j in order:
            bundle = ShareBundle(
                session=self.config.session,
                sender=self.client_id,
                receiver=j,
                b_share=b_shares[j + 1],
                sk_share=sk_shares[j + 1],
            )
            key = agree(self._c_key, keys[j].c_pk, "enc", self.config.session, self.client_id, j)
            self._enc[j] = key  # the same key opens j's shares to us in round 2
            nonce, ct = seal_share(
                key, self.config.session, self.client_id, j, msgspec.msgpack.encode(bundle)
            )
            out.append(
                EncryptedShare(sender=self.client_id, receiver=j, nonce=nonce, ciphertext=ct)
            )
        self._stage = _Stage.MASK
        return ShareKeys(session=self.config.session, client_id=self.client_id, shares=out)

    def _advertisement(self) -> AdvertiseKeys:
        return AdvertiseKeys(
            session=self.config.session,
            client_id=self.client_id,
            c_pk=self._c_key.public_key().public_bytes_raw(),
            s_pk=self._s_key.public_key().public_bytes_raw(),
        )

    # ------------------------------------------------------------------ round 2
    def masked_input(
        self, delivery: SharesDelivery, x: torch.Tensor | np.ndarray | list[float]
    ) -> MaskedInput:
        """Round 2: store the neighbours' shares; send ``y = x + PRG(b) ± PRG(s_ij)``.

        Args:
            delivery: the shares the server routed to this client, and who shared (U1).
            x: this client's float vector, ``config.vector_length`` long.

        Raises:
            InvalidRequest: a delivery of another round, session or client, or with ids
                that do not match the neighbours who shared.
            ProtocolError: a share failed authentication (tampered or redirected).
            ValueError: ``x`` has the wrong length or a value the encoding cannot hold.
        """
        if not isinstance(delivery, SharesDelivery):
            raise InvalidRequest(f"expected a SharesDelivery, got {type(delivery).__name__}")
        self._expect(_Stage.MASK, "a share delivery")
        check_session(self.config, delivery.session, "the share delivery")
        if delivery.client_id != self.client_id:
            raise InvalidRequest(f"the delivery is for client {delivery.client_id}")
        shared = frozenset(check_ids(delivery.shared, "the delivery's list of sharers"))
        if self.client_id not in shared or not shared <= self._keys.keys():
            raise InvalidRequest("the delivery's sharers are not clients of this session")
        peers = self._neighbours & shared
        senders = check_ids([s.sender for s in delivery.shares], "the delivery")
        if set(senders) != peers or any(s.receiver != self.client_id for s in delivery.shares):
            raise InvalidRequest(
                f"client {self.client_id} expected shares from exactly {sorted(peers)}, "
                f"got {sorted(senders)}"
            )
        enc = self.config.encoding
        encoded = enc.encode(x)
        if encoded.size != self.config.vector_length:
            raise ValueError(f"x must have {self.config.vector_length} values, got {encoded.size}")
        held = {}
        for s in delivery.shares:
            plain = open_share(
                self._enc[s.sender],
                self.config.session,
                s.sender,
                self.client_id,
                s.nonce,
                s.ciphertext,
            )
            try:
                bundle = _BUNDLE.decode(plain)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ProtocolError(f"client {s.sender}'s share bundle is malformed") from exc
            if (bundle.session, bundle.sender, bundle.receiver) != (
                self.config.session, s.sender, self.client_id,
            ):  # fmt: skip
                raise ProtocolError(f"client {s.sender}'s share bundle names other parties")
            held[s.sender] = bundle
        y = encoded + expand_seed(self._b_seed, self.config.vector_length, enc)
        for j in sorted(peers):
            seed = agree(
                self._s_key, self._keys[j].s_pk, "mask", self.config.session, self.client_id, j
            )
            m = expand_seed(seed, self.config.vector_length, enc)
            y = y + m if self.client_id < j else y - m
        self._held = held
        self._shared = shared
        self._enc = {}  # no further use: round 3 sends shares to the server, not to peers
        self._stage = _Stage.UNMASK
        return MaskedInput(
            session=self.config.session,
            client_id=self.client_id,
            data=y.astype(np.dtype(enc.dtype).newbyteorder("<")).tobytes(),
        )

    # ------------------------------------------------------------------ round 3
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round 3: for each neighbour, the share of ``b_j`` if it survived, else of ``s_sk_j``.

        Answers once. Refuses a request whose survivors and dropped overlap (that would ask
        for both secrets of a client), that does not split the clients who shared into the
        two, that calls this client dropped, or that lists too few survivors.

        Raises:
            InvalidRequest: as above, or a request of another round or session.
        """
        if not isinstance(request, UnmaskRequest):
            raise InvalidRequest(f"expected an UnmaskRequest, got {type(request).__name__}")
        self._expect(_Stage.UNMASK, "an unmask request")
        check_session(self.config, request.session, "the unmask request")
        survivors = set(check_ids(request.survivors, "the survivor list"))
        dropped = set(check_ids(request.dropped, "the dropped list"))
        both = survivors & dropped
        if both:
            raise InvalidRequest(
                f"refusing to reveal both secrets of clients {sorted(both)}: "
                "the request lists them as survivors and as dropped"
            )
        known = set(self._keys)
        if not (survivors | dropped) <= known:
            raise InvalidRequest(f"unknown client ids {sorted((survivors | dropped) - known)}")
        if self.client_id not in survivors:
            raise InvalidRequest(f"client {self.client_id} sent its input but is not a survivor")
        if survivors | dropped != self._shared:
            raise InvalidRequest(
                "the request does not split the clients who shared keys into survivors and dropped"
            )
        if len(survivors) < self.config.survivors_needed:
            raise InvalidRequest(
                f"refusing to unmask a sum of {len(survivors)} inputs; "
                f"at least {self.config.survivors_needed} are required"
            )
        self._stage = _Stage.DONE
        held = self._held
        return UnmaskResponse(
            session=self.config.session,
            client_id=self.client_id,
            b_shares={j: held[j].b_share for j in sorted(survivors & held.keys())},
            sk_shares={j: held[j].sk_share for j in sorted(dropped & held.keys())},
        )
