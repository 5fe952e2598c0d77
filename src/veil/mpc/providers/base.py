"""The crypto provider interface: what protocols ask for, and a registry of providers by name.

A session (:class:`~veil.mpc.MPCSession`) holds one provider. Protocols ask it for groups of
correlated randomness by kind (:mod:`veil.mpc.providers.kinds`): Beaver triples for mul,
matmul and conv2d (``beaver``), square pairs (``square``), truncation pairs (``trunc``),
comparison material (``a2b``, ``carry``, ``b2a``) and SPDZ2k-authenticated groups with the
parties' MAC key shares (``m_*``, malicious mode). Zero-shares need no provider: every
session's parties derive them from pairwise seeds (:mod:`veil.mpc.providers.pairwise`).

Example:
    >>> sorted(PROVIDERS)
    ['dealer', 'dealer-free']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from veil.errors import UnsupportedError

Group = tuple[str, dict[str, Any]]
#: A dealt group: its id and the last party's delta (flat int64).
Dealt = tuple[int, torch.Tensor]

NEEDS_DEALER = (
    "needs correlated randomness from a crypto provider (a dealer), and this session is "
    "dealer-free: configure a dealer, e.g. x.share(alice, bob, crypto_provider=carol) or "
    "MPCSession([alice, bob], carol). Dealer-free sessions add, subtract, sum, average and "
    "multiply by public values"
)


class CryptoProvider(ABC):
    """Where a session's correlated randomness comes from.

    Attributes:
        name: shown in the session's repr and in :func:`veil.mpc.stats` (the provider's
            traffic is counted under it).
        worker: the node that deals, or ``None`` for a provider without one.
    """

    kind: ClassVar[str]
    name: str
    worker: Any = None

    @abstractmethod
    def start(self, session: Any) -> str:
        """Set ``session`` up on every party (keys, seeds); returns the session id."""

    @abstractmethod
    def supports(self, kind: str) -> bool:
        """Whether it deals groups of ``kind``."""

    @abstractmethod
    def deal(self, session: Any, groups: list[Group]) -> list[Dealt]:
        """Deal ``groups`` (kind, params): for each, its id and the last party's delta."""

    def require(self, groups: list[Group], what: str = "") -> None:
        """Refuse, before any message, groups this provider cannot deal.

        Raises:
            UnsupportedError: saying which operation needs a dealer and how to configure one.
        """
        bad = sorted({k for k, _ in groups if not self.supports(k)})
        if bad:
            op = what or {"beaver": "a product of two shared values", "square": "a square",
                          "trunc": "truncation with more than 2 parties",
                          "a2b": "a comparison"}.get(bad[0], f"{bad[0]!r} randomness")  # fmt: skip
            raise UnsupportedError(f"{op} {NEEDS_DEALER}")


#: Provider classes by kind (``"dealer"``, ``"dealer-free"``).
PROVIDERS: dict[str, type[CryptoProvider]] = {}


def register_provider(cls: type[CryptoProvider]) -> type[CryptoProvider]:
    """Add a provider class under its ``kind``; a second one of the same kind is refused."""
    if cls.kind in PROVIDERS:
        raise ValueError(f"a crypto provider of kind {cls.kind!r} is registered already")
    PROVIDERS[cls.kind] = cls
    return cls
