"""Fixtures for the MPC tests: fresh parties and a crypto provider, in-process.

The shared-tensor suite runs under every crypto provider and security mode that supports
the op under test; a test names the modes it runs in (:func:`modes`): a dealer in
semi-honest or malicious mode, or no dealer (``dealer-free``: sharing, + and -, sums,
products with public values; means and public float products need 2 parties).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

import veil

#: Provider and security mode of each name :func:`modes` takes.
MODES = {
    "dealer": ("dealer", "semi-honest"),
    "dealer-malicious": ("dealer", "malicious"),
    "dealer-free": ("dealer-free", "semi-honest"),
}
#: The modes with a dealer (products of two shared values, comparisons).
DEALT = ("dealer", "dealer-malicious")


@dataclass
class Parties:
    """Workers for one test: ``parties`` hold shares, ``provider`` deals randomness (a worker,
    or a :class:`~veil.mpc.DealerFree` provider), in ``security`` mode."""

    parties: list[Any]
    provider: Any
    security: str = "semi-honest"

    def share(self, t: Any) -> Any:
        return t.share(*self.parties, crypto_provider=self.provider, security=self.security)


def make(n: int, mode: str = "dealer") -> Parties:
    names = ["alice", "bob", "dave", "erin"][:n]
    provider, security = MODES[mode]
    dealer = veil.VirtualWorker("carol") if provider == "dealer" else veil.mpc.DealerFree()
    return Parties([veil.VirtualWorker(nm) for nm in names], dealer, security)


def modes(*names: str, n: tuple[int, ...] = (2, 3)) -> list[Any]:
    """Parameters for the ``parties`` fixture: each of ``names`` (keys of :data:`MODES`)
    with each party count in ``n``."""
    return [pytest.param((m, k), id=f"{m}-{k}") for m in names for k in n]


@pytest.fixture
def parties(request: pytest.FixtureRequest) -> Parties:
    """Fresh parties of the mode and count the test names with ``modes``."""
    mode, n = request.param
    return make(n, mode)


@pytest.fixture
def two() -> Parties:
    return make(2)


@pytest.fixture
def three() -> Parties:
    return make(3)


@pytest.fixture(scope="module")
def reused() -> dict[Any, Parties]:
    """Parties reused across hypothesis examples of one module: ``{2: ..., 3: ...}`` with a
    dealer in semi-honest mode, and ``{(mode, n): ...}`` for every mode (made on first use)."""

    class Lazy(dict[Any, Parties]):
        def __missing__(self, key: Any) -> Parties:
            mode, n = key
            self[key] = made = make(n, mode)
            return made

    out = Lazy()
    out.update({2: make(2), 3: make(3)})
    return out


@pytest.fixture(params=[2, 3], ids=["2-party", "3-party"])
def group(request: pytest.FixtureRequest) -> Parties:
    """Each test runs with 2 parties (local truncation) and 3 (dealer truncation)."""
    return make(request.param)
