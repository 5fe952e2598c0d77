"""Homomorphic encryption: Paillier and CKKS encrypted tensors, and their use on nodes.

* :mod:`veil.he.paillier`: additively homomorphic, exact fixed point, slot packing
  (:func:`paillier.keygen`, :func:`paillier.encrypt` -> :class:`EncryptedTensor`).
* :mod:`veil.he.ckks`: approximate arithmetic with ciphertext products on TenSEAL
  (:func:`ckks.context`, :func:`ckks.encrypt` -> :class:`CKKSTensor`).
* ``enc.send(worker)`` -> :class:`EncryptedPointer`: compute on a node that holds no key;
  :mod:`veil.he.limits` bounds what one call there may cost.

Both libraries are optional (``pip install 'veil[he]'``) and imported on first use.

Example:
    >>> import torch
    >>> from veil import he
    >>> pk, sk = he.paillier.keygen(512, force=True)
    >>> he.encrypt(torch.tensor([1.0, 2.0]), pk).sum().decrypt(sk)
    tensor(3., dtype=torch.float64)
"""

from __future__ import annotations

from veil.he import ckks, limits, paillier
from veil.he.ckks import CKKSContext, CKKSTensor, DepthExceeded
from veil.he.paillier import EncryptedTensor, Packing, PrivateKey, PublicKey
from veil.he.remote import ContextPointer, EncryptedPointer, register
from veil.he.scheme import HEScheme, encrypt, register_scheme, scheme_for, schemes

__all__ = [
    "CKKSContext",
    "CKKSTensor",
    "ContextPointer",
    "DepthExceeded",
    "EncryptedPointer",
    "EncryptedTensor",
    "HEScheme",
    "Packing",
    "PrivateKey",
    "PublicKey",
    "ckks",
    "encrypt",
    "limits",
    "paillier",
    "register_scheme",
    "scheme_for",
    "schemes",
]


register()
