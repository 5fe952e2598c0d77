"""Federated datasets with PySyft 0.2's spellings: ``BaseDataset``, ``federate``, ``FederatedDataLoader``.

A :class:`BaseDataset` holds examples and targets; ``dataset.federate((bob, alice))`` splits
it into one part per worker and sends each part there, giving a :class:`FederatedDataset` of
pointers; a :class:`FederatedDataLoader` yields ``(data, target)`` batches as pointers that
live on their workers (``data.location``), worker after worker, shuffled on the node when
asked (an index op there: the examples never pass through the client).

Example:
    >>> import torch, veil as sy
    >>> bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    >>> fed = sy.BaseDataset(torch.arange(10.0).view(5, 2), torch.arange(5)).federate((bob, alice))
    >>> fed.workers, len(fed)
    (['bob', 'alice'], 5)
    >>> [(d.location.name, tuple(d.shape)) for d, t in sy.FederatedDataLoader(fed, batch_size=2)]
    [('bob', (2, 2)), ('bob', (1, 2)), ('alice', (2, 2))]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["BaseDataset", "FederatedDataLoader", "FederatedDataset", "federated_avg"]


class BaseDataset:
    """Examples and their targets, local tensors or pointers to one worker's.

    Args:
        data, targets: tensors (or pointers) with the same first dimension.
        transform: applied to each example read with ``dataset[i]`` (local datasets).
    """

    def __init__(self, data: Any, targets: Any,
                 transform: Callable[[Any], Any] | None = None) -> None:  # fmt: skip
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} examples but {len(targets)} targets")
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x = self.data[i]
        return (self.transform(x) if self.transform else x), self.targets[i]

    @property
    def location(self) -> Any:
        """The worker holding the data (None for a local dataset)."""
        return getattr(self.data, "location", None)

    def __repr__(self) -> str:
        where = f", on {self.location.name!r}" if self.location is not None else ""
        return f"BaseDataset({len(self)} examples{where})"

    def send(self, worker: Any) -> BaseDataset:
        """The dataset on ``worker``: a BaseDataset of pointers."""
        return BaseDataset(self.data.send(worker), self.targets.send(worker))

    def federate(self, workers: Sequence[Any]) -> FederatedDataset:
        """Split into one contiguous part per worker (sizes differing by one at most) and send
        each part to its worker (PySyft 0.2's ``dataset.federate((bob, alice))``)."""
        workers = list(workers)
        if not workers:
            raise ValueError("federate needs at least one worker")
        if len(self) < len(workers):
            raise ValueError(f"{len(self)} examples cannot give each of {len(workers)} workers one")
        parts = torch.tensor_split(torch.arange(len(self)), len(workers))
        return FederatedDataset(
            [BaseDataset(self.data[p], self.targets[p]).send(w) for p, w in zip(parts, workers)]
        )


class FederatedDataset:
    """Datasets that live on several workers, one each (PySyft 0.2's ``sy.FederatedDataset``)."""

    def __init__(self, datasets: Sequence[BaseDataset]) -> None:
        self.datasets: dict[str, BaseDataset] = {}
        for ds in datasets:
            if ds.location is None:
                raise ValueError("a FederatedDataset holds datasets on workers: send them first")
            if ds.location.name in self.datasets:
                raise ValueError(f"two datasets on worker {ds.location.name!r}")
            self.datasets[ds.location.name] = ds

    @property
    def workers(self) -> list[str]:
        """The workers' names, in order."""
        return list(self.datasets)

    def __getitem__(self, worker: str) -> BaseDataset:
        return self.datasets[worker]

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __repr__(self) -> str:
        parts = ", ".join(f"{w}: {len(d)}" for w, d in self.datasets.items())
        return f"FederatedDataset({parts})"


class FederatedDataLoader:
    """Batches of a :class:`FederatedDataset` as ``(data, target)`` pointers on their workers.

    Goes through the workers in order, each worker's examples in batches of ``batch_size``
    (reshuffled on its node each pass when ``shuffle``; a seeded order when ``seed`` is set).
    """

    def __init__(self, federated_dataset: FederatedDataset, batch_size: int = 8,
                 shuffle: bool = False, drop_last: bool = False, seed: int | None = None) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.federated_dataset = federated_dataset
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self._gen = torch.Generator()
        if seed is not None:
            self._gen.manual_seed(seed)

    def __len__(self) -> int:
        total = 0
        for ds in self.federated_dataset.datasets.values():
            n = len(ds)
            total += n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return total

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for ds in self.federated_dataset.datasets.values():
            n = len(ds)
            order = torch.randperm(n, generator=self._gen) if self.shuffle else torch.arange(n)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                if self.drop_last and len(idx) < self.batch_size:
                    break
                if self.shuffle:
                    yield ds.data[idx], ds.targets[idx]
                else:
                    end = start + len(idx)
                    yield ds.data[start:end], ds.targets[start:end]


def federated_avg(models: dict[str, nn.Module] | Sequence[nn.Module]) -> nn.Module:
    """A model whose parameters are the mean of the models' (PySyft 0.2's
    ``utils.federated_avg``); the models must share one architecture.

    Example:
        >>> import torch
        >>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
        >>> with torch.no_grad():
        ...     _ = a.weight.fill_(1.0), b.weight.fill_(3.0)
        >>> federated_avg({"a": a, "b": b}).weight.item()
        2.0
    """
    import copy

    ms = list(models.values()) if isinstance(models, dict) else list(models)
    if not ms:
        raise ValueError("federated_avg needs at least one model")
    out = copy.deepcopy(ms[0])
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.copy_(torch.stack([dict(m.named_parameters())[name].detach() for m in ms]).mean(0))
    return out
