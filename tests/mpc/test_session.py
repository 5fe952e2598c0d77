"""MPCSession: rounds, chained rounds and the dealer's randomness as the driver sees them."""

from __future__ import annotations

import gc
from typing import Any

import torch

import veil
from veil.mpc import protocols as P


def _objects(worker: Any) -> int:
    worker.flush()  # deletions of dropped pointers ride on the next call: send them now
    return len(worker.node._objects)


def test_chained_rounds_leave_no_objects_behind_on_the_parties(three: Any) -> None:
    x = three.share(torch.randn(50))
    before = [_objects(w) for w in three.parties]
    for _ in range(3):
        bit = P.sign_bit(x.session, x.shares)
        del bit
        gc.collect()
    assert [_objects(w) for w in three.parties] == before


def test_in_process_parties_use_threads_only_for_large_rounds(two: Any) -> None:
    """Small rounds of in-process parties run in the calling thread (threads cost more than
    they save there), large ones in the session's threads; results are the same."""
    import threading

    from veil.mpc.protocols.session import PARALLEL_MIN

    sess = veil.mpc.MPCSession(two.parties, two.provider)
    assert sess.in_process
    here = threading.get_ident()
    small = sess.fanout(lambda i: threading.get_ident(), range(2), work=PARALLEL_MIN - 1)
    assert small == [here, here]
    big = sess.fanout(lambda i: threading.get_ident(), range(2), work=PARALLEL_MIN)
    assert here not in big
    serial = veil.mpc.MPCSession(two.parties, two.provider, parallel=False)
    assert serial.fanout(lambda i: threading.get_ident(), range(2), work=PARALLEL_MIN) == [here] * 2
    x, y = torch.randn(PARALLEL_MIN), torch.randn(PARALLEL_MIN)
    for s in (sess, serial):
        torch.testing.assert_close((x.share(session=s) * y.share(session=s)).reconstruct(), x * y,
                                   atol=1e-3, rtol=1e-3)  # fmt: skip
