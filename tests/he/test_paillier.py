"""Paillier tensors against plaintext torch: encoding, packing bounds, errors."""

from __future__ import annotations

import pickle

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.he import paillier
from veil.he.paillier import Packing

SETTINGS = settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TOL = 1e-5
values = st.floats(-1000, 1000, allow_nan=False, allow_infinity=False, width=64)


def arrays(min_dims: int = 1, max_dims: int = 2) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=4)
    return hnp.arrays(np.float64, shapes, elements=values)


@SETTINGS
@given(a=arrays(), data=st.data())
def test_unpacked_arithmetic_matches_torch(paillier_keys, a, data) -> None:
    pk, sk = paillier_keys
    b = data.draw(hnp.arrays(np.float64, a.shape, elements=values))
    w = data.draw(hnp.arrays(np.float64, a.shape, elements=st.floats(-8, 8, width=64)))
    ta, tb, tw = (torch.from_numpy(v) for v in (a, b, w))
    ea, eb = paillier.encrypt(ta, pk), paillier.encrypt(tb, pk)
    assert torch.allclose((ea + eb).decrypt(sk), ta + tb, atol=TOL)
    assert torch.allclose((ea - eb).decrypt(sk), ta - tb, atol=TOL)
    assert torch.allclose((-ea).decrypt(sk), -ta, atol=TOL)
    assert torch.allclose((ea + tw).decrypt(sk), ta + tw, atol=TOL)
    assert torch.allclose((3.0 - ea).decrypt(sk), 3.0 - ta, atol=TOL)
    assert torch.allclose((ea * tw).decrypt(sk), ta * tw, atol=1e-3)
    assert torch.allclose(ea.sum().decrypt(sk), ta.sum(), atol=1e-3)
    assert torch.allclose(ea.sum(0).decrypt(sk), ta.sum(0), atol=1e-3)
    assert (ea * tw).shape == (ta * tw).shape


@SETTINGS
@given(n=st.integers(1, 5), k=st.integers(1, 5), m=st.integers(1, 4), data=st.data())
def test_matmul_with_plain_on_either_side(paillier_keys, n, k, m, data) -> None:
    pk, sk = paillier_keys
    x = torch.from_numpy(data.draw(hnp.arrays(np.float64, (n, k), elements=values)))
    w = torch.from_numpy(data.draw(hnp.arrays(np.float64, (k, m), elements=values)))
    v = torch.from_numpy(data.draw(hnp.arrays(np.float64, (n,), elements=values)))
    ex = paillier.encrypt(x, pk)
    assert torch.allclose((ex @ w).decrypt(sk), x @ w, rtol=1e-6, atol=1e-2)
    assert torch.allclose((v @ ex).decrypt(sk), v @ x, rtol=1e-6, atol=1e-2)
    assert torch.allclose((ex[0] @ w).decrypt(sk), x[0] @ w, rtol=1e-6, atol=1e-2)
    assert (ex @ w).shape == (n, m)
    assert torch.allclose(ex.T.decrypt(sk), x.T, atol=TOL)


@SETTINGS
@given(a=arrays(1, 3), data=st.data())
def test_packed_linear_ops_match_torch(paillier_keys, a, data) -> None:
    pk, sk = paillier_keys
    b = torch.from_numpy(data.draw(hnp.arrays(np.float64, a.shape, elements=values)))
    ta = torch.from_numpy(a)
    s = data.draw(st.integers(-32, 32)) / 8  # a short binary fraction: exact in a slot
    ea, eb = paillier.encrypt(ta, pk, pack=True), paillier.encrypt(b, pk, pack=True)
    assert ea.ciphertexts == -(-ta.numel() // Packing().slots(pk.bits))
    assert torch.allclose((ea + eb).decrypt(sk), ta + b, atol=TOL)
    assert torch.allclose((ea - eb).decrypt(sk), ta - b, atol=TOL)
    assert torch.allclose((-ea - eb).decrypt(sk), -ta - b, atol=TOL)
    assert torch.allclose((ea + b).decrypt(sk), ta + b, atol=TOL)
    assert torch.allclose((ea * s).decrypt(sk), ta * s, atol=TOL)
    assert torch.allclose((ea * 3).decrypt(sk), ta * 3, atol=TOL)


def test_packing_with_odd_slot_width_and_precision(paillier_keys) -> None:
    pk, sk = paillier_keys
    x = torch.linspace(-50, 50, 37)
    e = paillier.encrypt(x, pk, pack=Packing(slot_bits=45, value_bits=30), precision=16)
    assert e.ciphertexts == -(-37 // (511 // 45))
    assert torch.allclose((e + e - x).decrypt(sk), x.double(), atol=1e-4)


def test_packed_slot_overflow_is_refused_at_the_bound(paillier_keys) -> None:
    pk, sk = paillier_keys
    packing = Packing(slot_bits=20, value_bits=16)  # room for 2**3 = 8 fresh additions
    assert packing.max_additions() == 8
    x = torch.tensor([-1.0, 1.0, 0.5])
    e = paillier.encrypt(x, pk, pack=packing, precision=8)
    acc = e
    for _ in range(packing.max_additions() - 1):
        acc = acc + e
    assert torch.allclose(acc.decrypt(sk), 8 * x.double())
    with pytest.raises(OverflowError, match="at most 8 fresh"):
        acc + e
    with pytest.raises(OverflowError, match="does not fit a packed slot"):
        paillier.encrypt(torch.tensor([300.0]), pk, pack=packing, precision=8)


def test_packed_extreme_values_do_not_borrow_between_slots(paillier_keys) -> None:
    pk, sk = paillier_keys
    packing = Packing(slot_bits=24, value_bits=16)
    lim = (2**16 - 1) / 2**8
    x = torch.tensor([lim, -lim, -lim, lim, 0.0] * 5, dtype=torch.float64)
    e = paillier.encrypt(x, pk, pack=packing, precision=8)
    total = e
    for _ in range(2 ** (24 - 16 - 1) - 1):
        total = total - e if _ % 2 else total + e
    expect = x * (1 + sum(-1 if i % 2 else 1 for i in range(2 ** (24 - 16 - 1) - 1)))
    assert torch.equal(total.decrypt(sk), expect)


def test_packed_refuses_what_it_cannot_do(paillier_keys) -> None:
    pk, _ = paillier_keys
    e = paillier.encrypt(torch.ones(4), pk, pack=True)
    with pytest.raises(ValueError, match="pack=False"):
        e.sum()
    with pytest.raises(ValueError, match="pack=False"):
        e * torch.ones(4)
    with pytest.raises(ValueError, match="packed and an unpacked"):
        e + paillier.encrypt(torch.ones(4), pk)
    with pytest.raises(TypeError, match="CKKS"):
        paillier.encrypt(torch.ones(2), pk) * paillier.encrypt(torch.ones(2), pk)


def test_wrong_key_and_tampering_give_clear_errors(paillier_keys, other_paillier_keys) -> None:
    pk, sk = paillier_keys
    _, other_sk = other_paillier_keys
    e = paillier.encrypt(torch.tensor([1.0, 2.0]), pk)
    with pytest.raises(ValueError, match="matching private key"):
        e.decrypt(other_sk)
    with pytest.raises(ValueError, match="different keys"):
        e + paillier.encrypt(torch.tensor([1.0, 2.0]), other_paillier_keys[0])
    bad = e._like(e._data.copy())
    bad._data[1] = bad._data[1] * 7 % pk.nsq
    with pytest.raises(ValueError, match="tampered"):
        bad.decrypt(sk)
    packed = paillier.encrypt(torch.arange(10.0), pk, pack=True)
    bad_packed = packed._like(packed._data * 5 % pk.nsq)
    with pytest.raises(ValueError, match="tampered"):
        bad_packed.decrypt(sk)


def test_private_key_refuses_to_be_serialized(paillier_keys) -> None:
    _, sk = paillier_keys
    with pytest.raises(TypeError, match="never leaves"):
        pickle.dumps(sk)
    assert "p=" not in repr(sk) and str(int(sk._p)) not in repr(sk)


def test_keygen_refuses_weak_keys() -> None:
    with pytest.raises(ValueError, match="bits>=2048"):
        paillier.keygen(1024)
    with pytest.raises(ValueError, match="even number"):
        paillier.keygen(100, force=True)


def test_parallel_and_serial_encryption_agree(paillier_keys) -> None:
    pk, sk = paillier_keys
    x = torch.randn(300, dtype=torch.float64)
    one = paillier.encrypt(x, pk, workers=1).decrypt(sk, workers=1)
    two = paillier.encrypt(x, pk, workers=2).decrypt(sk, workers=2)
    assert torch.allclose(one, x, atol=1e-6) and torch.equal(one, two)


def test_rerandomize_changes_ciphertexts_not_values(paillier_keys) -> None:
    pk, sk = paillier_keys
    e = paillier.encrypt(torch.tensor([1.0, -2.0]), pk) * torch.tensor([3.0, 4.0])
    r = e.rerandomize()
    assert not any(a == b for a, b in zip(e._data, r._data))
    assert torch.equal(r.decrypt(sk), e.decrypt(sk))


def test_tensor_encrypt_entry_point(paillier_keys, ckks_ctx) -> None:
    pk, sk = paillier_keys
    x = torch.tensor([1.0, -2.0])
    assert torch.equal(x.encrypt(pk).decrypt(sk), x.double())
    assert x.encrypt(pk, pack=True).packed
    assert torch.allclose(x.encrypt(ckks_ctx).decrypt(), x.double(), atol=1e-4)
    with pytest.raises(TypeError, match="PublicKey or a ckks.CKKSContext"):
        x.encrypt("key")


# ---------------------------------------------- public metadata and precision (issue 10)


def test_metadata_comes_from_dtypes_and_numbers_never_from_tensor_values(paillier_keys) -> None:
    """Item 3: a fresh encryption's bound was the exact maximum of the data and a product's
    exponent showed whether a plaintext was all integers; both now follow public facts."""
    pk, _ = paillier_keys
    a, b = (
        paillier.encrypt(torch.tensor([1.0, 2.0]), pk),
        paillier.encrypt(torch.tensor([-7e5, 0.3]), pk),
    )
    assert (a.exponent, a.bound) == (b.exponent, b.bound) == (24, 2**63)
    meta = {
        (p.exponent, p.bound) for p in (a * torch.tensor([3.0, 4.0]), a * torch.tensor([0.5, 9e9]))
    }
    assert meta == {
        (48, 2**126)
    }  # float tensors: 24 fractional bits, range 2**39, whatever the values
    ints = a * torch.tensor([3, 4], dtype=torch.int16)
    assert (ints.exponent, ints.bound) == (24, 2**63 * 2**15)  # the dtype's range
    assert (a * 0.5).exponent == 25 and (a * 3).exponent == 24  # numbers are public: exact


@pytest.mark.parametrize("k", [3, 1000, 100_000])
def test_a_packed_sum_divided_by_k_is_accurate_or_refused(paillier_keys, k) -> None:
    """Item 4: ``packed_sum * (1/k)`` lost fractional bits as k grew (2.3% off at 1,000, all
    zeros at 100,000). A number multiplier keeps 24 significant bits (relative error below
    2**-24) or the product is refused, before it runs, for lack of slot room."""
    pk, sk = paillier_keys
    x = torch.tensor([1.0, -2.5, 1000.125, 0.0])
    total = paillier.encrypt(x, pk, pack=True) * k  # the metadata of a sum of k uploads
    with pytest.raises(OverflowError, match="divide or scale after decrypting"):
        total.plan("mul", 1 / k)
    with pytest.raises(OverflowError, match="Packing\\(slot_bits="):
        total * (1 / k)
    assert torch.equal((total * 0.25).decrypt(sk), x.double() * k / 4)  # short binary fraction
    wide = paillier.encrypt(x, pk, pack=Packing(slot_bits=128, value_bits=40)) * k
    out = (wide * (1 / k)).decrypt(sk)
    assert torch.allclose(out, x.double(), rtol=2**-24, atol=0)


def test_many_fractional_products_decrypt_exactly_then_refuse() -> None:
    """Item 4: decryption overflowed after ~44 fractional products though the value was
    small (the fixed-point integer passed float range). It now divides exactly; and when
    the public bound would pass n/2, the product is refused before it runs."""
    pk, sk = paillier.keygen(1536, force=True)
    x = paillier.encrypt(torch.tensor([1.5, -0.75]), pk)
    ref = torch.tensor([1.5, -0.75], dtype=torch.float64)
    steps = 0
    while True:
        s = 0.9 if steps % 2 else 1.1
        try:
            x.plan("mul", s)
        except OverflowError:
            with pytest.raises(OverflowError, match="past the 1536-bit modulus"):
                x * s
            break
        x, ref, steps = x * s, ref * s, steps + 1
    assert steps >= 44 and x.exponent > 1024
    assert torch.allclose(x.decrypt(sk), ref, rtol=steps * 2**-24, atol=0)


def test_the_first_broadcasting_ops_do_not_import_sympy() -> None:
    """torch.broadcast_shapes imports sympy on its first call (0.19 s measured for a user's
    first Paillier ops): encrypted tensors check broadcasting with numpy's (same) rules."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from veil import he\n"
        "pk, sk = he.paillier.keygen(512, force=True)\n"
        "x = he.encrypt(torch.tensor([[1.0, 2.0]]), pk)\n"
        "y = (x + torch.tensor([3.0, 4.0])) * torch.tensor([[2.0], [1.0]])\n"
        "assert y.decrypt(sk).tolist() == [[8.0, 12.0], [4.0, 6.0]], y.decrypt(sk)\n"
        "assert 'sympy' not in sys.modules, 'sympy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
