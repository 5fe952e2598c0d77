"""Dealer randomness prepared ahead: each group used once, the pool bounded, results exact."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from veil.mpc.preprocessing import Preprocessor, signature

import veil


def _session(workers: Any, **kw: Any) -> veil.mpc.MPCSession:
    """A session that prepares groups of any size ahead (these tests use small tensors;
    in-process sessions by default prepare only large groups, see the last tests)."""
    kw.setdefault("prefetch_min_bytes", 0)
    return veil.mpc.MPCSession(workers.parties, workers.provider, **kw)


def _spy_gids(sess: veil.mpc.MPCSession) -> list[int]:
    """Record every group id the session hands to a protocol."""
    seen: list[int] = []
    take = sess._pre.take

    def spy(groups: Any) -> Any:
        out = take(groups)
        seen.extend(gid for gid, _ in out)
        return out

    sess._pre.take = spy  # type: ignore[method-assign]
    return seen


def test_a_loop_of_same_shaped_products_takes_prepared_groups_each_once(group: Any) -> None:
    sess = _session(group, prefetch=2)
    gids = _spy_gids(sess)
    x, w = torch.randn(6, 5), torch.randn(5, 4)
    sx, sw = x.share(session=sess), w.share(session=sess)
    for _ in range(5):
        torch.testing.assert_close((sx @ sw).reconstruct(), x @ w, atol=1e-3, rtol=1e-3)
    assert sess._pre.hits >= 4 * (1 if sess.n == 2 else 2)  # every call after the first
    assert len(gids) == len(set(gids)), "a dealt group was handed out twice"


def test_preprocess_prepares_the_triples_and_truncation_pairs_of_future_products(
    group: Any,
) -> None:
    sess = _session(group, prefetch=0)
    x, w = torch.randn(3, 4), torch.randn(4, 2)
    sx, sw = x.share(session=sess), w.share(session=sess)
    sess.preprocess("matmul", x.shape, w.shape, count=3)
    assert sess._pre.pooled() == 3 * (1 if sess.n == 2 else 2)
    gids = _spy_gids(sess)
    for _ in range(3):
        torch.testing.assert_close((sx @ sw).reconstruct(), x @ w, atol=1e-3, rtol=1e-3)
    assert sess._pre.misses == 0 and sess._pre.pooled() == 0
    assert len(gids) == len(set(gids))
    sess.preprocess("mul", x.shape, x.shape, wait=False)
    sess.preprocess("square", x.shape)
    torch.testing.assert_close((sx * sx).reconstruct(), x * x, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(sx.square().reconstruct(), x * x, atol=1e-3, rtol=1e-3)
    assert sess._pre.misses == 0


def test_preprocess_refuses_unknown_ops_and_what_exceeds_the_pool(two: Any) -> None:
    sess = _session(two, prefetch=0, preprocess_bytes=1000)
    with pytest.raises(ValueError, match="op must be"):
        sess.preprocess("conv3d", (2, 2), (2, 2))
    with pytest.raises(ValueError, match="count"):
        sess.preprocess("mul", (2,), (2,), count=0)
    with pytest.raises(ValueError, match="preprocess_bytes"):
        sess.preprocess("mul", (100,), (100,), count=2)  # 1600 bytes of deltas
    with pytest.raises(ValueError, match="prefetch"):
        _session(two, prefetch=-1)
    with pytest.raises(ValueError, match="malicious"):
        _session(two, security="malicious").preprocess("mul", (2,), (2,))


def test_the_pool_stays_within_its_byte_cap_dropping_the_least_recently_used(two: Any) -> None:
    sess = _session(two, prefetch=1, preprocess_bytes=8 * 300)
    for n in (100, 120, 150, 90, 100):
        x = torch.randn(n).share(session=sess)
        x * x
        assert sess._pre.pooled_bytes <= 8 * 300
    too_big = torch.randn(400).share(session=sess)
    too_big * too_big  # its delta alone exceeds the cap: dealt on demand, never pooled
    assert sess._pre.pooled_bytes <= 8 * 300


def test_without_prefetch_nothing_is_dealt_ahead_and_closing_drops_the_pool(two: Any) -> None:
    off = _session(two, prefetch=0)
    x = torch.randn(4).share(session=off)
    for _ in range(3):
        x * x
    assert off._pre.pooled() == 0 and off._pre.hits == 0
    on = _session(two)
    y = torch.randn(4).share(session=on)
    y * y
    assert on._pre.pooled() == 1
    on.close()
    assert on._pre.pooled() == 0


def test_the_stats_of_a_product_are_unchanged_by_chained_truncation(three: Any) -> None:
    sess = _session(three)
    sx, sw = torch.randn(6, 5).share(session=sess), torch.randn(5, 4).share(session=sess)
    veil.mpc.reset_stats()
    sx @ sw
    s = veil.mpc.stats()["alice"]
    assert s["rounds"] == 2 and s["bytes"] == 8 * (30 + 20) + 8 * 24


def test_signatures_identify_interchangeable_groups_only() -> None:
    assert signature("beaver", {"x": [2, 3], "op": "mul"}) == signature(
        "beaver", {"op": "mul", "x": (2, 3)}
    )
    assert signature("carry", {"last": True}) != signature("carry", {"last": 1})
    assert signature("beaver", {"x": [2]}) != signature("square", {"x": [2]})
    assert signature("beaver", {"x": torch.zeros(2)}) is None


def test_a_failed_deal_reaches_the_caller_and_the_lane_keeps_working() -> None:
    calls: list[int] = []

    def deal(groups: Any) -> Any:
        calls.append(len(groups))
        if len(calls) == 1:
            raise RuntimeError("provider down")
        return [
            (len(calls) * 10 + i, torch.zeros(1, dtype=torch.int64)) for i in range(len(groups))
        ]

    pre = Preprocessor(deal, ahead=0, max_bytes=1 << 20)
    with pytest.raises(RuntimeError, match="provider down"):
        pre.take([("square", {"x": [1], "trunc": 0})])
    assert [g for g, _ in pre.take([("square", {"x": [1], "trunc": 0})])] == [20]
    pre.close()


def test_the_dealer_lane_does_not_keep_a_session_alive(two: Any) -> None:
    import gc
    import weakref

    sess = _session(two)
    x = torch.randn(4).share(session=sess)
    x * x
    pre, ref = sess._pre, weakref.ref(sess)
    del sess, x
    gc.collect()
    assert ref() is None
    assert pre.pooled() == 0  # closed with the session


def test_malicious_mode_takes_prepared_authenticated_groups_too(two: Any) -> None:
    sess = _session(two, security="malicious")
    gids = _spy_gids(sess)
    x, w = torch.randn(3, 4), torch.randn(4, 2)
    sx, sw = x.share(session=sess), w.share(session=sess)
    for _ in range(3):
        torch.testing.assert_close((sx @ sw).reconstruct(), x @ w, atol=1e-3, rtol=1e-3)
    assert sess._pre.hits >= 2 and len(gids) == len(set(gids))


def test_in_process_sessions_prepare_only_large_groups_ahead(two: Any) -> None:
    """Where parties and dealer share this process, a small group is dealt when used (a
    second thread preparing it would compete for the interpreter); a large one is still
    dealt ahead; prefetch_min_bytes sets the floor (0: every size) and is checked."""
    from veil.mpc.protocols.session import PREFETCH_MIN

    sess = veil.mpc.MPCSession(two.parties, two.provider)
    assert sess.in_process and sess._pre.min_bytes == PREFETCH_MIN
    small = torch.randn(8).share(session=sess)
    for _ in range(3):
        torch.testing.assert_close((small * small).reconstruct(), small.reconstruct() ** 2,
                                   atol=1e-3, rtol=1e-3)  # fmt: skip
    assert sess._pre.hits == 0 and sess._pre.pooled() == 0
    n = PREFETCH_MIN // 8  # the Beaver delta (c) holds one word per element
    big = torch.randn(n).share(session=sess)
    for _ in range(2):
        big * big
    assert sess._pre.hits == 1
    assert veil.mpc.MPCSession(two.parties, two.provider, prefetch_min_bytes=0)._pre.min_bytes == 0
    with pytest.raises(ValueError, match="prefetch_min_bytes"):
        veil.mpc.MPCSession(two.parties, two.provider, prefetch_min_bytes=-1)
