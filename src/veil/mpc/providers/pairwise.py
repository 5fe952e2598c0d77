"""Pairwise PRG zero-sharing: masks that sum to zero with no dealer (secure aggregation).

Every pair of parties (i, j) of a session shares a 32-byte seed ``s_ij`` that no one else
knows: the X25519 Diffie-Hellman secret of their two node keys, through HKDF-SHA256 bound to
the session id, the pair and the session's list of party keys. For a counter ``c`` party i's
zero-share is ``z_i = sum_{j>i} PRG(s_ij, c) - sum_{j<i} PRG(s_ij, c)`` (Z_2^64): each
PRG(s_ij, c) is added once and subtracted once, so the z_i sum to zero, and any n-1 of them
look uniform to whoever lacks the remaining seeds. A party that adds z_i to its own input
x_i makes a share of ``sum_i x_i`` (the masks of Bonawitz et al., CCS 2017, without the
dropout recovery).

What it rests on: X25519 (CDH) and HKDF/AES-CTR as a PRG; semi-honest parties that do not
all but one collude; the parties' node keys being the keys of those nodes (the driver names
them, as it does for a dealer); and a counter never reused in a session (each node refuses
a counter twice).

Example:
    >>> from veil.mpc.providers.seal import KeyPair
    >>> keys = [KeyPair.generate() for _ in range(3)]
    >>> pubs = [k.public for k in keys]
    >>> zs = [zero_share(pair_seeds(k, i, pubs, "s" * 16), i, 1, 4) for i, k in enumerate(keys)]
    >>> bool((zs[0] + zs[1] + zs[2] == 0).all()), bool((zs[0] == 0).all())
    (True, False)
"""

from __future__ import annotations

import hashlib

import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.mpc.providers.seal import KeyPair
from veil.mpc.ring import prg

#: The PRG slot of zero-shares (the seeds serve nothing else; the counter picks the stream).
_SLOT = 7


def pair_seed(me: KeyPair, peer: bytes, i: int, j: int, keys: list[bytes], sid: str) -> bytes:
    """The seed parties ``i`` and ``j`` share in session ``sid`` (the same on both sides)."""
    shared = me.private.exchange(X25519PublicKey.from_public_bytes(peer))
    lo, hi = min(i, j), max(i, j)
    digest = hashlib.sha256(b"".join(keys)).digest()
    info = b"veil.mpc.pairwise|" + sid.encode() + f"|{lo}|{hi}|".encode() + digest
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def pair_seeds(me: KeyPair, index: int, keys: list[bytes], sid: str) -> dict[int, bytes]:
    """Party ``index``'s seed with every other party of the session, by party index."""
    return {j: pair_seed(me, k, index, j, keys, sid) for j, k in enumerate(keys) if j != index}


def zero_share(seeds: dict[int, bytes], index: int, counter: int, numel: int) -> torch.Tensor:
    """Party ``index``'s share of zero number ``counter`` (flat int64, ``numel`` words)."""
    z = torch.zeros(numel, dtype=torch.int64)
    for j, s in sorted(seeds.items()):
        r = prg(s, counter, _SLOT, numel)
        z = z + r if j > index else z - r
    return z
