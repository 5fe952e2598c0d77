"""Federated simulation on Ray: a round's cohort split into chunks that train as Ray tasks.

``veil.fl.simulate(..., backend="ray")`` hands each round to a :class:`RayCohort`. The model
is put into Ray's object store once; each round the global parameters are put once, and the
cohort is cut into chunks of ``chunk_size`` clients, each trained by one task with the same
batched ``vmap`` code as the in-process backend (so the same chunking gives the same numbers).
A chunk's data travel as one object, put when the chunk first appears and reused while it
recurs (every round when all clients train); the store keeps only the last round's chunks.
At most ``2 x`` the cluster's CPUs tasks are in flight, and a task holds only its chunk: memory
stays bounded however many clients there are. We use Ray's scheduler; we do not write one.

Ray is an optional extra (``pip install 'veil[ray]'``). ``address=None`` joins the cluster this
process already started (``ray.init(...)``), else the one ``RAY_ADDRESS`` names, else starts
a local one that lives until ``ray.shutdown()`` or the end of the process. On a multi-machine
cluster every worker needs veil and torch installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from veil.fl.strategies.base import Parameters

__all__ = ["RayCohort", "import_ray"]

#: ``fit(model, start, data, ids, **kw) -> (stacked parameters, losses)``: how a chunk trains.
ChunkFit = Callable[..., tuple[Parameters, list[float]]]


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it.

    Example:
        >>> try:
        ...     ray = import_ray()
        ... except ImportError as exc:
        ...     assert "pip install 'veil[ray]'" in str(exc)
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "simulate(backend='ray') needs Ray, an optional extra: pip install 'veil[ray]'"
        ) from exc
    return ray


def _train_chunk(fit: ChunkFit, model: nn.Module, start: Parameters,
                 data: list[tuple[torch.Tensor, torch.Tensor]], ids: list[int],
                 kw: dict[str, Any]) -> tuple[Parameters, list[float]]:  # fmt: skip
    """The body of one Ray task (Ray resolves the object refs): train the chunk as one cohort."""
    torch.set_num_threads(1)  # one CPU per task, as Ray schedules it
    return fit(model, start, data, ids, **kw)


class RayCohort:
    """Trains cohorts of one simulation on a Ray cluster, chunk by chunk.

    Args:
        model: the architecture every client trains (its parameters are overridden by each
            round's global parameters; its buffers are used as they are).
        client_data: one ``(x, y)`` per client.
        fit: trains one chunk, ``fit(model, start, data, ids, **kw)``, returning the chunk's
            parameters stacked along a new first dimension and its clients' losses
            (``veil.fl.simulation.fit_cohort``); it must be importable on the workers.
        address: the cluster to join (see the module docstring); ignored when this process
            is already connected.
        chunk_size: clients per task; ``None`` spreads each cohort evenly over the cluster's
            CPUs.

    Raises:
        ImportError: Ray is not installed.
        ValueError: ``chunk_size`` below 1.

    Example:
        >>> try:
        ...     import ray
        ... except ImportError:
        ...     ray = None
        >>> if ray is not None and not ray.is_initialized():
        ...     _ = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        ...     from veil.fl.simulation import fit_cohort
        ...     import torch.nn.functional as F
        ...     data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]
        ...     model = torch.nn.Linear(3, 2)
        ...     cohort = RayCohort(model, data, fit=fit_cohort, chunk_size=2)
        ...     new, losses = cohort.fit([p.detach() for p in model.parameters()], [0, 1, 2],
        ...         epochs=1, batch_size=2, lr=0.1, loss_fn=F.cross_entropy, seed=0,
        ...         server_round=1)
        ...     assert len(new) == len(losses) == 3
        ...     ray.shutdown()
    """

    def __init__(self, model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 *, fit: ChunkFit, address: str | None = None,
                 chunk_size: int | None = None) -> None:  # fmt: skip
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._ray = ray
        self._task = ray.remote(num_cpus=1)(_train_chunk)
        self.chunk_size = chunk_size
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._fit = fit
        self._model = ray.put(model)
        self._data = list(client_data)
        self._chunk_refs: dict[tuple[int, ...], Any] = {}  # the last round's chunks, put

    def chunks(self, ids: Sequence[int]) -> list[list[int]]:
        """How a cohort is cut into tasks.

        Example:
            >>> c = RayCohort.__new__(RayCohort)
            >>> c.chunk_size, c.cpus = None, 2
            >>> c.chunks([5, 6, 7])
            [[5, 6], [7]]
        """
        size = self.chunk_size or max(1, math.ceil(len(ids) / self.cpus))
        return [list(ids[i : i + size]) for i in range(0, len(ids), size)]

    def fit(self, start: Parameters, ids: Sequence[int],
            **kw: Any) -> tuple[list[Parameters], list[float]]:  # fmt: skip
        """Train the clients ``ids`` from ``start``; their parameters and losses, in order.

        Args:
            start: the round's global parameters.
            ids: the clients of the round (indices into ``client_data``).
            **kw: passed to ``fit`` (epochs, batch size, learning rate, loss, seeds).
        """
        ray = self._ray
        start_ref = ray.put([t.detach() for t in start])
        chunks = self.chunks(ids)
        limit = 2 * self.cpus
        pending: dict[Any, int] = {}
        done: dict[int, tuple[Parameters, list[float]]] = {}
        used: dict[tuple[int, ...], Any] = {}
        for i, chunk in enumerate(chunks):
            if len(pending) >= limit:
                self._collect(pending, done, wait_for=1)
            key = tuple(chunk)
            data = self._chunk_refs.get(key)
            if data is None:
                data = ray.put([self._data[c] for c in chunk])
            used[key] = data
            ref = self._task.remote(self._fit, self._model, start_ref, data, chunk, kw)
            pending[ref] = i
        self._chunk_refs = used  # chunks of earlier rounds leave the object store
        self._collect(pending, done, wait_for=len(pending))
        new: list[Parameters] = []
        losses: list[float] = []
        for i in range(len(chunks)):
            stacked, chunk_losses = done[i]
            new.extend(list(ps) for ps in zip(*(t.unbind(0) for t in stacked)))
            losses.extend(chunk_losses)
        return new, losses

    def _collect(self, pending: dict[Any, int], done: dict[int, tuple[Parameters, list[float]]],
                 wait_for: int) -> None:  # fmt: skip
        if not pending:
            return
        ready, _ = self._ray.wait(list(pending), num_returns=wait_for)
        for ref, result in zip(ready, self._ray.get(ready)):
            done[pending.pop(ref)] = result
