"""MPCSession: rounds, chained rounds and the dealer's randomness as the driver sees them."""

from __future__ import annotations

import gc
from typing import Any

import torch

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
