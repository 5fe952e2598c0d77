"""The user's shared tensors: :class:`~veil.mpc.SharedTensor` (semi-honest),
:class:`~veil.mpc.tensors.authenticated.AuthenticatedTensor` (SPDZ2k MACs), fixed-point
tensors before sharing, and secret-shared ``torch.nn`` models."""

from __future__ import annotations

from veil.mpc.tensors import gradients, layers  # noqa: F401  (torch functions on shares)
from veil.mpc.tensors.authenticated import AuthenticatedTensor
from veil.mpc.tensors.autograd import AutogradTensor
from veil.mpc.tensors.fixed import FixedPrecisionPointer, FixedPrecisionTensor
from veil.mpc.tensors.shared import SharedTensor

__all__ = [
    "AuthenticatedTensor",
    "AutogradTensor",
    "FixedPrecisionPointer",
    "FixedPrecisionTensor",
    "SharedTensor",
]
