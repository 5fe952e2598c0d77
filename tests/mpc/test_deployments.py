"""The same MPC program on in-process workers and on node servers over loopback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import veil
from veil.node import Node

PASSWORD = "owner-password-1"


@contextlib.contextmanager
def _servers(names: list[str]) -> Iterator[list[Any]]:
    """Node servers in threads; the last one deals, and every other owner approves it."""
    from veil.node.server import serve_in_thread

    with contextlib.ExitStack() as stack:
        workers = []
        for name in names:
            node = Node(name, owner_email=f"o@{name}.org", owner_password=PASSWORD)
            url = stack.enter_context(serve_in_thread(node))
            w = veil.connect(url, email=f"o@{name}.org", password=PASSWORD)
            stack.callback(w.close)
            workers.append(w)
        for w in workers[:-1]:
            veil.mpc.dealers(w).add(names[-1], workers[-1])
        yield workers


def _start_process(name: str, db_dir: str, *extra: str) -> subprocess.Popen[str]:
    """``python -m veil node serve`` for one party on a free loopback port, running the
    same veil source as this test (``extra``: more options, e.g. ``--dealer``)."""
    src = str(Path(veil.__file__).resolve().parents[1])
    path = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, VEIL_OWNER_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "veil", "node", "serve", "--name", name, "--host", "127.0.0.1",
           "--port", "0", "--bulk-port", "-1", "--db", f"sqlite:///{db_dir}/{name}.db",
           "--owner-email", f"o@{name}.org", *extra]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _url_of(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    deadline, lines = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "serving on " in line:
            return line.split("serving on ")[1].split()[0]
        if not line and proc.poll() is not None:
            break
    pytest.fail("node server did not start:\n" + "".join(lines))


@contextlib.contextmanager
def _processes(names: list[str]) -> Iterator[list[Any]]:
    """Each party and the dealer in its own ``veil node serve`` process on loopback: the
    dealer (the last name) first, then the parties with ``--dealer NAME=URL``, so that each
    party's node reads the dealer's key from its ``/api/v1/info`` and approves it."""
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        try:
            procs = [_start_process(names[-1], tmp)]
            dealer_url = _url_of(procs[0])
            procs += [_start_process(name, tmp, "--dealer", f"{names[-1]}={dealer_url}")
                      for name in names[:-1]]  # fmt: skip
            urls = [_url_of(p) for p in procs[1:]] + [dealer_url]
            procs = procs[1:] + procs[:1]
            workers = []
            for name, url in zip(names, urls, strict=True):
                w = veil.connect(url, email=f"o@{name}.org", password=PASSWORD)
                stack.callback(w.close)
                workers.append(w)
            yield workers
        finally:
            stack.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
                if proc.stdout is not None:
                    proc.stdout.close()


@contextlib.contextmanager
def _virtual(names: list[str]) -> Iterator[list[Any]]:
    yield [veil.VirtualWorker(n) for n in names]


def program(alice: Any, bob: Any, dave: Any, carol: Any) -> dict[str, torch.Tensor]:
    """One program: sharing from the scientist and from a data owner's node, products,
    comparisons, a shared model."""
    torch.manual_seed(3)
    x, w = torch.randn(5, 4), torch.randn(4, 3)
    sx = x.share(alice, bob, dave, crypto_provider=carol)
    ptr = alice.send(w)
    sw = ptr.fix_precision().share(alice, bob, dave, crypto_provider=carol)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    shared_model = model.share(alice, bob, dave, crypto_provider=carol)
    h = sx @ sw
    return {
        "matmul": (h.reconstruct(), x @ w),
        "relu_max": (h.relu().max(1)[0].reconstruct(), (x @ w).relu().max(1).values),
        "model": (shared_model(h).reconstruct(), model(x @ w).detach()),
        "sigmoid": (h.sigmoid().reconstruct(), torch.sigmoid(x @ w)),
    }


@pytest.mark.parametrize("deploy", [_virtual, _servers], ids=["virtual", "server"])
def test_the_same_program_runs_in_process_and_over_loopback(deploy: Any) -> None:
    with deploy(["alice", "bob", "dave", "carol"]) as workers:
        veil.mpc.reset_stats()
        results = program(*workers)
        for name, (got, want) in results.items():
            assert torch.allclose(got, want, atol=5e-3), name
        counts = veil.mpc.stats()
        assert counts["alice"]["rounds"] == counts["bob"]["rounds"] == counts["dave"]["rounds"] > 0
        assert counts["carol"]["rounds"] == 0 and counts["carol"]["bytes"] > 0


def _malicious_program(alice: Any, bob: Any, carol: Any) -> dict[str, Any]:
    torch.manual_seed(4)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    sx = x.share(alice, bob, crypto_provider=carol, security="malicious")
    sy = y.share(alice, bob, crypto_provider=carol, security="malicious")
    return {
        "mul": ((sx * sy).reconstruct(), x * y),
        "relu_matmul": ((sx @ sy.t()).relu().reconstruct(), (x @ y.t()).relu()),
    }


@pytest.mark.slow
def test_the_same_program_runs_on_node_servers_in_separate_processes() -> None:
    names = ["alice", "bob", "dave", "carol"]
    with _virtual(names) as workers:
        local = program(*workers)
        local_malicious = _malicious_program(workers[0], workers[1], workers[3])
    with _processes(names) as workers:
        assert all(w.info().name == n for w, n in zip(workers, names, strict=True))
        remote = program(*workers)
        remote_malicious = _malicious_program(workers[0], workers[1], workers[3])
    for results, ref in ((remote, local), (remote_malicious, local_malicious)):
        assert results.keys() == ref.keys()
        for name, (got, want) in results.items():
            assert torch.allclose(got, want, atol=5e-3), name  # against plaintext
            assert torch.allclose(got, ref[name][0], atol=5e-3), name  # against in-process


def test_stats_match_the_theoretical_cost_of_one_product(two: Any) -> None:
    a, b = two.share(torch.randn(1000)), two.share(torch.randn(1000))
    veil.mpc.reset_stats()
    _ = a * b
    s = veil.mpc.stats()
    for p in ("alice", "bob"):
        assert s[p] == {"bytes": 16 * 1000, "rounds": 1, "messages": 1}
    m, k = two.share(torch.randn(30, 20)), two.share(torch.randn(20, 10))
    veil.mpc.reset_stats()
    _ = m @ k
    assert veil.mpc.stats()["alice"]["bytes"] == 8 * (30 * 20 + 20 * 10)


def test_over_loopback_the_scientist_cannot_fetch_shares_either() -> None:
    from veil.node.server import serve_in_thread

    with contextlib.ExitStack() as stack:
        scientists = []
        nodes = [
            Node(n, owner_email=f"o@{n}.org", owner_password=PASSWORD)
            for n in ("alice", "bob", "carol")
        ]
        for node in nodes[:2]:  # their owners approve carol as a crypto provider
            veil.mpc.dealers(veil.VirtualWorker(node=node)).add(
                "carol", veil.VirtualWorker(node=nodes[2])
            )
        for node in nodes:
            node.create_user("ds@lab.org", "ds-password-123")
            url = stack.enter_context(serve_in_thread(node))
            w = veil.connect(url, email="ds@lab.org", password="ds-password-123")
            stack.callback(w.close)
            scientists.append(w)
        alice, bob, carol = scientists
        x = torch.tensor([2.0, -3.0]).share(alice, bob, crypto_provider=carol)
        y = (x * x).relu()
        for share in [*x.shares, *y.shares]:
            with pytest.raises(veil.errors.PermissionDenied):
                share.get()
        assert carol.info().objects == 0  # the dealer holds nothing of the scientist's
