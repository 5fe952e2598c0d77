"""Sealed boxes between nodes: X25519 static keys, HKDF-SHA256, AES-256-GCM.

A node seals a 32-byte seed for another node; the data scientist who relays the box can
neither read nor alter it. The key is derived from the static Diffie-Hellman secret of the
two nodes' keys, so a box also proves which node key sealed it (the receiver sees the
sender's key and can pin the keys it trusts). The ``context`` (purpose, session id) is bound
as associated data: a box cannot be replayed for another purpose.

Example:
    >>> alice, bob = KeyPair.generate(), KeyPair.generate()
    >>> box = seal(alice, bob.public, b"hello seed".ljust(32, b"."), b"test")
    >>> unseal(bob, alice.public, box, b"test")
    b'hello seed......................'
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from veil.errors import ProtocolError


@dataclass(frozen=True)
class KeyPair:
    """A node's X25519 key pair (kept in memory by the node; its public half is public)."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(X25519PrivateKey.generate())

    @classmethod
    def from_private(cls, key: X25519PrivateKey | bytes) -> KeyPair:
        """The key pair of a private key (or its 32 raw bytes, as :meth:`private_bytes`).

        Example:
            >>> a = KeyPair.generate()
            >>> KeyPair.from_private(a.private_bytes()).public == a.public
            True
        """
        if isinstance(key, bytes):
            key = X25519PrivateKey.from_private_bytes(key)
        return cls(key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def private_bytes(self) -> bytes:
        """The 32 raw bytes of the private key (for the node's own store only)."""
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def __repr__(self) -> str:
        return f"KeyPair(public={fingerprint(self.public)})"


def fingerprint(public: bytes) -> str:
    """A short printable name of a public key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(public).hexdigest()[:16]


def _key(me: KeyPair, peer: bytes, context: bytes, sender: bytes, receiver: bytes) -> bytes:
    if len(peer) != 32:
        raise ProtocolError("a node public key is 32 bytes")
    shared = me.private.exchange(X25519PublicKey.from_public_bytes(peer))
    info = b"veil.mpc.seal|" + sender + receiver + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def seal(me: KeyPair, receiver: bytes, payload: bytes, context: bytes) -> bytes:
    """Encrypt and authenticate ``payload`` for the holder of ``receiver``'s private key."""
    nonce = os.urandom(12)
    key = _key(me, receiver, context, me.public, receiver)
    return nonce + AESGCM(key).encrypt(nonce, payload, context)


def unseal(me: KeyPair, sender: bytes, box: bytes, context: bytes) -> bytes:
    """Open a box sealed by ``sender`` for this key pair.

    Raises:
        ProtocolError: the box was not sealed by ``sender`` for this node and context,
            or was altered on the way.
    """
    if len(box) < 12 + 16:
        raise ProtocolError("sealed box too short")
    key = _key(me, sender, context, sender, me.public)
    try:
        return AESGCM(key).decrypt(box[:12], box[12:], context)
    except InvalidTag:
        raise ProtocolError(
            "a sealed box failed authentication: it was not sealed by the claimed node for "
            "this node and purpose, or it was altered in transit"
        ) from None


def _secret_key(secret: bytes, context: bytes) -> bytes:
    info = b"veil.mpc.seal-secret|" + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def seal_with_secret(secret: bytes, payload: bytes, context: bytes) -> bytes:
    """Encrypt and authenticate ``payload`` under a key derived from a secret two nodes
    share (e.g. a party's dealer seed, which only the party and its dealer know).

    Example:
        >>> seed = bytes(32)
        >>> box = seal_with_secret(seed, b"mask", b"ctx")
        >>> unseal_with_secret(seed, box, b"ctx")
        b'mask'
    """
    nonce = os.urandom(12)
    return nonce + AESGCM(_secret_key(secret, context)).encrypt(nonce, payload, context)


def unseal_with_secret(secret: bytes, box: bytes, context: bytes) -> bytes:
    """Open a box from :func:`seal_with_secret`.

    Raises:
        ProtocolError: the box was not sealed with this secret and context, or was altered.
    """
    if len(box) < 12 + 16:
        raise ProtocolError("sealed box too short")
    try:
        return AESGCM(_secret_key(secret, context)).decrypt(box[:12], box[12:], context)
    except InvalidTag:
        raise ProtocolError(
            "a sealed box failed authentication: it was not sealed for this node and purpose, "
            "or it was altered in transit"
        ) from None
