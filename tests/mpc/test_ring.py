"""Fixed-point encoding, the PRG and exact ring products (veil.mpc.ring)."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.mpc import ring
from veil.mpc.ring import FixedPoint

SETTINGS = settings(max_examples=40, deadline=None, database=None)


@SETTINGS
@given(
    hnp.arrays(np.float64, st.integers(1, 20),
               elements=st.floats(-(2.0**40), 2.0**40, allow_nan=False, allow_infinity=False)),
    st.integers(0, 20),
)  # fmt: skip
def test_decode_is_exact_for_negative_and_large_values(values: np.ndarray, bits: int) -> None:
    fp = FixedPoint(bits)
    x = torch.from_numpy(values)
    enc = fp.encode(x)
    want = torch.round(x * 2**bits) / 2**bits  # the nearest representable value
    assert torch.equal(fp.decode(enc, torch.float64), want)


def test_decode_of_negative_values_is_not_off_by_one() -> None:
    # CrypTen 0.4.1 decodes some negatives 1.0 off; every negative here must round-trip.
    fp = FixedPoint(16)
    x = torch.tensor([-1.0, -0.5, -1e-5, -(2.0**30), -3.25, -1.0 / 65536])
    assert torch.equal(
        fp.decode(fp.encode(x), torch.float64), torch.round(x.double() * 65536) / 65536
    )


def test_encode_refuses_out_of_range_and_nan() -> None:
    with pytest.raises(ValueError, match="fixed-point range"):
        FixedPoint(16).encode(torch.tensor([2.0**47]))
    with pytest.raises(ValueError, match="nan"):
        FixedPoint(16).encode(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="frac_bits"):
        FixedPoint(40)


def test_ring_arithmetic_wraps_mod_2_64() -> None:
    big = torch.tensor([2**63 - 1])
    assert int(big + 1) == -(2**63)
    assert int(torch.tensor([2**62]) * 4) == 0


def test_prg_streams_are_independent_and_uniform() -> None:
    seed = bytes(range(32))
    a = ring.prg(seed, 5, 0, 20000)
    assert torch.equal(a, ring.prg(seed, 5, 0, 20000))
    assert not torch.equal(a, ring.prg(seed, 5, 1, 20000))
    assert not torch.equal(a, ring.prg(seed, 6, 0, 20000))
    bits = ((a.unsqueeze(1) >> torch.arange(64)) & 1).double().mean(0)
    assert bool(((bits - 0.5).abs() < 0.02).all())  # every bit position is fair


_W = 2**64


def _wrap(v: int) -> int:
    return (v + 2**63) % _W - 2**63


def _obj(t: torch.Tensor) -> np.ndarray:
    """Python integers (numpy object array): products and sums without any overflow."""
    return np.array(t.tolist(), dtype=object).reshape(tuple(t.shape))


def _ref_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b over the integers, reduced mod 2^64 at the end."""
    out = np.matmul(_obj(a), _obj(b))
    flat = [_wrap(int(v)) for v in np.asarray(out).reshape(-1)]
    return torch.tensor(flat, dtype=torch.int64).reshape(np.shape(out))


def _ref_conv2d(
    x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, groups: int
) -> torch.Tensor:
    """conv2d over the integers: every window summed in Python ints, reduced at the end."""
    xp = _obj(torch.nn.functional.pad(x, (padding,) * 4))  # zero padding is exact in int64
    n, c, h, wd = xp.shape
    o, cg, kh, kw = w.shape
    wo = _obj(w)
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = torch.empty((n, o, oh, ow), dtype=torch.int64)
    per = o // groups
    for b in range(n):
        for f in range(o):
            g = f // per
            for i in range(oh):
                for j in range(ow):
                    win = xp[b, g * cg : (g + 1) * cg, i * stride : i * stride + kh,
                             j * stride : j * stride + kw]  # fmt: skip
                    out[b, f, i, j] = _wrap(int((win * wo[f]).sum()))
    return out


def _full(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Uniform int64 words with the extremes (-2^63, 2^63 - 1, -1) planted: every product
    and every partial sum wraps many times."""
    t = torch.randint(-(2**63), 2**63 - 1, shape, generator=g)
    flat = t.view(-1)
    flat[: min(3, flat.numel())] = torch.tensor([-(2**63), 2**63 - 1, -1])[: min(3, flat.numel())]
    return t


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 70), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_native_and_limb_matmul_equal_python_integers(m: int, k: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = _full((m, k), g), _full((k, n), g)
    want = _ref_matmul(a, b)
    assert torch.equal(ring.matmul(a, b), want)
    assert torch.equal(ring.matmul_limbs(a, b), want)


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((3, 70_000), (70_000, 2)),  # a long inner dimension: no float64 / BLAS path in between
        ((2, 4097), (4097,)),  # matrix-vector (mv)
        ((4097,), (4097,)),  # dot
        ((3, 17, 40), (3, 40, 9)),  # bmm
        ((2, 1, 5, 33), (4, 33, 6)),  # broadcast batches
        ((64, 300), (300, 64)),  # a GEMM large enough for blocked kernels
    ],
)
def test_native_matmul_wraps_exactly_on_every_kernel(
    sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    g = torch.Generator().manual_seed(sum(sa) + sum(sb))
    a, b = _full(sa, g), _full(sb, g)
    want = _ref_matmul(a, b)
    assert torch.equal(ring.matmul(a, b), want)
    if a.dim() <= 2 or a.shape[:-2] == b.shape[:-2]:
        assert torch.equal(ring.matmul_limbs(a, b), want)


def test_native_matmul_wrap_around_by_hand() -> None:
    a = torch.tensor([[2**62, 2**62, 2**62, 2**62, 1]])
    b = torch.tensor([[1], [1], [1], [1], [5]])
    assert ring.matmul(a, b).item() == 5  # 4 * 2^62 = 2^64 vanishes
    big = torch.full((1, 3), -(2**63))
    assert ring.matmul(big, big.t()).item() == 0  # (2^63)^2 * 3 = 0 mod 2^64


def test_products_refuse_non_int64() -> None:
    with pytest.raises(TypeError, match="int64"):
        ring.matmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(TypeError, match="int64"):
        ring.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize(
    "stride,padding,groups", [(1, 0, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 0, 3), (3, 2, 6)]
)
def test_conv2d_equals_python_integer_convolution(stride: int, padding: int, groups: int) -> None:
    g = torch.Generator().manual_seed(stride * 100 + padding * 10 + groups)
    x = _full((2, 6, 9, 8), g)
    w = _full((6, 6 // groups, 3, 3), g)
    got = ring.conv2d(x, w, stride, padding, groups)
    assert torch.equal(got, _ref_conv2d(x, w, stride, padding, groups))
    if groups == 1:
        assert ring.conv2d_shapes(tuple(x.shape), tuple(w.shape), stride, padding) == tuple(
            got.shape
        )


def test_conv2d_with_a_long_window_stays_exact() -> None:
    """64 channels x 5 x 5 = 1600 products per output, every word full-width."""
    g = torch.Generator().manual_seed(7)
    x, w = _full((1, 64, 5, 5), g), _full((2, 64, 5, 5), g)
    assert torch.equal(ring.conv2d(x, w), _ref_conv2d(x, w, 1, 0, 1))


def test_conv2d_refuses_mismatched_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        ring.conv2d(
            torch.zeros(1, 4, 5, 5, dtype=torch.int64), torch.zeros(2, 3, 3, 3, dtype=torch.int64)
        )


def test_broadcast_shapes_follows_torch_and_refuses_what_torch_refuses() -> None:
    from veil.mpc.ring import broadcast_shapes

    for shapes in [((3, 1), (4,)), ((), (2, 3)), ((5, 1, 4), (1, 3, 1)), ((0,), (1,)), ((2,),)]:
        assert broadcast_shapes(*shapes) == torch.broadcast_shapes(*shapes)
    with pytest.raises(RuntimeError, match="broadcast"):
        broadcast_shapes((3,), (4,))


_DIMS = st.lists(st.integers(0, 3), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(_DIMS, _DIMS, st.booleans())
def test_matmul_shape_follows_torch_and_refuses_what_torch_refuses(xs, ys, align) -> None:
    """ring.matmul_shape against torch's own meta kernel, on shapes that multiply (inner
    dimensions made equal) and on shapes drawn freely (most of them do not)."""
    from veil.mpc.ring import matmul_shape

    if align and len(ys) >= 1:
        ys = [*ys[:-2], xs[-1], ys[-1]] if len(ys) >= 2 else [xs[-1]]
    try:
        want = tuple(
            torch.matmul(torch.empty(xs, device="meta"), torch.empty(ys, device="meta")).shape
        )
    except RuntimeError:
        with pytest.raises(RuntimeError):
            matmul_shape(xs, ys)
        return
    assert matmul_shape(xs, ys) == want


def test_matmul_shape_of_the_one_dimensional_cases() -> None:
    from veil.mpc.ring import matmul_shape

    assert matmul_shape((4,), (4,)) == ()
    assert matmul_shape((4,), (4, 6)) == (6,)
    assert matmul_shape((3, 4), (4,)) == (3,)
    assert matmul_shape((4,), (2, 4, 6)) == (2, 6)
    assert matmul_shape((2, 3, 4), (4,)) == (2, 3)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        matmul_shape((3, 4), (5, 6))
    with pytest.raises(RuntimeError, match="at least 1-d"):
        matmul_shape((), (4,))


def test_the_first_product_of_a_session_does_not_import_sympy() -> None:
    """torch.broadcast_shapes imports sympy on its first call (0.3 s, more on a busy
    machine): the first product of a user's session does not pay for it."""
    import subprocess
    import sys

    code = (
        "import sys, torch, veil\n"
        "a, b, c = (veil.VirtualWorker(n) for n in 'abc')\n"
        "x = torch.randn(3, 1).share(a, b, crypto_provider=c)\n"
        "y = torch.randn(4).share(a, b, crypto_provider=c)\n"
        "z = ((x * y).relu() @ torch.ones(4, 2)).reconstruct()\n"
        "assert z.shape == (3, 2), z.shape\n"
        "w = torch.randn(4, 2).share(a, b, crypto_provider=c)\n"
        "assert ((x * y) @ w).reconstruct().shape == (3, 2)\n"  # shared x shared: 0.4 s once
        "net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten())\n"
        "snet = veil.mpc.encrypt_model(net, [a, b], c, session=x.session)\n"
        "assert snet(torch.randn(1, 1, 5, 5).share(session=x.session)).reconstruct().shape == (1, 18)\n"
        "assert 'sympy' not in sys.modules, 'sympy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
