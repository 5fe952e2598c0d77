"""Key agreement and share encryption for secure aggregation (X25519, HKDF-SHA256, AES-GCM).

Two clients ``i`` and ``j`` agree on a key with X25519 and derive from it, through
HKDF-SHA256 bound to the session and the ordered pair ``(min, max)``, either the seed of
their pairwise mask (from their ``s`` keys) or the AES-256-GCM key of the share channel
(from their ``c`` keys). Each share ciphertext is authenticated together with the session,
the sender and the receiver, so the server can route it but neither read, alter nor
redirect it.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.errors import InvalidRequest, ProtocolError

__all__ = ["agree", "open_share", "seal_share"]

_NONCE = 12


def agree(me: X25519PrivateKey, peer: bytes, purpose: str, session: str, i: int, j: int) -> bytes:
    """The 32-byte key ``i`` and ``j`` share for ``purpose`` (the same on both sides).

    Args:
        me: this side's private key.
        peer: the other side's raw 32-byte public key.
        purpose: ``"mask"`` or ``"enc"`` (domain separation).
        session: the session id.
        i: one client id.
        j: the other client id.

    Returns:
        32 bytes from HKDF-SHA256.

    Raises:
        InvalidRequest: ``peer`` is not a usable X25519 public key.

    Example:
        >>> a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        >>> raw = lambda k: k.public_key().public_bytes_raw()
        >>> agree(a, raw(b), "mask", "s", 1, 2) == agree(b, raw(a), "mask", "s", 2, 1)
        True
    """
    try:
        shared = me.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError as exc:
        raise InvalidRequest(f"client {j}'s public key is not a usable X25519 key") from exc
    lo, hi = min(i, j), max(i, j)
    info = f"veil.fl.secagg|{purpose}|{session}|{lo}|{hi}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _aad(session: str, sender: int, receiver: int) -> bytes:
    return f"veil.fl.secagg|share|{session}|{sender}->{receiver}".encode()


def seal_share(
    key: bytes, session: str, sender: int, receiver: int, plaintext: bytes
) -> tuple[bytes, bytes]:
    """Encrypt a share bundle from ``sender`` to ``receiver``; returns ``(nonce, ciphertext)``.

    Example:
        >>> n, c = seal_share(bytes(32), "s", 1, 2, b"hi")
        >>> open_share(bytes(32), "s", 1, 2, n, c)
        b'hi'
    """
    nonce = os.urandom(_NONCE)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, _aad(session, sender, receiver))


def open_share(
    key: bytes, session: str, sender: int, receiver: int, nonce: bytes, ciphertext: bytes
) -> bytes:
    """Decrypt and authenticate a share bundle.

    Raises:
        ProtocolError: the ciphertext was tampered with, redirected or is malformed.

    Example:
        >>> n, c = seal_share(bytes(32), "s", 1, 2, b"hi")
        >>> open_share(bytes(32), "s", 1, 3, n, c)
        Traceback (most recent call last):
        ...
        veil.errors.ProtocolError: the share from client 1 to client 3 failed authentication
    """
    if len(nonce) != _NONCE:
        raise ProtocolError(f"the share from client {sender} has a malformed nonce")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _aad(session, sender, receiver))
    except InvalidTag as exc:
        raise ProtocolError(
            f"the share from client {sender} to client {receiver} failed authentication"
        ) from exc
