"""PointerTensor's own API: repr, metadata without round trips, copy/move, errors, release."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import veil
from veil.errors import ObjectNotFound, OpNotAllowed, UnsupportedError, WorkerMismatch


def _ids(worker: Any) -> set[int]:
    return {o.id for o in worker.objects()}


def _count_calls(monkeypatch: pytest.MonkeyPatch, worker: Any) -> list[Any]:
    calls: list[Any] = []
    real = worker.call

    def counting(msg: Any) -> Any:
        calls.append(msg)
        return real(msg)

    monkeypatch.setattr(worker, "call", counting)
    return calls


def test_repr_shows_node_shape_and_dtype(deployment: Any) -> None:
    w = deployment.scientist()
    p = torch.zeros(2, 3).send(w)
    q = torch.arange(5).send(w)
    s = p.sum()

    assert "node='testnode'" in repr(p)
    assert "shape=2x3" in repr(p) and "dtype=float32" in repr(p)
    assert f"id={p.id}" in repr(p)
    assert "shape=5" in repr(q) and "dtype=int64" in repr(q)
    assert "shape=scalar" in repr(s)
    assert "private" not in repr(p)


def test_metadata_is_known_without_a_round_trip(
    deployment: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = deployment.scientist()
    x = torch.randn(4, 5, 6).send(w)
    y = x.permute(2, 0, 1)[1:].to(torch.float64)
    calls = _count_calls(monkeypatch, w)

    meta = (y.shape, y.dtype, y.size(), y.size(-1), y.dim(), y.ndim, y.numel(), len(y))

    assert meta == (torch.Size([5, 4, 5]), torch.float64, torch.Size([5, 4, 5]), 5, 3, 3, 100, 5)
    assert y.is_floating_point() and y.device == torch.device("cpu")
    assert calls == []


def test_item_tolist_and_iteration(deployment: Any) -> None:
    w = deployment.scientist()
    t = torch.tensor([[1.5, -2.0], [3.0, 4.25]])
    p = t.send(w)

    assert p.sum().item() == pytest.approx(6.75)
    assert p.tolist() == t.tolist()
    rows = list(p)
    assert len(rows) == 2 and all(isinstance(r, veil.PointerTensor) for r in rows)
    assert torch.equal(rows[1].get(), t[1])


def test_copy_is_an_independent_remote_object(deployment: Any) -> None:
    w = deployment.scientist()
    t = torch.tensor([1.0, 2.0, 3.0])
    p = t.send(w)

    c = p.copy()
    c.add_(10)

    assert c.id != p.id and c.location is w
    assert torch.equal(c.get(), t + 10)
    assert torch.equal(p.get(), t)


def test_move_sends_the_value_and_deletes_the_source(deployment: Any) -> None:
    w = deployment.scientist()
    bob = veil.VirtualWorker("bob")
    t = torch.randn(3, 4)
    p = t.send(w)
    source_id = p.id

    q = p.move(bob)
    w.flush()

    assert q.location is bob and isinstance(q, veil.PointerTensor)
    assert torch.equal(q.get(), t)
    assert source_id not in _ids(w)
    assert source_id not in deployment.node._objects
    with pytest.raises(ObjectNotFound):
        p.get()


def test_send_of_a_pointer_leaves_the_data_and_move_moves_it(deployment: Any) -> None:
    w = deployment.scientist()
    bob = veil.VirtualWorker("bob")
    p = torch.ones(2).send(w)
    source_id = p.id

    relay = p.send(bob)  # PySyft's pointer to a pointer: the data stays on w
    assert relay.location is bob and relay.get() is p and source_id in _ids(w)
    assert bob.node.object_count() == 0

    q = p.move(bob)
    w.flush()

    assert q.location is bob and torch.equal(q.get(), torch.ones(2))
    assert source_id not in _ids(w)


def test_mixing_pointers_from_two_nodes_raises_worker_mismatch(deployment: Any) -> None:
    w = deployment.scientist()
    bob = veil.VirtualWorker("bob")
    a = torch.ones(3).send(w)
    b = torch.ones(3).send(bob)

    for attempt in (lambda: a + b, lambda: torch.add(b, a), lambda: torch.stack([a, b])):
        with pytest.raises(WorkerMismatch) as err:
            attempt()
        assert "testnode" in str(err.value) and "bob" in str(err.value)

    assert torch.equal((a + a).get(), torch.full((3,), 2.0))  # both nodes still work
    assert torch.equal((b * 3).get(), torch.full((3,), 3.0))


def test_clear_empties_the_workers_objects(deployment: Any) -> None:
    w = deployment.scientist()
    other = deployment.scientist()
    keep = torch.ones(2).send(other)
    ptrs = [torch.randn(3).send(w) for _ in range(4)]
    ptrs.append(ptrs[0] * 2)
    assert len(w.objects()) == 5

    w.clear()

    assert w.objects() == []
    assert w.info().objects == 0
    with pytest.raises(ObjectNotFound):
        ptrs[0].get()
    assert torch.equal(keep.get(), torch.ones(2))  # another user's objects are untouched
    assert torch.equal(torch.zeros(1).send(w).get(), torch.zeros(1))


def test_dropping_the_last_pointer_releases_the_remote_object(deployment: Any) -> None:
    w = deployment.scientist()
    node = deployment.node
    x = torch.randn(10).send(w)
    w.flush()
    base = node.object_count()

    y = x + 1
    z = y * 2
    w.flush()  # a pipelining client sends queued ops with its next call
    assert node.object_count() == base + 2
    y_id = y.id

    del y
    w.flush()
    assert node.object_count() == base + 1
    assert y_id not in _ids(w)
    assert torch.allclose(z.get(), (x.get() + 1) * 2)

    del z, x
    w.flush()
    assert node.object_count() == base - 1


def test_explicit_delete(deployment: Any) -> None:
    w = deployment.scientist()
    p = torch.ones(2).send(w)
    pid = p.id

    p.delete()
    w.flush()

    assert pid not in _ids(w)
    with pytest.raises(ObjectNotFound):
        p.get()


def test_truth_value_of_a_pointer_is_a_clear_error(deployment: Any) -> None:
    w = deployment.scientist()
    p = torch.tensor([1.0]).send(w)

    with pytest.raises(UnsupportedError, match=r"\.get\(\)"):
        bool(p)
    with pytest.raises(UnsupportedError):
        if p > 0:
            pass
    with pytest.raises(UnsupportedError, match="no local data"):
        np.asarray(p)


def test_unknown_method_is_an_attribute_error(deployment: Any) -> None:
    w = deployment.scientist()
    p = torch.ones(2).send(w)

    with pytest.raises(AttributeError, match="allowlist"):
        p.some_unknown  # noqa: B018
    assert not hasattr(p, "numpy_secret_dump")
    with pytest.raises(AttributeError):
        p.__reduce_ex_evil__  # noqa: B018


def test_op_off_the_allowlist_is_refused(deployment: Any) -> None:
    w = deployment.scientist()
    p = torch.ones(4).send(w)
    before = deployment.node.object_count()

    with pytest.raises(OpNotAllowed):
        w.run_op("os.system", "echo pwned")
    with pytest.raises(OpNotAllowed):
        w.run_op("builtins.eval", "1+1")
    with pytest.raises(OpNotAllowed):
        torch.fft.fft(p)  # a real torch function that is simply not allowlisted

    assert deployment.node.object_count() == before
    assert torch.equal(p.mul(2).get(), torch.full((4,), 2.0))


def test_grad_attribute_is_a_pointer_or_none(deployment: Any) -> None:
    w = deployment.scientist()
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True).send(w)
    assert x.requires_grad and "requires_grad" in repr(x)
    assert x.grad is None

    (x * x).sum().backward()

    g = x.grad
    assert isinstance(g, veil.PointerTensor)
    assert torch.equal(g.get(), torch.tensor([2.0, 4.0, 6.0]))


def test_torchhook_alias_and_virtualworker_ids() -> None:
    hook = veil.TorchHook(torch)
    alice = veil.VirtualWorker(hook, id="alice")

    assert alice.id == "alice" and alice.name == "alice"
    assert repr(hook) == "TorchHook()"
    with pytest.raises(ValueError, match="name"):
        veil.VirtualWorker()
