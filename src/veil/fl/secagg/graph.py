"""The SecAgg+ neighbour graph: a random k-regular Harary graph from a public seed.

Clients are placed on a ring in an order fixed by ``SHA-256(seed || id)`` and each is joined
to the ``k / 2`` nearest on either side (Bell et al. 2020 use such a Harary graph under a
random permutation). Anyone holding the seed and the id list computes the same graph. With
``k >= n - 1`` the graph is complete: the original SecAgg of Bonawitz et al. 2017.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

__all__ = ["neighbour_graph", "suggested_degree"]


def suggested_degree(n: int) -> int:
    """An even degree of about ``2 log2 n`` (capped at ``n - 1``), SecAgg+'s usual choice.

    Example:
        >>> suggested_degree(50), suggested_degree(5)
        (12, 4)
    """
    if n < 2:
        raise ValueError(f"need at least 2 clients, got {n}")
    k = 2 * math.ceil(math.log2(n))
    k += k % 2
    return min(k, n - 1)


def neighbour_graph(ids: Iterable[int], k: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each client's neighbours in the public graph of degree ``k`` drawn from ``seed``.

    Args:
        ids: the distinct client ids.
        k: the degree; ``k >= n - 1`` gives the complete graph, otherwise ``k`` must be even
            and at least 2.
        seed: the public randomness the server announced.

    Returns:
        A symmetric adjacency map (no self-loops).

    Raises:
        ValueError: duplicate ids, fewer than 2 clients, or an odd or too small ``k``.

    Example:
        >>> g = neighbour_graph(range(10), 4, b"seed")
        >>> all(len(v) == 4 for v in g.values()), all(i in g[j] for i in g for j in g[i])
        (True, True)
    """
    members = list(ids)
    n = len(members)
    if len(set(members)) != n:
        raise ValueError("client ids must be distinct")
    if n < 2:
        raise ValueError(f"need at least 2 clients, got {n}")
    if k >= n - 1:
        return {i: frozenset(j for j in members if j != i) for i in members}
    if k < 2 or k % 2:
        raise ValueError(f"k must be an even number >= 2 (or >= n - 1), got {k}")
    order = sorted(members, key=lambda i: hashlib.sha256(seed + i.to_bytes(8, "big")).digest())
    half = k // 2
    return {
        c: frozenset(order[(p + d) % n] for d in range(-half, half + 1) if d)
        for p, c in enumerate(order)
    }
