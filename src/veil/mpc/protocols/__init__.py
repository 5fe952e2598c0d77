"""Protocols on raw shares: the session (parties, provider, rounds), products, truncation and
comparison (:mod:`~veil.mpc.protocols.arith`), and the generic algorithms both shared tensor
types run (:mod:`~veil.mpc.protocols.approx`, :mod:`~veil.mpc.protocols.reduce`,
:mod:`~veil.mpc.protocols.linalg`).

``veil.mpc.protocols.product`` and the other functions of :mod:`~veil.mpc.protocols.arith`
are importable from here, as they were from the former ``veil/mpc/protocols.py``.
"""

from __future__ import annotations

from veil.mpc.protocols.arith import (
    local,
    product,
    product_groups,
    products,
    sign_bit,
    square,
    trunc,
)

__all__ = ["local", "product", "product_groups", "products", "sign_bit", "square", "trunc"]
