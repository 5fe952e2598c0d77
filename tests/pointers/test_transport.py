"""Transport and OpQueue as objects: a worker's frames through a test transport, its queue on its own."""

from __future__ import annotations

import inspect

import pytest
import torch

import veil
from veil.errors import ConnectError, RemoteError
from veil.pointers.queue import OpQueue
from veil.pointers.transport import RecordingTransport, Transport
from veil.serde import codec
from veil.serde.messages import Done, ErrorReply, RunOp


def _pipelining(name: str) -> tuple[veil.VirtualWorker, RecordingTransport]:
    """An in-process worker that queues ops like a network client, its frames recorded."""
    w = veil.VirtualWorker(name)
    w.pipeline = True
    spy = RecordingTransport(w.transport)
    w.transport = spy
    return w, spy


def test_queued_ops_ride_on_the_call_that_needs_an_answer() -> None:
    w, spy = _pipelining("q")
    x = w.send(torch.tensor([1.0, 2.0]))
    y = (x * 2) + 1  # two ops queued: no frame yet
    assert len(spy.frames) == 1 and w.queue.pending == 2

    assert torch.equal(y.get(), torch.tensor([3.0, 5.0]))

    assert len(spy.frames) == 2 and w.queue.pending == 0
    assert [op.op for op in spy.calls[1].before] == ["Tensor.__mul__", "Tensor.__add__"]


def test_a_refused_queued_op_raises_from_the_flushing_call_naming_its_line() -> None:
    w, spy = _pipelining("refused")
    x = w.send(torch.ones(3))
    y = x * 2
    line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
    z = y + 1
    spy.inject(ErrorReply("remote_error", "index 7 is out of range", deferred=0))

    with pytest.raises(RemoteError) as caught:
        w.flush()

    message = str(caught.value)
    assert "index 7 is out of range" in message and "Tensor.__mul__" in message
    assert f"{__file__}:{line}" in message
    for ptr in (y, z):  # the refused op's result, and the op queued after it
        with pytest.raises(RemoteError, match="index 7 is out of range"):
            ptr.get()


def test_a_dropped_connection_surfaces_a_clear_connect_error_and_breaks_queued_results() -> None:
    w, spy = _pipelining("dropped")
    x = w.send(torch.ones(2))
    y = x + 1
    spy.inject(ConnectError("cannot reach node 'dropped'; is `veil node serve` running?"))

    with pytest.raises(ConnectError, match="is `veil node serve` running"):
        w.flush()

    with pytest.raises(ConnectError):  # its op may or may not have run: the result is unusable
        y.get()
    assert torch.equal((x + 2).get(), torch.tensor([3.0, 3.0]))  # the next call goes through


def test_a_worker_speaks_only_through_its_transport() -> None:
    class Scripted(Transport):  # a whole node, faked: every call answers Done
        def __init__(self) -> None:
            self.frames = 0

        def roundtrip(self, frame: bytes | bytearray | memoryview, expect_bytes: int = 0) -> bytes:
            self.frames += 1
            return bytes(codec.encode(Done()))

    w = veil.VirtualWorker("faked")
    w.transport = fake = Scripted()
    w.clear()
    w.close()
    assert fake.frames == 1 and w.node.object_count() == 0


def test_a_detached_queue_records_ops_without_sending_them() -> None:
    w, spy = _pipelining("tracer")
    x = w.send(torch.ones(2))
    send = w.queue.detach()
    _ = (x * 3).sum()
    assert w.info().name == "tracer"  # a call that needs an answer: the queue stays

    ops = w.queue.drain()

    assert [op.op for op in ops] == ["Tensor.__mul__", "Tensor.sum"]
    assert all(not c.before for c in spy.calls) and w.queue.pending == 0
    w.queue.attach(send)
    assert torch.equal((x * 3).get(), torch.tensor([3.0, 3.0]))


def test_a_full_queue_flushes_itself() -> None:
    sent: list[int] = []
    q = OpQueue(lambda: sent.append(len(q.take() or [])), max_ops=3)
    for _ in range(7):
        q.enqueue(RunOp("torch.neg", [], {}))
    assert sent == [3, 3] and q.pending == 1
