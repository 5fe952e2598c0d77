"""Dealer randomness for comparisons: arithmetic to XOR sharing, carry levels, XOR bit to arithmetic."""

from __future__ import annotations

import torch

from veil.mpc.providers.kinds import (
    Inputs,
    Kind,
    Params,
    ShareDomain,
    Slot,
    _bool,
    _int,
    _shape,
    register_kind,
)


class A2B(Kind):
    """Start of a comparison: open c = x - m, then the XOR shares of the adder inputs of
    c + m (G = c AND m, P = c XOR m), from m's XOR shares (the corrected slot mb = m)."""

    name = "a2b"

    def inputs(self, p: Params) -> Inputs:
        return [("arith", _shape(p, "x"))]

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["xor", "xor"]

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        return [Slot("m", s, opened=True), Slot("mb", s, "xor", corrected=True)]

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"mb": v["m"]}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [x[0]]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, torch.Tensor],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        (c,) = opened
        g = c & m["mb"]
        pp = (c ^ m["mb"]) if party == 0 else m["mb"]
        return [g, pp]


class CarryLevel(Kind):
    """One level of a Kogge-Stone carry tree on XOR-shared words: G |= P & (G << s),
    P &= P << s, with two AND triples sharing one mask (a, b1, b2, c1 = a&b1, c2 = a&b2).
    On the last level (``last``) only G is updated and the result is the sign bit
    ``P0[63] XOR G[62]`` (inputs: G, P, P0; other levels pass P0 on as a third result)."""

    name = "carry"

    def inputs(self, p: Params) -> Inputs:
        return [("xor", _shape(p, "x"))] * 3  # G, P, P0

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["xor"] if _bool(p, "last") else ["xor"] * 3  # the sign bit, or G, P and P0

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        _int(p, "shift", 1, 63)
        _bool(p, "last")
        out = [Slot("a", s, "xor", opened=True), Slot("b1", s, "xor", opened=True)]
        if not p.get("last"):
            out.append(Slot("b2", s, "xor", opened=True))
        out.append(Slot("c1", s, "xor", corrected=True))
        if not p.get("last"):
            out.append(Slot("c2", s, "xor", corrected=True))
        return out

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"c1": v["a"] & v["b1"]}
        if not p.get("last"):
            out["c2"] = v["a"] & v["b2"]
        return out

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        g, pp, _ = x
        s = p["shift"]
        ops = [pp, g << s]
        if not p.get("last"):
            ops.append(pp << s)
        return ops

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, torch.Tensor],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        g, _, p0 = x
        e, d1 = opened[0], opened[1]
        t1 = m["c1"] ^ (e & m["b1"]) ^ (d1 & m["a"])
        if party == 0:
            t1 = t1 ^ (e & d1)
        g = g ^ t1  # OR as XOR: G and P & (G << s) are never both 1
        if p.get("last"):
            return [((p0 >> 63) ^ (g >> 62)) & 1]
        d2 = opened[2]
        t2 = m["c2"] ^ (e & m["b2"]) ^ (d2 & m["a"])
        if party == 0:
            t2 = t2 ^ (e & d2)
        return [g, t2, p0]


class B2A(Kind):
    """XOR-shared bit -> arithmetic share of the same bit (0 or 1), from a random bit s
    shared both ways: open t = b XOR s; b = t + s - 2 t s."""

    name = "b2a"

    def inputs(self, p: Params) -> Inputs:
        return [("xor", _shape(p, "x"))]  # a bit, in bit 0 of an XOR-shared word

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        return [Slot("s", s, "bit", opened=True), Slot("sa", s, corrected=True)]

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sa": v["s"]}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [x[0]]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, torch.Tensor],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        (t,) = opened
        z = m["sa"] * (1 - 2 * t)
        if party == 0:
            z = z + t
        return [z]


for _k in (A2B(), CarryLevel(), B2A()):
    register_kind(_k)
