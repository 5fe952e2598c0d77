"""Pipelining on a network client: queued ops, their results, their errors, their limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil
from veil.errors import PermissionDenied, RemoteError
from veil.node import Node
from veil.node.server import serve_in_thread
from veil.pointers import pipeline
from veil.pointers.transport import RecordingTransport

EMAIL, PASSWORD = "owner@pipe.test", "owner-password-9"


@pytest.fixture
def served() -> Iterator[tuple[Node, str]]:
    node = Node("pipe", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node) as url:
        yield node, url


def _client(url: str, **kw: Any) -> Any:
    return veil.connect(url, email=EMAIL, password=PASSWORD, **kw)


def _count_round_trips(client: Any) -> list[bytes]:
    """The frames ``client`` sends from now on (one per round trip)."""
    spy = client.transport = RecordingTransport(client.transport)
    return spy.frames


def _train(model: Any, opt: Any, batches: list[tuple[Any, Any]], epochs: int) -> float:
    for _ in range(epochs):
        for xb, yb in batches:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
    return float(loss.item())


def _setup(where: Any) -> tuple[Any, Any, list[tuple[Any, Any]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 20, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(4)]  # fmt: skip
    if where is None:
        return model, torch.optim.SGD(model.parameters(), lr=0.1), data
    remote = where.send(model)
    opt = veil.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.1)
    return remote, opt, [(x.send(where), y.send(where)) for x, y in data]


def test_a_pipelined_training_loop_matches_local_in_a_few_round_trips(
    served: tuple[Node, str],
) -> None:
    _, url = served
    local_loss = _train(*_setup(None), epochs=5)
    with _client(url) as c:
        model, opt, batches = _setup(c)
        calls = _count_round_trips(c)
        loss = _train(model, opt, batches, epochs=5)
        assert len(calls) == 1  # 100 ops queued, sent with the one loss read
        assert loss == pytest.approx(local_loss, abs=1e-6)
        torch.manual_seed(0)
        ref = _setup(None)[0]
        _train(ref, torch.optim.SGD(ref.parameters(), lr=0.1), _setup(None)[2], epochs=5)
        for p, q in zip(model.get().parameters(), ref.parameters()):
            torch.testing.assert_close(p, q)


def test_a_client_without_pipelining_sends_every_op(served: tuple[Node, str]) -> None:
    node, url = served
    with _client(url, pipeline=False) as c:
        x = torch.ones(3).send(c)
        before = node.object_count()
        y = x + 1
        assert node.object_count() == before + 1
        assert torch.equal(y.get(), torch.full((3,), 2.0))


def test_queued_results_know_shape_dtype_and_grad_before_they_exist(
    served: tuple[Node, str],
) -> None:
    node, url = served
    with _client(url) as c:
        x = torch.randn(4, 5).send(c)
        c.flush()
        before = node.object_count()
        y = (x @ torch.randn(5, 2)).to(torch.float64)
        assert (y.shape, y.dtype, y.requires_grad) == ((4, 2), torch.float64, False)
        assert node.object_count() == before  # nothing sent yet
        assert y.get().shape == (4, 2)


def test_a_queued_op_that_fails_names_itself_and_its_line(served: tuple[Node, str]) -> None:
    _, url = served
    with _client(url) as c:
        x = torch.arange(4.0).send(c)
        idx = torch.tensor([0, 9]).send(c)  # out of range: only the node can tell
        bad = torch.gather(x, 0, idx)  # queued: its shape is predictable
        after = bad + 1  # queued behind it: must not run
        with pytest.raises(RemoteError) as err:
            c.flush()
        msg = str(err.value)
        assert "torch.gather" in msg and "test_pipeline.py" in msg and "did not run" in msg
        for ptr in (bad, after):
            with pytest.raises(RemoteError, match="torch.gather"):
                ptr.get()
        assert torch.equal((x * 2).get(), torch.tensor([0.0, 2.0, 4.0, 6.0]))  # still serving


def test_a_shape_error_is_raised_at_its_line_not_later(served: tuple[Node, str]) -> None:
    _, url = served
    with _client(url) as c:
        a, b = torch.ones(2, 3).send(c), torch.ones(4, 5).send(c)
        calls = _count_round_trips(c)
        with pytest.raises(RemoteError, match="shapes cannot be multiplied"):
            a @ b  # fails on meta tensors, so it goes out at once and the node explains
        assert len(calls) == 1


def test_ops_on_private_data_are_never_queued(served: tuple[Node, str]) -> None:
    node, url = served
    with _client(url) as owner:
        owner.datasets.create("d", private=torch.randn(6, 2), mock=torch.zeros(6, 2))
    node.create_user("sci@pipe.test", "scientist-password-1")
    with veil.connect(url, email="sci@pipe.test", password="scientist-password-1") as sci:
        priv = sci.datasets["d"].private
        calls = _count_round_trips(sci)
        m = priv.mean(0)
        assert len(calls) == 1 and m.private  # sent at once, tracked as private
        with pytest.raises(PermissionDenied):  # refused at its own line, as without pipelining
            torch.nonzero(priv)


def test_a_local_tensor_is_sent_as_it_was_when_the_op_was_queued(
    served: tuple[Node, str],
) -> None:
    _, url = served
    with _client(url) as c:
        p = torch.zeros(3).send(c)
        a = torch.ones(3)
        y = p + a
        a.add_(100)  # after queueing: the node must still add ones
        assert torch.equal(y.get(), torch.ones(3))


def test_dropped_queued_results_are_released(served: tuple[Node, str]) -> None:
    node, url = served
    with _client(url) as c:
        x = torch.randn(100).send(c)
        c.flush()
        base = node.object_count()
        y = None
        for i in range(3 * pipeline.MAX_QUEUED):
            y = x * i
            assert c.queue.pending < pipeline.MAX_QUEUED  # the queue is bounded
        c.flush()
        assert node.object_count() == base + 1  # only the last y is left
        assert torch.allclose(y.get(), x.get() * (3 * pipeline.MAX_QUEUED - 1))  # type: ignore[union-attr]


def test_predictions_follow_train_and_eval_mode(served: tuple[Node, str]) -> None:
    _, url = served
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    with _client(url) as c:
        remote = c.send(model)
        x = torch.randn(8, 4)
        px = x.send(c)
        remote.eval()
        model.eval()
        out = remote(px)
        assert out.shape == (8, 4)
        torch.testing.assert_close(out.get(), model(x))
        remote.train()
        y = remote(px)
        assert y.requires_grad and y.get().shape == (8, 4)


def test_a_prediction_made_under_no_grad_agrees_with_the_node(served: tuple[Node, str]) -> None:
    """The node runs every op with grad on; a prediction (cached per architecture) must say
    so even when the client's loop runs under torch.no_grad()."""
    node, url = served
    with _client(url) as c:
        first, second = (c.send(nn.Linear(3, 2)) for _ in range(2))  # one architecture
        px = torch.randn(4, 3).send(c)
        with torch.no_grad():
            y = first(px)
        z = second(px)
        c.flush()
        for ptr in (y, z):
            assert ptr.requires_grad
            assert node.lookup(ptr.id).value.requires_grad
