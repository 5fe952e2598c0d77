"""Homomorphic encryption: Paillier and CKKS encrypted tensors, and their use on nodes.

* :mod:`veil.he.paillier`: additively homomorphic, exact fixed point, slot packing
  (:func:`paillier.keygen`, :func:`paillier.encrypt` -> :class:`EncryptedTensor`).
* :mod:`veil.he.ckks`: approximate arithmetic with ciphertext products on TenSEAL
  (:func:`ckks.context`, :func:`ckks.encrypt` -> :class:`CKKSTensor`).
* ``enc.send(worker)`` -> :class:`EncryptedPointer`: compute on a node that holds no key.

Both libraries are optional (``pip install 'veil[he]'``) and imported on first use.

Example:
    >>> import torch
    >>> from veil import he
    >>> pk, sk = he.paillier.keygen(512, force=True)
    >>> he.encrypt(torch.tensor([1.0, 2.0]), pk).sum().decrypt(sk)
    tensor(3., dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

from veil.he import ckks, paillier
from veil.he.ckks import CKKSContext, CKKSTensor, DepthExceeded
from veil.he.paillier import EncryptedTensor, Packing, PrivateKey, PublicKey
from veil.he.remote import ContextPointer, EncryptedPointer, register

__all__ = [
    "CKKSContext",
    "CKKSTensor",
    "ContextPointer",
    "DepthExceeded",
    "EncryptedPointer",
    "EncryptedTensor",
    "Packing",
    "PrivateKey",
    "PublicKey",
    "ckks",
    "encrypt",
    "paillier",
]


def encrypt(x: Any, key: PublicKey | CKKSContext, **kwargs: Any) -> EncryptedTensor | CKKSTensor:
    """Encrypt ``x`` under a Paillier public key or a CKKS context (keyword arguments go
    to :func:`paillier.encrypt` / :func:`ckks.encrypt`)."""
    if isinstance(key, PublicKey):
        return paillier.encrypt(x, key, **kwargs)
    if isinstance(key, CKKSContext):
        return ckks.encrypt(x, key, **kwargs)
    raise TypeError(
        f"encrypt() needs a paillier.PublicKey or a ckks.CKKSContext, got {type(key).__name__}"
    )


register()
