"""Protocols on raw shares (one pointer per party): products, truncation, comparison.

These take an :class:`~veil.mpc.session.MPCSession` and lists of share pointers (index =
party) and return the same; fixed-point bookkeeping lives in :mod:`veil.mpc.shared`.

Costs per element (each party sends, 8-byte words):

========================  ======  ================================================
protocol                  rounds  bytes sent per party
========================  ======  ================================================
Beaver ``x * y``          1       16 (+ truncation)
Beaver ``x @ y``          1       8 (mk + kn) for (m x k) @ (k x n)
square                    1       8
truncation, 2 parties     0       0 (local, SecureML)
truncation, n parties     1       8 (dealer pair, Escudero et al. 2020)
sign bit (``x < 0``)      8       8 + 5 * 24 + 16 + 8 = 152
========================  ======  ================================================
"""

from __future__ import annotations

from typing import Any

from veil.mpc.protocols.groups import product_groups
from veil.mpc.protocols.session import MPCSession, Request

Shares = list[Any]  # PointerTensor per party (its operators are dynamic for mypy)

#: Shifts of the Kogge-Stone carry tree over 64-bit words.
_SHIFTS = (1, 2, 4, 8, 16, 32)


def local(sess: MPCSession, fn: Any, *shares: Shares) -> Shares:
    """Apply ``fn(party_index, *party_shares)`` on every party (local computation)."""
    return sess.fanout(lambda i: fn(i, *(s[i] for s in shares)), range(sess.n))


def trunc(sess: MPCSession, xs: Shares, f: int) -> Shares:
    """Divide shared values by 2^f (rounding toward -inf, +-1 in the last place)."""
    if f == 0:
        return xs
    if sess.truncation == "local":
        return local(sess, lambda i, x: x.location.run_op("mpc.trunc_local", x, f, i), xs)
    shape = list(xs[0].shape)
    (res,) = sess.round([Request("trunc", {"x": shape, "f": f}, [[x] for x in xs])])
    return res[0]


def _product_round(sess: MPCSession, groups: list[tuple[str, dict[str, Any]]],
                   inputs: list[list[Any]]) -> Shares:  # fmt: skip
    """One product round; with a dealer truncation, chained: each party's message that
    finishes the product also opens the truncation (3 messages per party, not 4)."""
    (kind, params), n = groups[0], sess.n
    if len(groups) == 1:
        (res,) = sess.round([Request(kind, params, inputs)])
        return res[0]
    trunc = groups[1][1]
    return sess.chain([Request(kind, params, inputs),
                       Request("trunc", trunc, [[("out", 0)] for _ in range(n)])])[0]  # fmt: skip


def product(sess: MPCSession, xs: Shares, ys: Shares, *, op: str = "mul", f: int = 0,
            stride: int = 1, padding: int = 0) -> Shares:  # fmt: skip
    """``op(x, y)`` for shared x and y (Beaver), then truncated by ``f`` bits."""
    groups = product_groups(sess, op, list(xs[0].shape), list(ys[0].shape), f=f, stride=stride,
                            padding=padding)  # fmt: skip
    return _product_round(sess, groups, [[x, y] for x, y in zip(xs, ys, strict=True)])


def products(sess: MPCSession, pairs: list[tuple[Shares, Shares]], f: int) -> list[Shares]:
    """Several elementwise products in one round (then one truncation round if needed)."""
    local_f = f if sess.truncation == "local" else 0
    reqs = [
        Request(
            "beaver",
            {"x": list(x[0].shape), "y": list(y[0].shape), "op": "mul", "trunc": local_f},
            [[a, b] for a, b in zip(x, y, strict=True)],
        )  # fmt: skip
        for x, y in pairs
    ]
    outs = [r[0] for r in sess.round(reqs)]
    if local_f == f or f == 0:
        return outs
    reqs = [Request("trunc", {"x": list(o[0].shape), "f": f}, [[s] for s in o]) for o in outs]
    return [r[0] for r in sess.round(reqs)]


def square(sess: MPCSession, xs: Shares, f: int) -> Shares:
    """``x * x`` from a square pair (8 bytes per element instead of 16)."""
    groups = product_groups(sess, "square", list(xs[0].shape), None, f=f)
    return _product_round(sess, groups, [[x] for x in xs])


def sign_bit(sess: MPCSession, xs: Shares) -> Shares:
    """Arithmetic shares of ``1 if x < 0 else 0`` (the top bit of x in Z_2^64).

    Opens x - m (m: dealer randomness also shared bitwise), adds the public c to the
    XOR-shared m with a Kogge-Stone carry tree (6 rounds of AND gates on 64-bit words),
    and converts the sign bit back to an arithmetic share (one more round). All groups
    are dealt in one message up front.
    """
    shape = list(xs[0].shape)
    groups: list[tuple[str, dict[str, Any]]] = [("a2b", {"x": shape})]
    for s in _SHIFTS:
        groups.append(("carry", {"x": shape, "shift": s, "last": s == _SHIFTS[-1]}))
    groups.append(("b2a", {"x": shape}))
    dealt = sess.deal(groups)
    n = sess.n
    reqs = [Request("a2b", groups[0][1], [[x] for x in xs], dealt[0])]
    # a2b gives (G, P); each carry level gives (G, P, P0) or, last, the sign bit (XOR-shared):
    # one message per party per round, each finishing a round and opening the next.
    for k in range(len(_SHIFTS)):
        reqs.append(Request("carry", groups[1 + k][1], [[("out", 0), ("out", 1), ("out", 2 if k else 1)]
                                                        for _ in range(n)], dealt[1 + k]))  # fmt: skip
    reqs.append(Request("b2a", groups[-1][1], [[("out", 0)] for _ in range(n)], dealt[-1]))
    (res,) = sess.chain(reqs)
    return res
