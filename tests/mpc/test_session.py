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


def test_in_process_parties_use_threads_only_for_large_products(two: Any) -> None:
    """In-process parties compute in the calling thread (threads cost more than they save
    there) except for matrix products and convolutions of at least PARALLEL_MIN
    multiply-accumulates; the results are the same either way."""
    import threading

    from veil.mpc.protocols.rounds import Request, _work
    from veil.mpc.protocols.session import PARALLEL_MIN
    from veil.mpc.providers import kinds

    sess = veil.mpc.MPCSession(two.parties, two.provider)
    assert sess.in_process
    here = threading.get_ident()
    small = sess.fanout(lambda i: threading.get_ident(), range(2), work=PARALLEL_MIN - 1)
    assert small == [here, here]
    big = sess.fanout(lambda i: threading.get_ident(), range(2), work=PARALLEL_MIN)
    assert here not in big
    serial = veil.mpc.MPCSession(two.parties, two.provider, parallel=False)
    assert serial.fanout(lambda i: threading.get_ident(), range(2), work=PARALLEL_MIN) == [here] * 2

    def work(kind: str, **params: Any) -> int:
        r = Request(kind, {"trunc": 0, **params}, [])
        r.slots = kinds.get_kind(kind).slots(r.params)
        return _work([r])

    assert work("beaver", op="mul", x=[10**6], y=[10**6]) == 0  # elementwise: memory-bound
    assert work("beaver", op="matmul", x=[64, 512], y=[512, 1024]) == 64 * 512 * 1024
    assert work("m_beaver", op="matmul", x=[64, 512], y=[512, 1024]) == 64 * 512 * 1024
    conv = work("beaver", op="conv2d", x=[2, 3, 8, 8], y=[4, 3, 3, 3], stride=1, padding=0)
    assert conv == 2 * 4 * 6 * 6 * (3 * 3 * 3)
    seen: list[int] = []
    fanout = sess.fanout

    def spy(fn: Any, items: Any, *, work: int = 0) -> Any:
        seen.append(work)
        return fanout(fn, items, work=work)

    sess.fanout = spy  # type: ignore[method-assign]
    x, w = torch.randn(64, 512), torch.randn(512, 1024) / 20
    out = (x.share(session=sess) @ w.share(session=sess)).reconstruct()
    torch.testing.assert_close(out, x @ w, atol=1e-2, rtol=1e-3)
    assert max(seen) == 64 * 512 * 1024 >= PARALLEL_MIN
