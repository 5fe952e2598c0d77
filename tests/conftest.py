"""Shared fixtures: fresh nodes for every test, as in-process workers or real servers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import veil
from veil.node import Node

OWNER_EMAIL = "owner@test.local"
OWNER_PASSWORD = "owner-password-1"
_counter = itertools.count()


@dataclass
class Deployment:
    """One node under test and handles on it.

    Attributes:
        kind: "virtual" (in-process VirtualWorker) or "server" (uvicorn on 127.0.0.1).
        node: the Node object itself, for white-box checks (object counts, stores).
        owner: a Worker logged in as the node's owner.
    """

    kind: str
    node: Node
    owner: Any
    _connect: Any
    _workers: list[Any] = field(default_factory=list)

    def user(self, role: str = "data_scientist") -> Any:
        """A new user with ``role`` on this node, logged in: returns its Worker."""
        n = next(_counter)
        email, password = f"user{n}@test.local", f"password-{n}-xyz"
        self.owner.create_user(email, password, role=role)
        w = self._connect(email, password)
        self._workers.append(w)
        return w

    def scientist(self) -> Any:
        return self.user("data_scientist")


def _virtual() -> Iterator[Deployment]:
    node = Node("testnode", owner_email=OWNER_EMAIL, owner_password=OWNER_PASSWORD)
    owner = veil.VirtualWorker(node=node)
    yield Deployment("virtual", node, owner, lambda e, p: owner.login(e, p))


def _server() -> Iterator[Deployment]:
    from veil.node.server import serve_in_thread

    node = Node("testnode", owner_email=OWNER_EMAIL, owner_password=OWNER_PASSWORD)
    with serve_in_thread(node) as url:
        owner = veil.connect(url, email=OWNER_EMAIL, password=OWNER_PASSWORD)
        dep = Deployment("server", node, owner, lambda e, p: veil.connect(url, email=e, password=p))
        try:
            yield dep
        finally:
            for w in [owner, *dep._workers]:
                w.close()


def _server_available() -> bool:
    try:
        import veil.node.server  # noqa: F401
    except ImportError:
        return False
    return True


DEPLOYMENTS = ["virtual", "server"] if _server_available() else ["virtual"]


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Contract-suite fixture: the same test runs on an in-process node and a real server."""
    gen = _virtual() if request.param == "virtual" else _server()
    yield from gen


@pytest.fixture
def virtual() -> Iterator[Deployment]:
    """An in-process node only (for tests that need white-box access or heavy loops)."""
    yield from _virtual()
