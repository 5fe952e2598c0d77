"""The secure-aggregation wire messages (msgspec Structs), one per protocol step.

Round 0: :class:`AdvertiseKeys` (client) and :class:`KeysBroadcast` (server). Round 1:
:class:`ShareKeys` and :class:`SharesDelivery`. Round 2: :class:`MaskedInput` and
:class:`UnmaskRequest`. Round 3: :class:`UnmaskResponse`. :func:`decode` turns bytes into one
of them (validating field types) or raises :class:`~veil.errors.SerdeError`; the client and
the server then check that the message fits the round and the session.
"""

from __future__ import annotations

from typing import Union

import msgspec

from veil.errors import SerdeError

__all__ = [
    "AdvertiseKeys",
    "EncryptedShare",
    "KeysBroadcast",
    "MaskedInput",
    "Message",
    "ShareBundle",
    "ShareKeys",
    "SharesDelivery",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode",
    "encode",
]

_OPTS = {"frozen": True, "forbid_unknown_fields": True}


class AdvertiseKeys(msgspec.Struct, tag="secagg.advertise", **_OPTS):  # type: ignore[call-arg]
    """Round 0, client -> server: the client's two X25519 public keys."""

    session: str
    client_id: int
    c_pk: bytes  # encrypts the shares sent to this client
    s_pk: bytes  # agrees the pairwise mask seeds


class KeysBroadcast(msgspec.Struct, tag="secagg.keys", **_OPTS):  # type: ignore[call-arg]
    """Round 0, server -> clients: every advertisement and the graph's public seed."""

    session: str
    graph_seed: bytes
    keys: list[AdvertiseKeys]


class EncryptedShare(msgspec.Struct, tag="secagg.eshare", **_OPTS):  # type: ignore[call-arg]
    """A :class:`ShareBundle` under AES-GCM, for ``receiver``'s eyes only."""

    sender: int
    receiver: int
    nonce: bytes
    ciphertext: bytes


class ShareBundle(msgspec.Struct, tag="secagg.bundle", **_OPTS):  # type: ignore[call-arg]
    """The plaintext of an :class:`EncryptedShare`: ``sender``'s two shares for ``receiver``."""

    session: str
    sender: int
    receiver: int
    b_share: bytes  # of the self-mask seed b_sender
    sk_share: bytes  # of the mask secret key s_sk_sender


class ShareKeys(msgspec.Struct, tag="secagg.share", **_OPTS):  # type: ignore[call-arg]
    """Round 1, client -> server: one encrypted share bundle per neighbour."""

    session: str
    client_id: int
    shares: list[EncryptedShare]


class SharesDelivery(msgspec.Struct, tag="secagg.delivery", **_OPTS):  # type: ignore[call-arg]
    """Round 1, server -> one client: who shared (U1) and the bundles addressed to it."""

    session: str
    client_id: int
    shared: list[int]
    shares: list[EncryptedShare]


class MaskedInput(msgspec.Struct, tag="secagg.masked", **_OPTS):  # type: ignore[call-arg]
    """Round 2, client -> server: the masked vector y_i, little-endian ring words."""

    session: str
    client_id: int
    data: bytes


class UnmaskRequest(msgspec.Struct, tag="secagg.unmask", **_OPTS):  # type: ignore[call-arg]
    """Round 3, server -> clients: who sent masked inputs (U) and who dropped (D)."""

    session: str
    survivors: list[int]
    dropped: list[int]


class UnmaskResponse(msgspec.Struct, tag="secagg.unmasked", **_OPTS):  # type: ignore[call-arg]
    """Round 3, client -> server: shares of b_j for neighbours in U, of s_sk_j for those in D."""

    session: str
    client_id: int
    b_shares: dict[int, bytes]
    sk_shares: dict[int, bytes]


Message = Union[  # noqa: UP007 - a runtime union msgspec decodes into
    AdvertiseKeys,
    KeysBroadcast,
    ShareKeys,
    SharesDelivery,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    ShareBundle,
]

_DECODER = msgspec.msgpack.Decoder(Message)
_ENCODER = msgspec.msgpack.Encoder()


def encode(message: Message) -> bytes:
    """Encode a message to msgpack bytes.

    Example:
        >>> decode(encode(MaskedInput(session="s", client_id=1, data=b"xy"))).client_id
        1
    """
    return _ENCODER.encode(message)


def decode(data: bytes, kind: type[Message] | None = None) -> Message:
    """Decode (and type-check) a message; with ``kind``, also insist on that message type.

    Args:
        data: msgpack bytes.
        kind: the message type the caller expects, if any.

    Returns:
        The message.

    Raises:
        SerdeError: the bytes are not a valid secagg message (of the expected kind).

    Example:
        >>> decode(b"garbage")
        Traceback (most recent call last):
        ...
        veil.errors.SerdeError: not a valid secure-aggregation message: ...
    """
    try:
        msg = _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SerdeError(f"not a valid secure-aggregation message: {exc}") from exc
    if kind is not None and not isinstance(msg, kind):
        raise SerdeError(f"expected a {kind.__name__}, got a {type(msg).__name__}")
    return msg
