"""Dealer randomness for products and truncation: Beaver triples, square pairs, truncation pairs."""

from __future__ import annotations

import torch

from veil.errors import InvalidRequest
from veil.mpc.providers.kinds import _MAX63, Inputs, Kind, Params, Slot, _int, _shape, register_kind
from veil.mpc.ring import z64 as ring


def _product(p: Params, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    op = p["op"]
    if op == "mul":
        return a * b
    if op == "matmul":
        return ring.matmul(a, b)
    return ring.conv2d(a, b, stride=p.get("stride", 1), padding=p.get("padding", 0))


def _trunc_local(z: torch.Tensor, f: int, party: int, *, inplace: bool = False) -> torch.Tensor:
    """SecureML local truncation (2 parties): exact up to 1 LSB unless the shares wrap
    around, which happens with probability about |z| / 2^63 per element. ``inplace``
    overwrites ``z`` (only for a fresh result no one else holds, as in :meth:`Beaver.finish`).

    Example:
        >>> z = torch.tensor([4 << 16, -(4 << 16)])
        >>> _trunc_local(z, 16, 0), _trunc_local(z, 16, 1), z
        (tensor([ 4, -4]), tensor([ 4, -4]), tensor([ 262144, -262144]))
    """
    if f == 0:
        return z
    if not inplace:
        return z >> f if party == 0 else -((-z) >> f)
    if party == 0:
        return z.bitwise_right_shift_(f)
    return z.neg_().bitwise_right_shift_(f).neg_()


class Beaver(Kind):
    """Beaver triple for ``x * y``, ``x @ y`` or ``conv2d(x, y)``: slots a, b, c = op(a, b).

    Params: ``x``, ``y`` (shapes), ``op`` (mul / matmul / conv2d), ``stride``, ``padding``
    (conv2d), ``trunc`` (local truncation bits applied to the result, 2 parties only).
    """

    name = "beaver"

    def inputs(self, p: Params) -> Inputs:
        return [("arith", _shape(p, "x")), ("arith", _shape(p, "y"))]

    def _out(self, p: Params) -> tuple[int, ...]:
        xs, ys = _shape(p, "x"), _shape(p, "y")
        op = p.get("op")
        if op == "mul":
            return tuple(ring.broadcast_shapes(xs, ys))
        if op == "matmul":
            return ring.matmul_shape(xs, ys)
        if op == "conv2d":
            if len(xs) != 4 or len(ys) != 4:
                raise InvalidRequest("conv2d needs 4-d input and weight shapes")
            stride = p.get("stride", 1)
            padding = p.get("padding", 0)
            for v in (stride, padding):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 64:
                    raise InvalidRequest("conv2d stride and padding must be small integers")
            if xs[1] != ys[1]:
                raise InvalidRequest("conv2d: input channels differ from the weight's")
            return ring.conv2d_shapes(xs, ys, stride, padding)
        raise InvalidRequest(f"beaver op must be mul, matmul or conv2d, got {op!r}")

    def slots(self, p: Params) -> list[Slot]:
        try:
            out = self._out(p)
        except RuntimeError as exc:
            raise InvalidRequest(f"shapes do not combine: {exc}") from None
        _int(p, "trunc", 0, 62)
        return [
            Slot("a", _shape(p, "x"), opened=True),
            Slot("b", _shape(p, "y"), opened=True),
            Slot("c", out, corrected=True),
        ]

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"c": _product(p, v["a"], v["b"])}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [x[0], x[1]]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, torch.Tensor],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        e, d = opened
        # e (b + [party 0] d) + a d + c (e d is public: party 0 folds it into b's side),
        # accumulated in place in the first product, a fresh tensor
        b = m["b"] + d if party == 0 else m["b"]
        z = _product(p, e, b)  # the result's shape (op(x, y) broadcasts as c's does)
        z += _product(p, m["a"], d)
        z += m["c"]
        return [_trunc_local(z, p["trunc"], party, inplace=True)]


class Square(Kind):
    """Square ``x * x`` from a pair a, c = a^2 (half the openings of a Beaver product)."""

    name = "square"

    def inputs(self, p: Params) -> Inputs:
        return [("arith", _shape(p, "x"))]

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        _int(p, "trunc", 0, 62)
        return [Slot("a", s, opened=True), Slot("c", s, corrected=True)]

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"c": v["a"] * v["a"]}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [x[0]]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, torch.Tensor],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        (e,) = opened
        z = m["c"] + 2 * e * m["a"]
        if party == 0:
            z = z + e * e
        return [_trunc_local(z, p["trunc"], party)]


class Truncate(Kind):
    """Probabilistic truncation by ``f`` bits for any number of parties (Escudero et al.,
    CRYPTO 2020): exact up to one unit in the last place, never a wrap-around error,
    for inputs with |x| < 2^62. One opening of 8 bytes per element.

    Slots: r (opened mask; R = -sum of the masks), rmsb = R >> 63, rlow = (R mod 2^63) >> f.
    """

    name = "trunc"

    def inputs(self, p: Params) -> Inputs:
        return [("arith", _shape(p, "x"))]

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        _int(p, "f", 1, 62)
        return [Slot("r", s, opened=True), Slot("rmsb", s, corrected=True),
                Slot("rlow", s, corrected=True)]  # fmt: skip

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        big_r = -v["r"]
        return {"rmsb": (big_r >> 63) & 1, "rlow": (big_r & _MAX63) >> p["f"]}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [x[0] + (1 << 62) if party == 0 else x[0]]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, torch.Tensor],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        (c,) = opened
        f = p["f"]
        c_msb = (c >> 63) & 1
        # v_msb = c_msb XOR r_msb = c_msb + r_msb - 2 c_msb r_msb  (c_msb public)
        z = m["rmsb"] * (1 - 2 * c_msb) * (1 << (63 - f)) - m["rlow"]
        if party == 0:
            z = z + ((c & _MAX63) >> f) + c_msb * (1 << (63 - f)) - (1 << (62 - f))
        return [z]


for _k in (Beaver(), Square(), Truncate()):
    register_kind(_k)
