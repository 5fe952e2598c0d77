"""Fixtures for the MPC tests: fresh parties and a crypto provider, in-process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

import veil


@dataclass
class Parties:
    """Workers for one test: ``parties`` hold shares, ``provider`` deals randomness."""

    parties: list[Any]
    provider: Any

    def share(self, t: Any) -> Any:
        return t.share(*self.parties, crypto_provider=self.provider)


def make(n: int) -> Parties:
    names = ["alice", "bob", "dave", "erin"][:n]
    return Parties([veil.VirtualWorker(nm) for nm in names], veil.VirtualWorker("carol"))


@pytest.fixture
def two() -> Parties:
    return make(2)


@pytest.fixture
def three() -> Parties:
    return make(3)


@pytest.fixture(scope="module")
def reused() -> dict[int, Parties]:
    """Parties reused across hypothesis examples of one module: {2: ..., 3: ...}."""
    return {2: make(2), 3: make(3)}


@pytest.fixture(params=[2, 3], ids=["2-party", "3-party"])
def group(request: pytest.FixtureRequest) -> Parties:
    """Each test runs with 2 parties (local truncation) and 3 (dealer truncation)."""
    return make(request.param)
