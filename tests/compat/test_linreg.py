"""PySyft 0.2's ``EncryptedLinearRegression`` (veil.mpc.linreg) against statsmodels OLS.

The reference is statsmodels' OLS on the same rows gathered in the clear: coefficients,
standard errors, t-based p-values and the residual standard deviation. The MPC fit uses 20
fractional bits (PySyft's ``precision_fractional=6``), so it must agree to about 1e-4 on
values of order 1; the tolerances below (1e-3) leave a margin of ten.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
import torch

import veil
from veil.errors import PermissionDenied, WorkerMismatch
from veil.mpc import EncryptedLinearRegression
from veil.node import Node


def _data(
    n: int, coef: list[float], intercept: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(coef), generator=g, dtype=torch.float64)
    x[:, 0] = x[:, 0] * 2.0 + 1.5  # a feature with a mean and a larger variance
    y = x @ torch.tensor(coef, dtype=torch.float64) + intercept
    return x, y + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)


def _blocks(x: torch.Tensor, y: torch.Tensor, workers: list[Any], cuts: list[int]) -> Any:
    edges = [0, *cuts, len(x)]
    xs = [x[a:b].send(w) for w, a, b in zip(workers, edges[:-1], edges[1:], strict=True)]
    ys = [y[a:b].send(w) for w, a, b in zip(workers, edges[:-1], edges[1:], strict=True)]
    return xs, ys


def _workers(*names: str) -> list[Any]:
    return [veil.VirtualWorker(n) for n in names]


def test_three_owners_with_intercept_match_statsmodels() -> None:
    alice, bob, dave, hbc, carol = _workers("alice", "bob", "dave", "hbc", "carol")
    # the last coefficient is 0, so its p-value is far from 0 and is a real comparison
    x, y = _data(90, [1.2, -0.8, 0.0], intercept=0.6, seed=3)
    xs, ys = _blocks(x, y, [alice, bob, dave], [25, 61])
    lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc).fit(xs, ys)
    ref = sm.OLS(y.numpy(), sm.add_constant(x.numpy())).fit()
    np.testing.assert_allclose(lr.coef.numpy(), ref.params[1:], atol=1e-3)
    np.testing.assert_allclose(float(lr.intercept), ref.params[0], atol=1e-3)
    np.testing.assert_allclose(lr.se_coef.numpy(), ref.bse[1:], rtol=1e-3)
    np.testing.assert_allclose(float(lr.se_intercept), ref.bse[0], rtol=1e-3)
    np.testing.assert_allclose(lr.pvalue_coef, ref.pvalues[1:], atol=1e-3)
    assert ref.pvalues[3] > 0.05  # the zero coefficient: a p-value that is not ~0
    np.testing.assert_allclose(lr.sigma, np.sqrt(ref.scale), rtol=1e-3)
    assert (lr.total_size, lr.dof) == (90, 86)


def test_two_blocks_on_one_owner_and_no_intercept_match_statsmodels() -> None:
    alice, bob, hbc, carol = _workers("alice", "bob", "hbc", "carol")
    x, y = _data(40, [0.7, 2.0], intercept=0.0, seed=5)
    xs, ys = _blocks(x, y, [alice, bob, alice], [10, 30])  # alice holds two blocks
    lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc, fit_intercept=False).fit(
        xs, ys
    )
    ref = sm.OLS(y.numpy(), x.numpy()).fit()
    np.testing.assert_allclose(lr.coef.numpy(), ref.params, atol=1e-3)
    np.testing.assert_allclose(lr.se_coef.numpy(), ref.bse, rtol=1e-3)
    np.testing.assert_allclose(lr.tvalue_coef, ref.tvalues, rtol=2e-3)
    assert lr.intercept is None and lr.pvalue_intercept is None and lr.dof == 38


@pytest.mark.parametrize(("security", "hbc"), [("semi-honest", "bob"), ("malicious", None)])
def test_the_hbc_worker_may_be_an_owner_or_none_and_y_may_be_a_column(
    security: str, hbc: str | None
) -> None:
    alice, bob, carol = _workers("alice", "bob", "carol")
    x, y = _data(30, [1.0], intercept=-2.0, seed=7)
    xs, ys = _blocks(x, y.reshape(-1, 1), [alice, bob], [12])
    helper = bob if hbc else None
    lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=helper, security=security)
    lr.fit(xs, ys)
    ref = sm.OLS(y.numpy(), sm.add_constant(x.numpy())).fit()
    np.testing.assert_allclose([float(lr.intercept), *lr.coef.tolist()], ref.params, atol=1e-3)


def test_predict_locally_and_on_the_node_and_summarize(capsys: pytest.CaptureFixture[str]) -> None:
    alice, bob, hbc, carol = _workers("alice", "bob", "hbc", "carol")
    x, y = _data(50, [1.5, -0.5], intercept=1.0, seed=11)
    xs, ys = _blocks(x, y, [alice, bob], [20])
    lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc).fit(xs, ys)
    ref = sm.OLS(y.numpy(), sm.add_constant(x.numpy())).fit()
    new = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    expected = ref.predict(sm.add_constant(new.numpy(), has_constant="add"))
    np.testing.assert_allclose(lr.predict(new).numpy(), expected, atol=5e-3)
    remote = lr.predict(new.send(alice))
    assert remote.location is alice
    np.testing.assert_allclose(remote.get().numpy(), expected, atol=5e-3)
    lr.summarize()
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip() == "SMPC Linear Regression Results"
    assert lines[5].split()[0] == "coef1" and lines[7].split()[0] == "intercept"
    assert float(lines[5].split()[1]) == pytest.approx(ref.params[1], abs=1e-3)
    assert float(lines[7].split()[2]) == pytest.approx(ref.bse[0], abs=1e-3)


def test_bad_blocks_are_refused_with_what_to_do() -> None:
    alice, bob, hbc, carol = _workers("alice", "bob", "hbc", "carol")
    lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc)
    x, y = torch.randn(6, 2), torch.randn(6)
    with pytest.raises(ValueError, match="X has 6 rows but y has 5"):
        lr.fit([x.send(alice)], [y[:5].send(alice)])
    with pytest.raises(ValueError, match="block 1: X has 3 features, block 0 has 2"):
        lr.fit([x.send(alice), torch.randn(4, 3).send(bob)], [y.send(alice), y[:4].send(bob)])
    with pytest.raises(ValueError, match=r"y must be 1-d \(or rows x 1\)"):
        lr.fit([x.send(alice)], [torch.randn(6, 2).send(alice)])
    with pytest.raises(ValueError, match="one y block per X block"):
        lr.fit([x.send(alice)], [])
    with pytest.raises(ValueError, match="3 rows for 3 coefficients.*at least 4"):
        lr.fit([x[:3].send(alice)], [y[:3].send(alice)])
    with pytest.raises(WorkerMismatch, match="same node"):
        lr.fit([x.send(alice)], [y.send(bob)])
    with pytest.raises(TypeError, match=r"x.send\(alice\)"):
        lr.fit([x], [y])
    with pytest.raises(WorkerMismatch, match="crypto provider"):
        EncryptedLinearRegression(crypto_provider=alice, hbc_worker=hbc).fit(
            [x.send(alice)], [y.send(alice)]
        )
    with pytest.raises(ValueError, match="give an hbc_worker"):
        EncryptedLinearRegression(crypto_provider=carol, hbc_worker=None).fit(
            [x.send(alice)], [y.send(alice)]
        )
    with pytest.raises(ValueError, match="precision_fractional must be in 4..8"):
        EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc, precision_fractional=12)
    with pytest.raises(RuntimeError, match="not fitted"):
        lr.predict(x)


def test_collinear_or_badly_scaled_features_are_refused_and_open_only_zeros(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob, hbc, carol = _workers("alice", "bob", "hbc", "carol")
    x, y = _data(30, [1.0, 1.0], intercept=0.0, seed=13)
    lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc)
    opened: list[torch.Tensor] = []
    real_set = EncryptedLinearRegression._set
    monkeypatch.setattr(
        EncryptedLinearRegression,
        "_set",
        lambda self, out: (opened.append(out), real_set(self, out)),
    )
    twin = torch.cat([x[:, :1], x[:, :1] * 2.0], 1)  # the second column is twice the first
    with pytest.raises(ValueError, match="pivot of feature 1 fell below 2\\^-10: it is collinear"):
        lr.fit(*_blocks(twin, y, [alice, bob], [15]))
    with pytest.raises(ValueError, match="mean of squares of feature 0, feature 1 is above 2\\^11"):
        lr.fit(*_blocks(x * 1000.0, y, [alice, bob], [15]))  # means of squares ~1e6
    with pytest.raises(ValueError, match="mean of squares of y is above"):
        lr.fit(*_blocks(x, y * 100.0, [alice, bob], [15]))
    for out in opened:  # the statistics opened as zeros: only the range bits are learned
        assert out[:7].abs().max() == 0.0 and set(out[7:].tolist()) <= {0.0, 1.0}
    assert lr.coef is None


def test_private_rows_need_the_owners_approval_to_open_the_statistics() -> None:
    names = ["alice", "bob", "hbc", "carol"]
    owners = [veil.VirtualWorker(node=Node(n, owner_password="owner-password-1")) for n in names]
    ds = []
    for owner in owners:
        owner.create_user("ds@lab.org", "ds-password-123")
        ds.append(owner.login("ds@lab.org", "ds-password-123"))
    for owner in owners[:-1]:
        veil.mpc.dealers(owner).add("carol", owners[-1])
    x, y = _data(40, [0.5, -1.0], intercept=2.0, seed=17)
    for owner, rows in zip(owners[:2], (slice(0, 18), slice(18, 40)), strict=True):
        owner.datasets.create("x", private=x[rows], mock=torch.zeros_like(x[rows]))
        owner.datasets.create("y", private=y[rows], mock=torch.zeros_like(y[rows]))
    alice, bob, hbc, carol = ds
    xs = [w.datasets["x"].private for w in (alice, bob)]
    ys = [w.datasets["y"].private for w in (alice, bob)]
    lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc)
    with pytest.raises(PermissionDenied, match=r"model.request\('why'\)"):
        lr.fit(xs, ys)
    assert lr.coef is None
    reqs = lr.request("the OLS coefficients of our joint study")
    assert len(reqs) == 3  # alice, bob and the hbc worker each hold a share
    for owner, req in zip(owners[:3], reqs, strict=True):
        owner.requests.approve(req.id)
    lr.reveal()
    ref = sm.OLS(y.numpy(), sm.add_constant(x.numpy())).fit()
    np.testing.assert_allclose([float(lr.intercept), *lr.coef.tolist()], ref.params, atol=1e-3)
