"""OpQueue: the ops a client queued for one node, sent with its next call (pipelining).

The queue knows nothing of prediction (that is :mod:`veil.pointers.pipeline`) nor of
how frames travel (a :class:`~veil.pointers.transport.Transport`): it holds the queued
:class:`~veil.serde.messages.RunOp` messages in order, the pointer each one's result
was predicted as, and the line of user code that issued it. Its owner (a
:class:`~veil.pointers.remote.Remote`) takes the queued ops as a :class:`Batch` when it
makes a call, and uses the batch to mark the results that will never exist as failed
when the node refuses one of them.

A queue *detached* from sending (:meth:`OpQueue.detach`) only records: nothing rides on
calls and nothing is flushed, until :meth:`OpQueue.drain` hands the ops over (what a
plan tracer needs) or :meth:`OpQueue.attach` connects it again.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from veil.errors import VeilError, error_from_code
from veil.serde.messages import RunOp

#: Flush when this many ops are queued.
MAX_QUEUED = 256

#: (weak reference to the predicted result or None, op name, call site) per queued op.
Issued = tuple[Any, str, str]


class Batch:
    """Queued ops taken together to ride on one call, with who issued each.

    Example:
        >>> from veil.serde.messages import RunOp
        >>> q = OpQueue(lambda: None)
        >>> q.enqueue(RunOp("torch.neg", [], {}), site="train.py:3")
        >>> batch = q.take()
        >>> [op.op for op in batch.ops], q.pending
        (['torch.neg'], 0)
        >>> str(batch.refused(0, "remote_error", "boom"))
        'boom [raised by torch.neg, called at train.py:3 and run pipelined; the ops after it did not run]'
    """

    __slots__ = ("issued", "ops")

    def __init__(self, ops: list[RunOp], issued: list[Issued]) -> None:
        self.ops = ops
        self.issued = issued

    def __len__(self) -> int:
        return len(self.ops)

    def break_from(self, start: int, exc: VeilError) -> None:
        """Mark the results of the ops from ``start`` on as failed with ``exc``: using
        their pointers raises it."""
        for ref, _, _ in self.issued[start:]:
            ptr = ref() if ref is not None else None
            if ptr is not None:
                ptr._error = exc

    def refused(self, index: int, code: str, message: str) -> VeilError:
        """The error for the node's refusal of op ``index`` (naming the op and the line
        that issued it), with the results from ``index`` on marked as failed with it."""
        _, op, site = self.issued[index]
        failed = error_from_code(
            code,
            f"{message} [raised by {op}, called at {site} and run pipelined; "
            "the ops after it did not run]",
        )
        self.break_from(index, failed)
        return failed


class OpQueue:
    """Ops queued for one node, in order, until a call takes them (see module docstring).

    Args:
        send: sends the queue now (its owner makes a call, which takes the queued ops);
            called by :meth:`flush` and when ``max_ops`` are queued. None: detached.
        lock: shared with the owner, so that taking the queue and sending it are one step.
        max_ops: flush when this many ops are queued (a detached queue grows unbounded).
        first_id: the first id :meth:`new_id` hands out.

    Example:
        >>> from veil.serde.messages import CLIENT_IDS, RunOp
        >>> sent = []
        >>> q = OpQueue(lambda: sent.append(q.take()), first_id=CLIENT_IDS.start)
        >>> q.enqueue(RunOp("torch.add", [1, 2], {}, q.new_id()))
        >>> q.pending
        1
        >>> q.flush()
        >>> len(sent[0]), q.pending
        (1, 0)
    """

    __slots__ = ("_issued", "_lock", "_next_id", "_ops", "_send", "max_ops")

    def __init__(self, send: Callable[[], None] | None = None, *,
                 lock: threading.RLock | None = None, max_ops: int = MAX_QUEUED,
                 first_id: int = 1) -> None:  # fmt: skip
        self._send = send
        self._lock = lock if lock is not None else threading.RLock()
        self.max_ops = max_ops
        self._ops: list[RunOp] = []
        self._issued: list[Issued] = []
        self._next_id = first_id

    @property
    def pending(self) -> int:
        """How many ops are queued."""
        return len(self._ops)

    @property
    def sending(self) -> bool:
        """Whether queued ops ride on the owner's calls (False: detached, recording only)."""
        return self._send is not None

    def new_id(self) -> int:
        """A fresh id for a predicted result (the client names what queued ops create).

        Example:
            >>> q = OpQueue(first_id=7)
            >>> q.new_id(), q.new_id()
            (7, 8)
        """
        with self._lock:
            oid = self._next_id
            self._next_id += 1
            return oid

    def enqueue(self, op: RunOp, result: Any = None, *, site: str = "?") -> None:
        """Queue ``op``; ``result`` is the pointer predicted for its result (it gets the
        error if the op fails), ``site`` the line of user code that issued it. A sending
        queue that reaches ``max_ops`` is flushed.

        Example:
            >>> from veil.serde.messages import RunOp
            >>> q = OpQueue()
            >>> q.enqueue(RunOp("Tensor.backward", [], {}), site="loop.py:9")
            >>> q.pending
            1
        """
        with self._lock:
            self._ops.append(op)
            self._issued.append((None if result is None else weakref.ref(result), op.op, site))
            full = self._send is not None and len(self._ops) >= self.max_ops
        if full:
            self.flush()

    def take(self) -> Batch | None:
        """The queued ops as one batch, leaving the queue empty (None: nothing to send,
        or detached). The caller sends them ahead of its request.

        Example:
            >>> OpQueue(lambda: None).take() is None
            True
        """
        if not self._ops or self._send is None:
            return None
        with self._lock:
            batch = Batch(self._ops, self._issued)
            self._ops, self._issued = [], []
            return batch

    def flush(self) -> None:
        """Send the queued ops now (they also ride on the owner's next call); nothing for
        an empty or detached queue.

        Example:
            >>> OpQueue().flush()  # detached: nothing is sent
        """
        send = self._send
        if self._ops and send is not None:
            send()

    def drain(self) -> list[RunOp]:
        """Remove the queued ops and return them, unsent (their results stay unchecked).

        Example:
            >>> from veil.serde.messages import RunOp
            >>> q = OpQueue()
            >>> q.enqueue(RunOp("torch.neg", [], {}))
            >>> [op.op for op in q.drain()], q.pending
            (['torch.neg'], 0)
        """
        with self._lock:
            ops = self._ops
            self._ops, self._issued = [], []
            return ops

    def detach(self) -> Callable[[], None] | None:
        """Stop sending: ops are only recorded, until :meth:`drain` or :meth:`attach`.
        Returns the sender, to give back to :meth:`attach`.

        Example:
            >>> q = OpQueue(lambda: None)
            >>> send = q.detach()
            >>> q.sending
            False
            >>> q.attach(send)
            >>> q.sending
            True
        """
        with self._lock:
            send, self._send = self._send, None
            return send

    def attach(self, send: Callable[[], None] | None) -> None:
        """Send queued ops again, through ``send`` (see :meth:`detach`)."""
        with self._lock:
            self._send = send

    def __repr__(self) -> str:
        state = "sending" if self._send is not None else "detached"
        return f"OpQueue(pending={len(self._ops)}, {state})"
