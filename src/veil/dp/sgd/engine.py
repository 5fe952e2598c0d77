"""make_private: DP-SGD for a model, optimizer and data loader; Poisson loader, fix_model, progress, plot."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from veil.dp.accountants import ACCOUNTANTS, Accountant, noise_multiplier_for
from veil.dp.sgd.grad_sample import GradSampleModule, unsupported_layers
from veil.dp.sgd.layers import from_torch_rnn
from veil.dp.sgd.optimizer import DPOptimizer
from veil.errors import UnsupportedError

__all__ = [
    "PoissonLoader",
    "PrivacyProgress",
    "PrivateModule",
    "fix_model",
    "make_private",
    "plot_privacy",
    "validate",
]


class PoissonLoader:
    """Batches by Poisson sampling: each example joins each batch independently with
    probability ``sample_rate`` (what the accountants assume). ``len()`` is the number of
    logical batches per epoch (``1/sample_rate``).

    With ``max_physical_batch_size``, each logical batch is yielded in pieces of at most
    that size; the linked :class:`DPOptimizer` steps only after the last piece.
    """

    def __init__(self, dataset: Dataset[Any], *, sample_rate: float, collate_fn: Any = None,
                 max_physical_batch_size: int | None = None, seed: int | None = None) -> None:  # fmt: skip
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if max_physical_batch_size is not None and max_physical_batch_size < 1:
            raise ValueError(f"max_physical_batch_size must be >= 1, got {max_physical_batch_size}")
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        self.sample_rate = sample_rate
        self.collate_fn = collate_fn or default_collate
        self.max_physical_batch_size = max_physical_batch_size
        self.generator = torch.Generator().manual_seed(
            secrets.randbits(63) if seed is None else seed
        )
        self.optimizer: DPOptimizer | None = None

    def __len__(self) -> int:
        return max(1, round(1 / self.sample_rate))

    def _batch(self, idx: torch.Tensor) -> Any:
        ds = self.dataset
        if isinstance(ds, TensorDataset):
            return [t[idx] for t in ds.tensors]
        if len(idx) == 0:  # shapes from one example, zero rows
            one = self.collate_fn([ds[0]])
            return pytree.tree_map(lambda t: t[:0] if isinstance(t, torch.Tensor) else t, one)
        return self.collate_fn([ds[int(i)] for i in idx])

    def __iter__(self) -> Iterator[Any]:
        for _ in range(len(self)):
            mask = torch.rand(self.n, generator=self.generator) < self.sample_rate
            idx = mask.nonzero().flatten()
            size = self.max_physical_batch_size or max(len(idx), 1)
            pieces = list(idx.split(size)) if len(idx) else [idx]
            for k, piece in enumerate(pieces):
                if self.optimizer is not None:
                    self.optimizer.skip_step = k < len(pieces) - 1
                yield self._batch(piece)

    def __repr__(self) -> str:
        return f"PoissonLoader(n={self.n}, sample_rate={self.sample_rate:.4g}, steps={len(self)})"


class PrivateModule(GradSampleModule):
    """The model as ``make_private`` returns it: use it like the original; ``get_epsilon``."""

    accountant: Accountant

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta``."""
        return self.accountant.get_epsilon(delta)

    def __repr__(self) -> str:
        return f"PrivateModule({self.module!r}, steps={self.accountant.steps})"


def validate(model: nn.Module, *, strict: bool = False) -> list[str]:
    """Every reason DP-SGD cannot train ``model`` (empty list if it can).

    Example:
        >>> validate(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))[0][:40]
        '1 (BatchNorm2d) mixes examples in a batc'
    """
    problems = unsupported_layers(model)
    if strict and problems:
        raise UnsupportedError("DP-SGD cannot train this model:\n- " + "\n- ".join(problems))
    return problems


def _groups(channels: int) -> int:
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def fix_model(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm with a GroupNorm (largest group count <= 32 dividing the
    channels) so DP-SGD can train the model. Build the optimizer *after* fixing.

    Example:
        >>> m = fix_model(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)))
        >>> m[1], validate(m)
        (GroupNorm(8, 8, eps=1e-05, affine=True, bias=True), [])
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.GroupNorm(_groups(child.num_features), child.num_features,
                                              affine=child.affine))  # fmt: skip
        else:
            fix_model(child)
    return model


def _swap_rnns(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.RNNBase) and type(child) in (nn.RNN, nn.GRU, nn.LSTM):
            setattr(model, name, from_torch_rnn(child))
        else:
            _swap_rnns(child)


def make_private(
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader[Any],
    max_grad_norm: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    target_delta: float = 1e-5,
    epochs: int | None = None,
    max_physical_batch_size: int | None = None,
    accountant: str = "rdp",
    loss_reduction: str = "mean",
    secure_mode: bool = False,
    seed: int | None = None,
) -> tuple[PrivateModule, DPOptimizer, PoissonLoader]:
    """Make a training loop differentially private (DP-SGD, Abadi et al. 2016).

    Give ``noise_multiplier``, or ``target_epsilon`` (with ``target_delta`` and ``epochs``)
    to have it computed. Returns the wrapped model, a :class:`DPOptimizer` and a
    :class:`PoissonLoader` over the same dataset with sample rate ``batch_size / len(dataset)``.
    ``nn.RNN/GRU/LSTM`` layers are swapped for Linear-cell twins sharing their Parameters.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.randn(256, 5), torch.randint(0, 2, (256,)))
        >>> model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> model, opt, loader = make_private(module=model, optimizer=opt,
        ...     data_loader=DataLoader(data, batch_size=32), noise_multiplier=1.0, max_grad_norm=1.0)
        >>> for x, y in loader:
        ...     opt.zero_grad()
        ...     nn.functional.cross_entropy(model(x), y).backward()
        ...     opt.step()
        >>> 0 < model.get_epsilon(1e-5) < 10
        True
    """
    if not (isinstance(max_grad_norm, int | float) and max_grad_norm > 0):
        raise ValueError(
            f"max_grad_norm must be > 0, got {max_grad_norm}; typical values are 0.1-10"
        )
    batch_size = data_loader.batch_size
    if batch_size is None:
        raise ValueError("data_loader needs a batch_size (the expected logical batch size)")
    dataset = data_loader.dataset
    n = len(dataset)  # type: ignore[arg-type]
    sample_rate = min(1.0, batch_size / n)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose from {sorted(ACCOUNTANTS)}")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("give exactly one of noise_multiplier or target_epsilon (with epochs)")
    if noise_multiplier is None:
        if epochs is None:
            raise ValueError("target_epsilon needs epochs, to know how many steps to plan for")
        steps = epochs * max(1, round(1 / sample_rate))
        assert target_epsilon is not None
        noise_multiplier = noise_multiplier_for(target_epsilon=target_epsilon, delta=target_delta,
                                                sample_rate=sample_rate, steps=steps,
                                                accountant=accountant)  # fmt: skip
    _swap_rnns(module)
    private = PrivateModule(module, loss_reduction=loss_reduction)
    acc = ACCOUNTANTS[accountant]()
    private.accountant = acc
    dp_opt = DPOptimizer(optimizer, module=private, noise_multiplier=noise_multiplier,
                         max_grad_norm=float(max_grad_norm), expected_batch_size=sample_rate * n,
                         accountant=acc, sample_rate=sample_rate, secure_mode=secure_mode)  # fmt: skip
    loader = PoissonLoader(dataset, sample_rate=sample_rate, collate_fn=data_loader.collate_fn,
                           max_physical_batch_size=max_physical_batch_size, seed=seed)  # fmt: skip
    loader.optimizer = dp_opt
    return private, dp_opt, loader


class PrivacyProgress:
    """A rich progress bar showing the loss and the ε spent so far.

    Example:
        >>> from veil.dp.accountants import RDPAccountant
        >>> acc = RDPAccountant()
        >>> with PrivacyProgress(acc, delta=1e-5, total=2, disable=True) as bar:
        ...     acc.step(noise_multiplier=1.0, sample_rate=0.01)
        ...     bar.advance(loss=0.7)
        >>> bar.epsilon > 0
        True
    """

    def __init__(self, accountant: Accountant | DPOptimizer, *, delta: float, total: int,
                 description: str = "DP-SGD", every: int = 10, disable: bool = False) -> None:  # fmt: skip
        self.accountant = (
            accountant.accountant if isinstance(accountant, DPOptimizer) else accountant
        )
        self._optimizer = accountant if isinstance(accountant, DPOptimizer) else None
        self.delta, self.every = delta, max(1, every)
        self.epsilon = 0.0
        self._n = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("ε {task.fields[eps]}"),
            TimeRemainingColumn(), disable=disable,
        )  # fmt: skip
        self._task = self._progress.add_task(description, total=total, loss="-", eps="0")

    def __enter__(self) -> PrivacyProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._refresh_eps()
        self._progress.update(self._task, eps=f"{self.epsilon:.3f}")
        self._progress.__exit__(*exc)

    def _refresh_eps(self) -> None:
        self.epsilon = self.accountant.get_epsilon(self.delta)

    def advance(self, loss: float | None = None) -> None:
        """One logical step done (a physical piece that did not step is not counted)."""
        if self._optimizer is not None and self._optimizer.skip_step:
            return
        self._n += 1
        if self._n % self.every == 1 or self.every == 1:
            self._refresh_eps()
        fields: dict[str, Any] = {"eps": f"{self.epsilon:.3f}"}
        if loss is not None and math.isfinite(loss):
            fields["loss"] = f"{loss:.4f}"
        self._progress.update(self._task, advance=1, **fields)


def plot_privacy(accountant: Accountant, *, delta: float, path: str | Path | None = None,
                 points: int = 50, ax: Any = None) -> Any:  # fmt: skip
    """Plot ε against steps for the accountant's history (matplotlib, Agg backend).

    Returns the matplotlib Axes; saves a PNG when ``path`` is given. Needs matplotlib
    (``pip install 'veil[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_privacy needs matplotlib: pip install 'veil[plot]'") from exc
    history = list(accountant.history)
    total = sum(n for _, _, n in history)
    if total == 0:
        raise ValueError("the accountant has recorded no steps yet")
    xs = sorted({max(1, round(total * k / points)) for k in range(1, points + 1)})
    ys = []
    for x in xs:
        acc = type(accountant)()
        left = x
        for sigma, q, n in history:
            take = min(n, left)
            if take:
                acc.step(noise_multiplier=sigma, sample_rate=q, steps=take)
            left -= take
        ys.append(acc.get_epsilon(delta))
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, ys)
    ax.set_xlabel("steps")
    ax.set_ylabel(f"ε (δ = {delta:g})")
    ax.set_title(f"privacy spent ({accountant.name} accountant)")
    ax.grid(alpha=0.3)
    if path is not None:
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    return ax
