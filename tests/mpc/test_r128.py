"""Z_2^128 arithmetic (veil.mpc.r128) against Python integers."""

from __future__ import annotations

import torch

from veil.mpc import r128

_M = 2**128


def _rand(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, (2, *shape), generator=g, dtype=torch.int64)


def _ints(t: torch.Tensor) -> list[int]:
    return [v % _M for v in r128.to_int(t.reshape(2, -1))]


def _edge(shape: tuple[int, ...]) -> torch.Tensor:
    """All-ones words, zeros, 2^63: the carries' worst cases."""
    vals = torch.tensor([-1, 0, -(2**63), 2**63 - 1, 1])
    idx = torch.arange(2 * torch.Size(shape).numel()) % 5
    return vals[idx].reshape(2, *shape)


def test_elementwise_ops_match_python_ints() -> None:
    g = torch.Generator().manual_seed(1)
    for a, b in ((_rand((64,), g), _rand((64,), g)), (_edge((64,)), _edge((64,)).flip(1))):
        ia, ib = _ints(a), _ints(b)
        assert _ints(r128.mul(a, b)) == [x * y % _M for x, y in zip(ia, ib, strict=True)]
        assert _ints(r128.add(a, b)) == [(x + y) % _M for x, y in zip(ia, ib, strict=True)]
        assert _ints(r128.sub(a, b)) == [(x - y) % _M for x, y in zip(ia, ib, strict=True)]
        r = a[0]
        ir = [v % 2**64 for v in r.tolist()]
        assert _ints(r128.mul64(r, b)) == [x * y % _M for x, y in zip(ir, ib, strict=True)]


def test_matmul_and_conv_match_python_ints() -> None:
    g = torch.Generator().manual_seed(2)
    for a, b in ((_rand((3, 512), g), _rand((512, 2), g)), (_edge((3, 512)), _edge((512, 2)))):
        got = _ints(r128.product(a, b, "matmul"))
        ia = [_ints(a[:, i]) for i in range(3)]
        ib = [_ints(b[:, :, j]) for j in range(2)]
        want = [sum(x * y for x, y in zip(ia[i], ib[j], strict=True)) % _M
                for i in range(3) for j in range(2)]  # fmt: skip
        assert got == want
    x, w = _rand((1, 2, 4, 4), g), _rand((3, 2, 3, 3), g)
    got = _ints(r128.product(x, w, "conv2d", padding=1))
    xp = torch.nn.functional.pad(x.reshape(2, 2, 4, 4), (1, 1, 1, 1))
    xi = [
        [[_ints(xp[:, c, i, j : j + 1])[0] for j in range(6)] for i in range(6)] for c in range(2)
    ]
    wi = [[[[_ints(w[:, o, c, i, j : j + 1])[0] for j in range(3)] for i in range(3)]
           for c in range(2)] for o in range(3)]  # fmt: skip
    want = [
        sum(xi[c][i + di][j + dj] * wi[o][c][di][dj]
            for c in range(2) for di in range(3) for dj in range(3)) % _M
        for o in range(3) for i in range(4) for j in range(4)
    ]  # fmt: skip
    assert got == want


def test_conv_with_a_window_over_512_is_split_over_channels_and_stays_exact() -> None:
    """64 input channels x 3x3 = 576 products per output: more than one float64 block
    holds exactly, so the input channels are summed in chunks (a Conv2d(64, 32, 3) layer)."""
    g = torch.Generator().manual_seed(3)
    x, w = _rand((1, 64, 3, 3), g), _rand((2, 64, 3, 3), g)
    got = _ints(r128.product(x, w, "conv2d"))  # no padding: one output per channel
    xi, wi = _ints(x), _ints(w)
    want = [sum(a * b for a, b in zip(xi, wi[o * 576 : (o + 1) * 576], strict=True)) % _M
            for o in range(2)]  # fmt: skip
    assert got == want
