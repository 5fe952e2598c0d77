"""Partitioners split every example to exactly one client, with the skew asked for."""

from __future__ import annotations

import pytest
import torch

from veil.fl import dirichlet_partition, iid_partition, label_partition


def _complete(parts: list[torch.Tensor], n: int) -> None:
    together = torch.cat(parts).sort().values
    assert torch.equal(together, torch.arange(n))  # disjoint and complete


def test_iid_partition_is_even_and_complete() -> None:
    parts = iid_partition(103, 10, seed=1)
    _complete(parts, 103)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_dirichlet_alpha_sets_how_skewed_clients_are() -> None:
    labels = torch.arange(10).repeat_interleave(100)
    skewed = dirichlet_partition(labels, 10, alpha=0.1, seed=0)
    even = dirichlet_partition(labels, 10, alpha=100.0, seed=0)
    _complete(skewed, len(labels))
    _complete(even, len(labels))

    def classes(parts: list[torch.Tensor]) -> float:  # classes with >= 5% of a client's data
        counts = [torch.bincount(labels[p], minlength=10) for p in parts]
        return sum(int((c >= 0.05 * c.sum()).sum()) for c in counts) / len(parts)

    assert classes(skewed) < 4 < 9 <= classes(even)
    assert dirichlet_partition(labels, 10, alpha=0.1, seed=0)[3].tolist() == skewed[3].tolist()
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(labels, 10, alpha=0)


def test_label_partition_gives_each_client_its_classes() -> None:
    labels = torch.arange(10).repeat(30)
    parts = label_partition(labels, 5, labels_per_client=2, seed=3)
    _complete(parts, len(labels))
    assert all(len(torch.unique(labels[p])) == 2 for p in parts)
    with pytest.raises(ValueError, match="no client"):
        label_partition(labels, 2, labels_per_client=2)
