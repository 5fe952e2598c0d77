"""The dealer groups a product needs (a Beaver triple or a square pair, then a truncation
pair when the session truncates with the dealer): what products deal and
:meth:`~veil.mpc.protocols.session.MPCSession.preprocess` prepares.

Example:
    >>> class Two: truncation = "local"
    >>> product_groups(Two(), "mul", [3], [3], f=16)
    [('beaver', {'x': [3], 'y': [3], 'op': 'mul', 'trunc': 16})]
"""

from __future__ import annotations

from typing import Any

from veil.mpc.providers import kinds


def product_groups(sess: Any, op: str, x: list[int], y: list[int] | None, *, f: int,
                   stride: int = 1, padding: int = 0) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """The dealer groups of one product (Beaver triple or square pair, then a truncation
    pair when the session truncates with the dealer): what :func:`product` and
    :func:`square` deal, and :meth:`MPCSession.preprocess` prepares."""
    local_f = f if sess.truncation == "local" else 0
    if op == "square":
        groups: list[tuple[str, dict[str, Any]]] = [("square", {"x": x, "trunc": local_f})]
        out = tuple(x)
    elif op in ("mul", "matmul", "conv2d"):
        if y is None:
            raise ValueError(f"{op} needs the shapes of both operands")
        params: dict[str, Any] = {"x": x, "y": y, "op": op}
        if op == "conv2d":
            params.update(stride=stride, padding=padding)
        params["trunc"] = local_f
        groups = [("beaver", params)]
        out = kinds.get_kind("beaver").slots(params)[2].shape
    else:
        raise ValueError(f"op must be 'mul', 'matmul', 'conv2d' or 'square', got {op!r}")
    if f != local_f:
        groups.append(("trunc", {"x": list(out), "f": f}))
    return groups
