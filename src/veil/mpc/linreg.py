"""Least squares on rows held by several nodes, solved on secret-shared data (PySyft 0.2's
``EncryptedLinearRegression``).

The algorithm is Bloom's (*Secure multi-party linear regression at plaintext speed*, 2019,
section 2): each data owner compresses its rows locally into the Gram matrix of
``[1, X, y]`` (divided by the public total row count N); the owners secret-share those small
matrices and add them; the normal equations are then solved on the shares, and only the
statistics are opened.

What each party learns:

- **the data scientist**: N, the number of features, each block's row count (shapes of
  the pointers), and the opened statistics: coefficients, their standard errors (the
  diagonal of (X^T X)^-1 times σ²) and the residual variance σ²; and the range checks: one
  bit per column (is its mean of squares above 2^11?) and two per pivot (is it outside
  [2^-10, 2^11)?). When a check fails the statistics open as zeros (they are multiplied by
  a shared "all in range" bit before opening) and the fit is refused. Every other opening
  is masked with fresh dealer randomness (Beaver products, comparisons).
- **each data owner**: its own Gram matrix (its node computes it), nothing about the
  other owners' rows; its node holds one share of the summed Gram matrix and of every
  intermediate, and sees the same masked openings as the scientist.
- **``hbc_worker``** (an extra share holder with no data): one share of each of those; the
  sums stay secret unless *every* party (each owner and the hbc worker) colludes.
- **``crypto_provider``**: shapes only (it deals the correlated randomness).

Differences from PySyft's: PySyft shared the Gram matrices between one randomly chosen
owner and the hbc worker only (those two together could open everything), and inverted
with an LDL^T decomposition whose reciprocals had no range check (its tutorial asked for
data scaled so that averages lie in [0.1, 10], and out-of-range data gave overflowed
numbers). Here every owner holds a share, and the sweep operator's reciprocals are
range-checked (:mod:`veil.mpc.protocols.linalg`): out-of-range data is refused, never
answered.

Example:
    >>> import torch, veil
    >>> from veil.mpc import EncryptedLinearRegression
    >>> alice, bob, hbc, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "hbc", "carol"))
    >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    >>> y = torch.tensor([1.1, 2.9, 5.2, 6.8, 9.1, 10.9])
    >>> lr = EncryptedLinearRegression(crypto_provider=carol, hbc_worker=hbc)
    >>> _ = lr.fit([x[:3].send(alice), x[3:].send(bob)], [y[:3].send(alice), y[3:].send(bob)])
    >>> round(float(lr.coef[0]), 3), round(float(lr.intercept), 3)
    (1.977, 1.057)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from veil.errors import PermissionDenied, WorkerMismatch
from veil.mpc.protocols.linalg import at_least, pivot_range, sweep
from veil.mpc.protocols.session import MPCSession
from veil.node.worker import Worker
from veil.pointers import PointerTensor

__all__ = ["EncryptedLinearRegression", "frac_bits_for"]


def frac_bits_for(precision_fractional: int) -> int:
    """Binary fractional bits for PySyft's decimal ``precision_fractional`` (10^d -> 2^b).

    Example:
        >>> frac_bits_for(6)
        20
    """
    if isinstance(precision_fractional, bool) or not isinstance(precision_fractional, int):
        raise TypeError(f"precision_fractional must be an int, got {precision_fractional!r}")
    if not 4 <= precision_fractional <= 8:
        raise ValueError(
            f"precision_fractional must be in 4..8 decimal digits, got {precision_fractional}; "
            "6 (the default) keeps products of values up to about 3000 inside the 64-bit ring"
        )
    return math.ceil(precision_fractional * math.log2(10))


class EncryptedLinearRegression:
    """Ordinary least squares on row blocks that stay on their owners' nodes.

    Args:
        crypto_provider: the worker that deals the MPC randomness (none of the parties).
        hbc_worker: an "honest but curious" worker that holds shares beside the data owners
            (it may be one of them; ``None`` when the rows are on two nodes or more).
        precision_fractional: decimal digits of the fixed-point encoding (PySyft's name);
            6 gives 20 fractional bits.
        fit_intercept: add a column of ones (the intercept) to X.
        security: ``"semi-honest"`` (default) or ``"malicious"`` (MAC-checked openings).

    After :meth:`fit`: ``coef`` (p,), ``intercept`` (scalar tensor, or None), ``se_coef``,
    ``se_intercept``, ``tvalue_coef``, ``tvalue_intercept``, ``pvalue_coef``,
    ``pvalue_intercept`` (two-sided, Student t with N - p dof), ``sigma`` (residual standard
    deviation), ``total_size`` (N) and ``dof``.

    The solver works on values of order 1: the Gram matrix pivots (roughly the feature
    variances) must lie in [2^-10, 2^11) at the default precision. Scale features and target
    by a known order of magnitude first (as PySyft's tutorial did); a pivot out of range is
    detected and the fit refused with that advice.

    Example:
        >>> import torch, veil
        >>> a, b, h, c = (veil.VirtualWorker(n) for n in ("a", "b", "h", "c"))
        >>> x = torch.tensor([[1.0, 0.5], [2.0, -1.0], [3.0, 0.0], [4.0, 2.0], [5.0, 1.0]])
        >>> y = x @ torch.tensor([2.0, -1.0])
        >>> lr = EncryptedLinearRegression(crypto_provider=c, hbc_worker=h, fit_intercept=False)
        >>> lr.fit([x[:2].send(a), x[2:].send(b)], [y[:2].send(a), y[2:].send(b)]).coef.round(decimals=2)
        tensor([ 2., -1.], dtype=torch.float64)
    """

    def __init__(self, crypto_provider: Any, hbc_worker: Worker | None, precision_fractional: int = 6,
                 fit_intercept: bool = True, *, security: str = "semi-honest") -> None:  # fmt: skip
        self.crypto_provider = crypto_provider
        self.hbc_worker = hbc_worker
        self.precision_fractional = precision_fractional
        self.frac_bits = frac_bits_for(precision_fractional)
        self.fit_intercept = bool(fit_intercept)
        self.security = security
        self.coef: torch.Tensor | None = None
        self.intercept: torch.Tensor | None = None
        self.se_coef: torch.Tensor | None = None
        self.se_intercept: torch.Tensor | None = None
        self.tvalue_coef: np.ndarray[Any, Any] | None = None
        self.pvalue_coef: np.ndarray[Any, Any] | None = None
        self.tvalue_intercept: float | None = None
        self.pvalue_intercept: float | None = None
        self._pending: Any = None

    # ------------------------------------------------------------------ fitting
    def fit(self, X_ptrs: Sequence[Any], y_ptrs: Sequence[Any]) -> EncryptedLinearRegression:  # noqa: N803
        """Fit on row blocks: ``X_ptrs[i]`` (rows x p) and ``y_ptrs[i]`` (rows, or rows x 1)
        are pointers to the same node. Returns ``self``.

        Raises:
            TypeError: a block is not a pointer.
            ValueError: shapes disagree, or there are no more rows than coefficients.
            WorkerMismatch: a block's X and y live on different nodes, or the crypto
                provider is one of the parties.
            PermissionDenied: the data is private: the statistics are computed and shared;
                ask for them with :meth:`request`, then call :meth:`reveal`.
        """
        owners = self._check(X_ptrs, y_ptrs)
        n, p = self.total_size, self.n_params
        parties: list[Any] = []
        for w in [*owners, self.hbc_worker]:
            if w is not None and not any(w is q for q in parties):
                parties.append(w)
        if len(parties) < 2:
            raise ValueError(
                "every row is on one node, which would hold every share: give an hbc_worker "
                "(a second node that holds shares and no data)"
            )
        if any(self.crypto_provider is q for q in parties):
            raise WorkerMismatch(
                "the crypto provider must not be a data owner or the hbc worker: "
                "use a separate worker for it"
            )
        sess = MPCSession(parties, self.crypto_provider, frac_bits=self.frac_bits,
                          security=self.security)  # type: ignore[arg-type]  # fmt: skip
        total: Any = None
        for x, y in zip(X_ptrs, y_ptrs, strict=True):
            cols = [x.double(), y.double().reshape(-1, 1)]
            if self.fit_intercept:
                cols.insert(0, torch.ones_like(cols[1]))
            w = torch.cat(cols, 1)
            gram: Any = (w.t() @ w) * (1.0 / n)  # on the owner's node, in float64
            shared = gram.fix_precision(self.frac_bits).share(session=sess)
            total = shared if total is None else total + shared
        _, hi = pivot_range(self.frac_bits)
        # Means of squares below 2^(hi+1) keep every product of the sweep inside the ring
        # (Cauchy-Schwarz bounds the other entries by them); checked before any product.
        flags = [at_least(total.reshape(-1)[torch.arange(p + 1) * (p + 2)], hi + 1)]
        for k in range(p):
            total, bits = sweep(total, k, pivot=1.0 if (self.fit_intercept and k == 0) else None)
            flags.append(bits)
        inv_diag = total[:p, :p].reshape(-1)[torch.arange(p) * (p + 1)]
        stats = type(total).cat([total[:p, p], total[p, p].reshape(1), inv_diag], 0)
        checks = type(total).cat(flags, 0)
        # a refused fit opens zeros, never statistics computed out of range
        ok = (checks.sum() < 0.5).reshape(1).expand(2 * p + 1)
        self._pending = type(total).cat([stats * ok, checks], 0)
        return self.reveal()

    def request(self, reason: str) -> list[Any]:
        """Ask each party's owner to release its share of the fitted statistics (needed when
        the rows are private); returns one request per party."""
        if self._pending is None:
            raise RuntimeError("nothing to request: call fit(X_ptrs, y_ptrs) first")
        return self._pending.request(reason)  # type: ignore[no-any-return]

    def reveal(self) -> EncryptedLinearRegression:
        """Open the statistics :meth:`fit` computed (after the owners approved
        :meth:`request` where the data is private) and set the fitted attributes."""
        if self._pending is None:
            raise RuntimeError("nothing to reveal: call fit(X_ptrs, y_ptrs) first")
        try:
            out = self._pending.get().float_precision(torch.float64)
        except PermissionDenied as exc:
            raise PermissionDenied(
                f"{exc}. The regression is computed and its statistics are secret-shared; "
                "ask the owners for them: reqs = model.request('why'), and once each owner "
                "approved, call model.reveal()"
            ) from exc
        self._pending = None
        self._set(out)
        return self

    def _set(self, out: torch.Tensor) -> None:
        p, n = self.n_params, self.total_size
        lo, hi = pivot_range(self.frac_bits)
        names = ["intercept"] * self.fit_intercept + [
            f"feature {j}" for j in range(self.n_features)
        ]
        big = out[2 * p + 1 : 3 * p + 2].round().bool().tolist()
        if any(big):
            cols = [*names, "y"]
            raise ValueError(
                f"the mean of squares of {', '.join(c for c, b in zip(cols, big, strict=True) if b)} is "
                f"above 2^{hi + 1}: scale the features down by a known order of magnitude "
                "(e.g. metres to kilometres; rescale the coefficients after) and fit again"
            )
        for k, (below, above) in enumerate(out[3 * p + 2 :].reshape(-1, 2).round().tolist()):
            if below:
                raise ValueError(
                    f"the pivot of {names[k]} fell below 2^{lo}: it is collinear (or nearly "
                    "so) with the columns before it, or much smaller than 1; drop or combine "
                    "features, or scale them up by a known order of magnitude"
                )
            if above:
                raise ValueError(
                    f"the pivot of {names[k]} is above 2^{hi + 1}: scale the features down "
                    "by a known order of magnitude and fit again"
                )
        beta, rss_n, inv_diag = out[:p], float(out[p]), out[p + 1 : 2 * p + 1]
        self.sigma2 = max(rss_n, 0.0) * n / self.dof
        self.sigma = math.sqrt(self.sigma2)
        se = torch.sqrt(torch.clamp(inv_diag, min=0.0) * self.sigma2 / n)
        from scipy import stats  # slow to import: only when a model is fitted

        with np.errstate(divide="ignore", invalid="ignore"):
            t = (beta / se).numpy()
            pv = 2 * stats.t.sf(np.abs(t), self.dof)
        start = 1 if self.fit_intercept else 0
        self.coef, self.se_coef = beta[start:], se[start:]
        self.tvalue_coef, self.pvalue_coef = t[start:], pv[start:]
        if self.fit_intercept:
            self.intercept, self.se_intercept = beta[0], se[0]
            self.tvalue_intercept, self.pvalue_intercept = float(t[0]), float(pv[0])
        else:
            self.intercept = self.se_intercept = None
            self.tvalue_intercept = self.pvalue_intercept = None

    # ------------------------------------------------------------------ checks
    def _check(self, X_ptrs: Sequence[Any], y_ptrs: Sequence[Any]) -> list[Any]:  # noqa: N803
        """Validate the blocks; set ``n_features``, ``total_size``, ``n_params``, ``dof``;
        return each block's node."""
        if len(X_ptrs) == 0 or len(X_ptrs) != len(y_ptrs):
            raise ValueError(
                f"give one y block per X block, at least one: got {len(X_ptrs)} X and "
                f"{len(y_ptrs)} y blocks"
            )
        owners, problems = [], []
        n_features = None
        total = 0
        for i, (x, y) in enumerate(zip(X_ptrs, y_ptrs, strict=True)):
            if not (isinstance(x, PointerTensor) and isinstance(y, PointerTensor)):
                raise TypeError(
                    f"block {i}: X and y must be pointers to the owner's data; send local "
                    "tensors first (x.send(alice)) or fit them with an ordinary solver"
                )
            if x.location is not y.location:
                raise WorkerMismatch(
                    f"block {i}: X is on {x.location.name!r} but y on {y.location.name!r}; "
                    "each block's X and y must live on the same node"
                )
            if x.dim() != 2:
                problems.append(f"block {i}: X must be 2-d (rows x features), got {tuple(x.shape)}")
            elif not (y.dim() == 1 or (y.dim() == 2 and y.shape[1] == 1)):
                problems.append(f"block {i}: y must be 1-d (or rows x 1), got {tuple(y.shape)}")
            elif x.shape[0] != y.shape[0]:
                problems.append(f"block {i}: X has {x.shape[0]} rows but y has {y.shape[0]}")
            else:
                n_features = x.shape[1] if n_features is None else n_features
                if x.shape[1] != n_features:
                    problems.append(
                        f"block {i}: X has {x.shape[1]} features, block 0 has {n_features}"
                    )
                total += x.shape[0]
            owners.append(x.location)
        if problems:
            raise ValueError("; ".join(problems))
        assert n_features is not None
        self.n_features = int(n_features)
        self.n_params = self.n_features + int(self.fit_intercept)
        self.total_size = total
        self.dof = total - self.n_params
        if self.dof < 1:
            raise ValueError(
                f"{total} rows for {self.n_params} coefficients: least squares with standard "
                f"errors needs more rows than coefficients (at least {self.n_params + 1})"
            )
        return owners

    # ------------------------------------------------------------------ use
    def predict(self, X: Any) -> Any:  # noqa: N803
        """``X @ coef + intercept`` for a local tensor, or on the node for a pointer (the
        public coefficients are sent with the op; the result stays there).

        Example:
            >>> m = EncryptedLinearRegression(crypto_provider=None, hbc_worker=None)
            >>> m.coef, m.intercept = torch.tensor([2.0]), torch.tensor(1.0)
            >>> m.predict(torch.tensor([[0.0], [3.0]]))
            tensor([1., 7.])
        """
        if self.coef is None:
            raise RuntimeError("the model is not fitted: call fit(X_ptrs, y_ptrs) first")
        dtype = X.dtype if X.dtype.is_floating_point else torch.float32
        out = X @ self.coef.to(dtype)
        return out + self.intercept.to(dtype) if self.intercept is not None else out

    def summary(self) -> str:
        """The table :meth:`summarize` prints."""
        if self.coef is None or self.se_coef is None or self.pvalue_coef is None:
            raise RuntimeError("the model is not fitted: call fit(X_ptrs, y_ptrs) first")
        lines = ["=" * 52, " " * 11 + "SMPC Linear Regression Results", "=" * 52,
                 " " * 17 + "value" + " " * 9 + "stderr" + " " * 8 + "p-value", "-" * 52]  # fmt: skip
        for i, cf in enumerate(self.coef.tolist()):
            lines.append(
                f"coef{i + 1:<3d} {cf:>14.4f} {float(self.se_coef[i]):>14.4f} "
                f"{float(self.pvalue_coef[i]):>14.4f}"
            )
        if self.intercept is not None and self.se_intercept is not None:
            lines.append(
                f"intercept {float(self.intercept):>12.4f} {float(self.se_intercept):>14.4f} "
                f"{self.pvalue_intercept:>14.4f}"
            )
        lines.append("-" * 52)
        return "\n".join(lines)

    def summarize(self) -> None:
        """Print the coefficients with their standard errors and p-values (PySyft's table)."""
        print(self.summary())
