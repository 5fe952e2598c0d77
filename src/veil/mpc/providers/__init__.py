"""Crypto providers: where correlated randomness comes from. The kinds of dealer randomness
(Beaver triples, square and truncation pairs, comparison material, SPDZ2k-authenticated
groups), the :class:`~veil.mpc.providers.base.CryptoProvider` interface, the trusted dealer
(a node the parties' owners approved) and the dealer-free provider (pairwise PRG
zero-sharing), sealed boxes between nodes, and the pool of groups dealt ahead.

Importing this package registers every kind of dealer randomness.
"""

from __future__ import annotations

from veil.mpc.providers import beaver, comparison, spdz
from veil.mpc.providers.kinds import KINDS, get_kind

__all__ = ["KINDS", "beaver", "comparison", "get_kind", "spdz"]
