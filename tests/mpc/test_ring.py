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


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 70), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_limb_matmul_equals_int64_matmul(m: int, k: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-(2**63), 2**63 - 1, (m, k), generator=g)
    b = torch.randint(-(2**63), 2**63 - 1, (k, n), generator=g)
    assert torch.equal(ring.matmul(a, b), a @ b)


def test_limb_matmul_long_inner_dimension_and_batches() -> None:
    a = torch.randint(-(2**63), 2**63 - 1, (3, 5000))
    b = torch.randint(-(2**63), 2**63 - 1, (5000, 4))
    assert torch.equal(ring.matmul(a, b), a @ b)
    a3 = torch.randint(-(2**63), 2**63 - 1, (2, 40, 30))
    b3 = torch.randint(-(2**63), 2**63 - 1, (2, 30, 20))
    assert torch.equal(ring.matmul(a3, b3), a3 @ b3)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 2)])
def test_conv2d_equals_torch_int64_conv(stride: int, padding: int) -> None:
    x = torch.randint(-(2**63), 2**63 - 1, (2, 3, 9, 8))
    w = torch.randint(-(2**63), 2**63 - 1, (4, 3, 3, 3))
    want = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)
    assert torch.equal(ring.conv2d(x, w, stride, padding), want)
    assert ring.conv2d_shapes(tuple(x.shape), tuple(w.shape), stride, padding) == tuple(want.shape)
