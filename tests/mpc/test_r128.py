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


def test_conv_with_a_window_over_1024_is_split_over_channels_and_stays_exact() -> None:
    """128 input channels x 3x3 = 1152 products per output: more than one int64 limb product
    sums exactly, so the input channels are summed in chunks (a Conv2d(128, 2, 3) layer)."""
    g = torch.Generator().manual_seed(3)
    x, w = _rand((1, 128, 3, 3), g), _rand((2, 128, 3, 3), g)
    got = _ints(r128.product(x, w, "conv2d"))  # no padding: one output per channel
    xi, wi = _ints(x), _ints(w)
    want = [sum(a * b for a, b in zip(xi, wi[o * 1152 : (o + 1) * 1152], strict=True)) % _M
            for o in range(2)]  # fmt: skip
    assert got == want


def _ref_matmul(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    m, n = a.shape[1], b.shape[2]
    ia = [_ints(a[:, i]) for i in range(m)]
    ib = [_ints(b[:, :, j]) for j in range(n)]
    return [sum(x * y for x, y in zip(ia[i], ib[j], strict=True)) % _M
            for i in range(m) for j in range(n)]  # fmt: skip


def test_matmul_at_the_exact_limit_and_beyond_it() -> None:
    """All-ones words make every limb product its largest: at an inner dimension of 1024 the
    unsigned limb sums reach 1024 (2^22 - 1)(2^32 - 1), just under 2^64; 3000 is split."""
    ones = torch.full((2, 2, 1024), -1, dtype=torch.int64)
    assert (
        _ints(r128.product(ones, ones.transpose(1, 2).contiguous(), "matmul"))
        == [1024 * (_M - 1) ** 2 % _M] * 4
    )
    g = torch.Generator().manual_seed(4)
    a, b = _rand((2, 3000), g), _rand((3000, 3), g)
    a[:, 0, :7] = -1  # carries in both words
    assert _ints(r128.product(a, b, "matmul")) == _ref_matmul(a, b)


def test_batched_matmul_and_strided_conv_match_python_ints() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = _rand((3, 4, 9), g), _rand((3, 9, 2), g)
    got = _ints(r128.product(a, b, "matmul"))
    want = [v for i in range(3) for v in _ref_matmul(a[:, i], b[:, i])]
    assert got == want
    x, w = _rand((1, 1, 5, 5), g), _rand((1, 1, 3, 3), g)
    got = _ints(r128.product(x, w, "conv2d", stride=2, padding=1))
    xp = torch.nn.functional.pad(x.reshape(2, 5, 5), (1, 1, 1, 1))
    xi = [[_ints(xp[:, i, j : j + 1])[0] for j in range(7)] for i in range(7)]
    wi = [[_ints(w[:, 0, 0, i, j : j + 1])[0] for j in range(3)] for i in range(3)]
    want = [sum(xi[2 * i + di][2 * j + dj] * wi[di][dj] for di in range(3) for dj in range(3)) % _M
            for i in range(3) for j in range(3)]  # fmt: skip
    assert got == want
