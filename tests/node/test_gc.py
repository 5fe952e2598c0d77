"""Remote garbage collection: dropped pointers free their objects, so long loops run flat."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil
from veil.pointers import pipeline


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny ops gain nothing from intra-op threads, and two test workers on two cores
    oversubscribe OpenMP (10x slower loops); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MB = 1024**2


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _run_flat(worker: Any, node: Any, n: int, step: Callable[[int], Any], *, slack: int) -> None:
    """Run ``step`` n times; the node's object count never grows by more than ``slack``."""
    worker.flush()
    base = node.object_count()
    peak = base
    for i in range(n):
        step(i)
        if i % 97 == 0:
            peak = max(peak, node.object_count())
            assert len(worker._released) <= slack, "releases are not being sent"
    worker.flush()
    assert peak <= base + slack, f"object count grew from {base} to {peak}"
    assert node.object_count() <= base + slack


def test_ten_thousand_dropped_results_leave_the_node_flat(virtual: Any) -> None:
    w, node = virtual.owner, virtual.node
    x = torch.randn(10_000).send(w)  # 40 kB per result: a leak of 10,000 would be 400 MB
    y = None
    for _ in range(500):  # warm up allocator, caches, the op registry
        y = x + 1
    rss0 = _rss()

    def step(i: int) -> None:
        nonlocal y
        y = x + 1

    _run_flat(w, node, 10_000, step, slack=3)

    assert torch.allclose(y.get(), x.get() + 1)  # type: ignore[union-attr]
    growth = _rss() - rss0
    assert growth < 50 * MB, f"RSS grew by {growth / MB:.0f} MB over 10,000 ops"
    del y
    w.flush()
    assert node.object_count() == 1  # only x is left


def test_chains_tuples_and_views_are_released(virtual: Any) -> None:
    w, node = virtual.owner, virtual.node
    x = torch.randn(100, 100).send(w)
    rss0 = _rss()

    def step(i: int) -> None:
        values, indices = torch.max(((x * 2) + i).relu(), 0)
        parts = torch.split(x[i % 100], 10)
        view = x.view(-1)[::7].reshape(-1, 1)
        del values, indices, parts, view

    _run_flat(w, node, 1_500, step, slack=20)

    assert _rss() - rss0 < 50 * MB


def test_training_loop_leaves_the_node_flat(virtual: Any) -> None:
    w, node = virtual.owner, virtual.node
    torch.manual_seed(0)
    model = w.send(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
    opt = veil.RemoteOptimizer(torch.optim.Adam, model.parameters(), lr=1e-3)
    x = torch.randn(256, 64).send(w)
    y = torch.randint(0, 10, (256,)).send(w)

    def step(i: int) -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for i in range(50):
        step(i)
    rss0 = _rss()

    _run_flat(w, node, 400, step, slack=6)

    assert _rss() - rss0 < 50 * MB


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x: Any) -> Any:
        return self.fc2(torch.tanh(self.fc1(x)) * 0.5 + 0.1)


def test_custom_model_loop_releases_every_intermediate(virtual: Any) -> None:
    w, node = virtual.owner, virtual.node
    model = w.send(Net())
    opt = veil.RemoteOptimizer(torch.optim.SGD, model.parameters(), lr=1e-2)
    x = torch.randn(128, 32).send(w)
    target = torch.randn(128, 4).send(w)

    def step(i: int) -> None:
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()

    for i in range(20):
        step(i)
    rss0 = _rss()

    _run_flat(w, node, 300, step, slack=12)

    assert _rss() - rss0 < 50 * MB


def test_release_works_over_every_transport(deployment: Any) -> None:
    w = deployment.scientist()
    x = torch.randn(1000).send(w)
    y = None

    def step(i: int) -> None:
        nonlocal y
        y = (x * i).sum() + x.mean()

    # A pipelining client holds up to MAX_QUEUED ops (and the releases that ride with
    # them) before it sends them: the node's object count is bounded by that, not by 8.
    slack = 8 + (4 * pipeline.MAX_QUEUED if w.pipeline else 0)
    _run_flat(w, deployment.node, 1_000, step, slack=slack)
    assert y is not None and torch.allclose(y.get(), (x.get() * 999).sum() + x.get().mean())


def test_objects_of_a_closed_scope_are_released(deployment: Any) -> None:
    w = deployment.scientist()
    node = deployment.node
    w.flush()
    base = node.object_count()

    def scope() -> float:
        ptrs = [torch.full((10,), float(i)).send(w) for i in range(50)]
        total = ptrs[0]
        for p in ptrs[1:]:
            total = total + p
        return float(total.sum().item())

    assert scope() == pytest.approx(10 * sum(range(50)))
    w.flush()

    assert node.object_count() == base
    assert w.objects() == []
