"""Splitting a dataset over simulated clients: IID, non-IID by Dirichlet proportions, by label.

Each function returns one index tensor per client (sorted, disjoint, together every index).

Example:
    >>> import torch
    >>> parts = dirichlet_partition(torch.tensor([0, 0, 1, 1, 2, 2] * 10), 3, alpha=0.5, seed=0)
    >>> sum(len(p) for p in parts), len(parts)
    (60, 3)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dirichlet_partition", "iid_partition", "label_partition"]


def _check(num_clients: int, n: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if n < num_clients:
        raise ValueError(f"{n} examples cannot give each of {num_clients} clients one")


def iid_partition(n: int, num_clients: int, *, seed: int = 0) -> list[torch.Tensor]:
    """``n`` examples shuffled and dealt to ``num_clients`` clients in near-equal parts.

    Example:
        >>> [len(p) for p in iid_partition(10, 3)]
        [4, 3, 3]
    """
    _check(num_clients, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [part.sort().values for part in torch.tensor_split(order, num_clients)]


def dirichlet_partition(labels: torch.Tensor, num_clients: int, *, alpha: float, seed: int = 0,
                        min_size: int = 1, max_tries: int = 100) -> list[torch.Tensor]:  # fmt: skip
    """Non-IID: each class's examples are split over the clients in proportions drawn from
    Dirichlet(``alpha``) (Hsu et al. 2019): small ``alpha`` gives each client few classes.
    Draws again until every client has at least ``min_size`` examples.

    Raises:
        ValueError: ``alpha`` is not positive, or no draw in ``max_tries`` gives every
            client ``min_size`` examples (raise ``alpha`` or lower ``min_size``).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}; 0.1 is very skewed, 100 near IID")
    labels = labels.flatten()
    _check(num_clients, len(labels))
    rng = np.random.default_rng(seed)
    classes = torch.unique(labels).tolist()
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = torch.nonzero(labels == c).flatten().numpy()
            rng.shuffle(idx)
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]
    raise ValueError(
        f"no Dirichlet({alpha}) split in {max_tries} draws gives each of {num_clients} clients "
        f"{min_size} examples; raise alpha or lower min_size"
    )


def label_partition(labels: torch.Tensor, num_clients: int, *, labels_per_client: int,
                    seed: int = 0) -> list[torch.Tensor]:  # fmt: skip
    """Non-IID by label: each client holds ``labels_per_client`` classes (dealt round-robin
    over a shuffled class order, so every class has a client), and each class's examples are
    split evenly among the clients that hold it.

    Example:
        >>> import torch
        >>> parts = label_partition(torch.arange(4).repeat(5), 4, labels_per_client=1)
        >>> sorted(len(torch.unique(torch.arange(4).repeat(5)[p])) for p in parts)
        [1, 1, 1, 1]
    """
    labels = labels.flatten()
    _check(num_clients, len(labels))
    classes = torch.unique(labels)
    if not 1 <= labels_per_client <= len(classes):
        raise ValueError(
            f"labels_per_client must be in [1, {len(classes)}], got {labels_per_client}"
        )
    gen = torch.Generator().manual_seed(seed)
    order = classes[torch.randperm(len(classes), generator=gen)].tolist()
    holders: dict[int, list[int]] = {c: [] for c in order}
    slot = 0
    for client in range(num_clients):
        for _ in range(labels_per_client):
            holders[order[slot % len(order)]].append(client)
            slot += 1
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c, owners in holders.items():
        if not owners:
            raise ValueError(
                f"class {c} has no client: give {len(order)} classes at least "
                f"{len(order)} client slots (num_clients * labels_per_client)"
            )
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for owner, chunk in zip(owners, torch.tensor_split(idx, len(owners))):
            parts[owner].extend(chunk.tolist())
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]
