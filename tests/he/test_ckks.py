"""CKKS tensors against plaintext torch: shapes, ops, fast matvec, parameter checks, errors."""

from __future__ import annotations

import pickle

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tenseal", reason="CKKS needs TenSEAL: pip install 'veil[he]'")

from veil.he import ckks  # noqa: E402
from veil.he.ckks import DepthExceeded  # noqa: E402

SETTINGS = settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TOL = 1e-3
values = st.floats(-10, 10, allow_nan=False, width=64)


def close(enc: ckks.CKKSTensor, ref: torch.Tensor, tol: float = TOL) -> bool:
    out = enc.decrypt()
    return out.shape == ref.shape and torch.allclose(out, ref.double(), atol=tol, rtol=tol)


@SETTINGS
@given(
    a=hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=5), elements=values),
    data=st.data(),
)
def test_elementwise_ops_match_torch(ckks_ctx, a, data) -> None:
    b = torch.from_numpy(data.draw(hnp.arrays(np.float64, a.shape, elements=values)))
    row = torch.from_numpy(data.draw(hnp.arrays(np.float64, a.shape[-1:], elements=values)))
    ta = torch.from_numpy(a)
    ea, eb = ckks.encrypt(ta, ckks_ctx), ckks.encrypt(b, ckks_ctx)
    assert close(ea + eb, ta + b)
    assert close(ea - eb, ta - b)
    assert close(-ea + 2.5, -ta + 2.5)
    assert close(ea + row, ta + row)  # broadcast plaintext
    assert close(ea * eb, ta * b, 1e-2)
    assert close(ea * row, ta * row, 1e-2)
    assert close(ea.square(), ta**2, 1e-2)
    assert close(3.0 - ea, 3.0 - ta)
    assert close(ea.sum(), ta.sum(), 1e-2)


def test_shape_is_preserved_through_views(ckks_ctx) -> None:
    x = torch.arange(24.0).reshape(2, 3, 4)
    e = ckks.encrypt(x, ckks_ctx)
    assert close(e.transpose(0, 2) * 2, x.transpose(0, 2) * 2)
    assert close(e.reshape(6, 4)[1:3], x.reshape(6, 4)[1:3])
    assert close(e.sum(1), x.sum(1), 1e-2)
    assert e.transpose(0, 2).shape == (4, 3, 2)


def test_more_values_than_slots_span_ciphertexts(ckks_ctx) -> None:
    x = torch.linspace(-1, 1, ckks_ctx.slots + 10)
    e = ckks.encrypt(x, ckks_ctx)
    assert e.ciphertexts == 2
    assert close(e * x + 1, x * x + 1)
    assert close(e.sum(), x.sum(), 1e-2)


@SETTINGS
@given(k=st.integers(1, 40), m=st.integers(1, 12), data=st.data())
def test_matmul_with_plain_matrix(ckks_ctx, k, m, data) -> None:
    x = torch.from_numpy(data.draw(hnp.arrays(np.float64, (k,), elements=values)))
    w = torch.from_numpy(data.draw(hnp.arrays(np.float64, (k, m), elements=values)))
    fast = ckks.encrypt(x, ckks_ctx, replicate=True)
    assert close(fast @ w, x @ w, 1e-2)
    assert close(ckks.encrypt(x, ckks_ctx) @ w, x @ w, 1e-2)
    assert close(w.T @ fast, w.T @ x, 1e-2)
    assert close(fast.dot(w[:, 0]), x @ w[:, 0], 1e-2)


def test_batched_matmul_and_bias(ckks_ctx) -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    w, b = torch.randn(5, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    assert close(ckks.encrypt(x, ckks_ctx) @ w + b, x @ w + b, 1e-2)


def test_fast_matvec_784_by_10_matches(ckks_ctx) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(784, generator=g, dtype=torch.float64)
    w = torch.randn(784, 10, generator=g, dtype=torch.float64) * 0.05
    out = ckks.encrypt(x, ckks_ctx, replicate=True) @ w
    assert out.ciphertexts == 3 and out.shape == (10,)
    assert close(out, x @ w)


def test_polynomials_and_sigmoid(ckks_ctx) -> None:
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    e = ckks.encrypt(x, ckks_ctx)
    assert close(e.polyval([1.0, -2.0, 0.5]), 1 - 2 * x + 0.5 * x**2, 1e-2)
    approx = ckks.sigmoid(ckks.encrypt(x, ckks_ctx), degree=3, interval=(-5, 5))  # depth 2
    assert torch.allclose(approx.decrypt(), torch.sigmoid(x), atol=0.061)
    coeffs = ckks.sigmoid_coefficients(3, (-5, 5))
    ref = sum(c * x**i for i, c in enumerate(coeffs))
    assert torch.allclose(approx.decrypt(), ref, atol=1e-3)


def test_depth_exceeded_says_what_to_change(ckks_ctx) -> None:
    e = ckks.encrypt(torch.ones(3), ckks_ctx)
    with pytest.raises(DepthExceeded, match="depth=3"):
        e.square().square().square()
    with pytest.raises(DepthExceeded, match="depth=3"):
        e.polyval([0, 0, 0, 0, 1])  # degree 4: three levels
    with pytest.raises(DepthExceeded, match="depth=3"):
        e.square().polyval([0, 1, 1])


def test_security_check_refuses_weak_parameters() -> None:
    with pytest.raises(ValueError, match="at most 218 bits.*poly_modulus_degree=16384"):
        ckks.context(8192, [60, 40, 40, 40, 60])
    with pytest.raises(ValueError, match="at most 109 bits"):
        ckks.context(4096, [60, 40, 60], galois_keys=False)
    assert ckks.context(4096, [40, 20, 40], scale_bits=20, galois_keys=False).depth == 1
    with pytest.raises(ValueError, match="middle primes"):
        ckks.context(8192, [60, 30, 60], galois_keys=False)
    with pytest.raises(ValueError, match="must be one of"):
        ckks.context(5000)
    with pytest.raises(ValueError, match="scale_bits must be in"):
        ckks.context(8192, [60, 60], scale_bits=10, galois_keys=False)
    for n, max_q in ckks.MAX_LOG_Q_128.items():  # exactly at the bound passes, one bit over fails
        at = [max_q // 2, max_q - max_q // 2]
        over = [at[0], at[1] + 1]
        assert not any("at most" in p for p in ckks.check_parameters(n, at, 20)), n
        assert any("at most" in p for p in ckks.check_parameters(n, over, 20)), n


def test_mismatched_contexts_and_keys_give_clear_errors(ckks_ctx, other_ckks_ctx) -> None:
    x = torch.ones(3)
    a, b = ckks.encrypt(x, ckks_ctx), ckks.encrypt(x, other_ckks_ctx)
    with pytest.raises(ValueError, match="different CKKS contexts"):
        a + b
    with pytest.raises(ValueError, match="decrypt with the context that encrypted it"):
        a.decrypt(other_ckks_ctx)
    public = ckks_ctx.public()
    assert public.fingerprint == ckks_ctx.fingerprint and not public.is_private
    with pytest.raises(ValueError, match="no secret key"):
        ckks.encrypt(x, public).decrypt()
    with pytest.raises(ValueError, match="same shape and layout"):
        a + ckks.encrypt(torch.ones(4), ckks_ctx)
    b.sum()  # the key owner rotates locally with keys made on demand
    no_keys = ckks.encrypt(x, other_ckks_ctx.public())
    with pytest.raises(ValueError, match=r"Galois keys allow none.*galois_keys=True"):
        no_keys.sum()


def test_only_the_galois_keys_needed_travel(ckks_ctx) -> None:
    full = len(ckks_ctx.serialize())
    bare = len(ckks_ctx.serialize(galois_keys=False))
    small = ckks.context(galois_keys=1024)
    assert ckks_ctx.public().rotation_span == ckks_ctx.slots
    public_small = small.public()
    assert public_small.rotation_span == 1024 and not public_small.is_private
    assert bare < len(small.serialize()) < full
    x = torch.rand(784, dtype=torch.float64)
    w = torch.rand(784, 10, dtype=torch.float64)
    fast = ckks.encrypt(x, public_small, replicate=True) @ w  # blocks of 1024: enough keys
    fast.context = small  # decrypt with the owner's context (same keys)
    assert torch.allclose(fast.decrypt(), x @ w, atol=1e-3)
    with pytest.raises(ValueError, match="rotates over 4096 slots.*at most 1024"):
        ckks.encrypt(torch.ones(4000), public_small).sum()


def test_contexts_never_serialize_their_secret_key(ckks_ctx) -> None:
    data = ckks_ctx.serialize()
    restored = ckks.CKKSContext.from_bytes(data)
    assert not restored.is_private and restored.fingerprint == ckks_ctx.fingerprint
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(ckks_ctx)
    private_bytes = ckks_ctx.raw.serialize(save_secret_key=True)
    with pytest.raises(ValueError, match="secret key"):
        ckks.CKKSContext.from_bytes(private_bytes)


def test_views_of_a_replicated_vector_keep_the_fast_matmul_right(ckks_ctx) -> None:
    x = torch.arange(10.0, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64)
    fast = ckks.encrypt(x, ckks_ctx, replicate=True)
    assert close(fast[2:5] @ w, x[2:5] @ w, 1e-2)
    assert close(fast[[7, 1, 4]] @ w, x[[7, 1, 4]] @ w, 1e-2)
    assert close(fast[[1, 1, 2]] @ w, x[[1, 1, 2]] @ w, 1e-2)
    assert close(fast[[1, 1, 2]] * 3.0, x[[1, 1, 2]] * 3.0, 1e-2)
    assert close(fast[[1, 1, 2]].sum(), x[[1, 1, 2]].sum(), 1e-2)
    assert close(ckks.encrypt(x, ckks_ctx)[[3, 3]].sum(), x[[3, 3]].sum(), 1e-2)
    with pytest.raises(ValueError, match="several times"):
        fast[[1, 1, 2]] * torch.tensor([1.0, 2.0, 3.0])
    assert close((fast * 2 + 1)[::3][:3] @ w, (x * 2 + 1)[::3][:3] @ w, 1e-2)


# ------------------------------------------------------------- ranges (issue 10, item 4)


def test_values_hold_up_to_max_abs_at_every_level(ckks_ctx) -> None:
    """Item 4: after the last rescale about 20 bits hold the integer part (1e6 decrypted as
    -48,575). The range of each level is ``max_abs``, documented and tested here; numbers
    and plaintexts beyond it are refused, since CKKS cannot detect a value that wrapped."""
    assert [ckks_ctx.max_abs(level) for level in range(3)] == [2.0**99, 2.0**59, 2.0**19]
    for level in range(3):
        v = 0.9 * ckks_ctx.max_abs(level)
        x = ckks.encrypt(torch.tensor([v, -v, 1.0]) / 2**level, ckks_ctx)
        for _ in range(level):
            x = x * 2.0
        assert x.level == level and x.max_abs == ckks_ctx.max_abs(level)
        err = (x.decrypt() - torch.tensor([v, -v, 1.0], dtype=torch.float64)).abs().max()
        assert err < v * 1e-6  # CKKS error is relative to the largest value of the vector
    last = ckks.encrypt(torch.ones(2), ckks_ctx) * 1.0 * 1.0
    with pytest.raises(ValueError, match="level 2 holds"):
        last + 1e6  # a public number: refused on public facts
    with pytest.raises(ValueError, match="level 2 holds"):
        last + torch.tensor([1.0, 1e6])  # a plaintext's values: refused when it runs
    with pytest.raises(ValueError, match="not finite"):
        ckks.encrypt(torch.ones(2), ckks_ctx) * torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match="fresh CKKS ciphertext holds"):
        ckks.encrypt(torch.tensor([1e30]), ckks_ctx)


def test_a_difference_that_is_exactly_zero_is_a_ciphertext_of_zeros(ckks_ctx) -> None:
    x = ckks.encrypt(torch.tensor([1.0, 2.0]), ckks_ctx)
    z = x - x  # SEAL refuses such a "transparent" ciphertext; veil encrypts zeros instead
    assert z.level == 0 and torch.allclose(
        z.decrypt(), torch.zeros(2, dtype=torch.float64), atol=1e-6
    )
    assert torch.allclose((x + (-x) + 3.0).decrypt(), torch.full((2,), 3.0, dtype=torch.float64),
                          atol=1e-3)  # fmt: skip
