"""Shared fixtures: fresh nodes for every test, as in-process workers or real servers."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import veil
from veil.node import Node

# Test workers run two at a time on two cores: one intra-op thread each avoids OpenMP
# oversubscription (which made loop-heavy tests ~30x slower).
torch.set_num_threads(1)

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


def _start_postgres(tmp: Path) -> tuple[str, Callable[[], None]] | str:
    """Start a throwaway PostgreSQL cluster; returns (url, stop) or why it cannot."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver is missing: pip install 'veil[postgres]'"
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if not shutil.which("runuser"):
            return "running as root without runuser to start PostgreSQL as another user"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server"
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres")
    data = tmp / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *a: subprocess.run([*prefix, *a], check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        opts = f"-p {port} -k {tmp} -h 127.0.0.1 -c fsync=off"
        run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "start")
    except subprocess.CalledProcessError as exc:
        return f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')[-300:]}"
    return (
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        lambda: run(pg_ctl, "-D", str(data), "-m", "immediate", "stop"),
    )


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scratch PostgreSQL database: ``VEIL_TEST_POSTGRES_URL`` if set, else a throwaway
    cluster started for this test session (skipped, with the reason, if that cannot run)."""
    if url := os.environ.get("VEIL_TEST_POSTGRES_URL"):
        yield url
        return
    tmp = Path(
        tempfile.mkdtemp(prefix="veil-pg-")
    )  # not under pytest's 0700 root: postgres must enter
    started = _start_postgres(tmp)
    if isinstance(started, str):
        pytest.skip(started)
    url, stop = started
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Contract-suite fixture: the same test runs on an in-process node and a real server."""
    gen = _virtual() if request.param == "virtual" else _server()
    yield from gen


@pytest.fixture
def virtual() -> Iterator[Deployment]:
    """An in-process node only (for tests that need white-box access or heavy loops)."""
    yield from _virtual()
