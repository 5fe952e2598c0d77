"""Homomorphic encryption: Paillier and CKKS encrypted tensors, and their use on nodes."""

from __future__ import annotations
