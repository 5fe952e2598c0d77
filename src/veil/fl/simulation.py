"""In-process simulation of federated training: many clients, bounded memory, one batched cohort.

:func:`simulate` runs a :class:`~veil.fl.strategies.Strategy` over clients that are just
datasets in this process. A client's model exists only while it trains. With
``batched=True`` the clients of a round that share the model's architecture train as one
computation: their parameters are stacked and every local SGD step of the whole cohort is one
``torch.func.vmap`` of ``functional_call`` and one backward pass, with each client's
minibatch gathered from the cohort's data, padded and masked. It computes what the Python
loop (``batched=False``) computes, on the same minibatches, to float tolerance.
``chunk_size`` caps how many clients train as one computation, and ``backend="ray"`` runs
the chunks as Ray tasks (:mod:`veil.fl.ray_backend`; the same chunks give the same numbers).

Example:
    >>> import torch
    >>> from veil.fl import FedAvg
    >>> data = [(torch.randn(20, 4), torch.randint(0, 2, (20,))) for _ in range(8)]
    >>> model = torch.nn.Linear(4, 2)
    >>> history = simulate(model, data, strategy=FedAvg(), rounds=2, batch_size=8)
    >>> [h["round"] for h in history], history[-1]["clients"]
    ([1, 2], 8)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.utils.rnn import pad_sequence

from veil.errors import UnsupportedError
from veil.fl.strategies.base import FitRes, Parameters, Strategy
from veil.serde.keras_torch import is_keras

__all__ = ["fit_cohort", "simulate", "unstack"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _order(n: int, seed: int, server_round: int, client: int, epoch: int) -> torch.Tensor:
    """The order a client visits its examples in one epoch (the same in both modes)."""
    gen = torch.Generator().manual_seed(hash((seed, server_round, client, epoch)) & (2**62 - 1))
    return torch.randperm(n, generator=gen)


def _fit_one(model: nn.Module, start: Parameters, x: torch.Tensor, y: torch.Tensor, *,
             epochs: int, batch_size: int, lr: float, loss_fn: Loss, seed: int,
             server_round: int, client: int) -> tuple[Parameters, float]:  # fmt: skip
    with torch.no_grad():
        for p, v in zip(model.parameters(), start):
            p.copy_(v)
    total, steps = 0.0, 0
    for epoch in range(epochs):
        for idx in _order(len(y), seed, server_round, client, epoch).split(batch_size):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.sub_(lr * p.grad)
            total, steps = total + float(loss.detach()), steps + 1
    return [p.detach().clone() for p in model.parameters()], total / max(steps, 1)


def fit_cohort(model: nn.Module, start: Parameters, data: Sequence[tuple[torch.Tensor, torch.Tensor]],
               ids: Sequence[int], *, epochs: int, batch_size: int, lr: float, loss_fn: Loss,
               seed: int, server_round: int) -> tuple[Parameters, list[float]]:  # fmt: skip
    """Train the clients ``ids`` (whose data are ``data``, in the same order) from ``start`` as
    one batched computation: each SGD step of the whole cohort is one ``vmap`` of
    ``functional_call`` over the stacked parameters and one backward pass, each client's
    minibatch gathered from the cohort's concatenated data, padded and masked.

    It computes what training each client alone computes (``simulate(batched=False)``), on
    the same minibatches, to float tolerance; the Ray backend runs it on chunks of a cohort.

    Returns:
        The clients' new parameters stacked (one tensor ``[len(ids), *shape]`` per
        parameter) and each client's mean training loss.

    Example:
        >>> import torch
        >>> data = [(torch.randn(5, 3), torch.randint(0, 2, (5,))) for _ in range(4)]
        >>> model = torch.nn.Linear(3, 2)
        >>> start = [p.detach() for p in model.parameters()]
        >>> stacked, losses = fit_cohort(model, start, data, [0, 1, 2, 3], epochs=1,
        ...     batch_size=2, lr=0.1, loss_fn=F.cross_entropy, seed=0, server_round=1)
        >>> [tuple(t.shape) for t in stacked], len(losses)
        ([(4, 2, 3), (4, 2)], 4)
    """
    names = [n for n, _ in model.named_parameters()]
    k = len(ids)
    params = {n: v.detach().unsqueeze(0).repeat(k, *[1] * v.dim()) for n, v in zip(names, start)}
    buffers = dict(model.named_buffers())

    def forward(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (xb,))

    # Only the forward pass is vmapped; the loss is taken on the flattened cohort (a plain
    # call: under vmap torch decomposes cross_entropy in Python, importing sympy on first
    # use). Client i's loss depends on its own parameters only, so the gradient of the
    # cohort's summed loss with respect to the stacked parameters is every client's own
    # gradient: one backward pass (``torch.func.grad`` would pull in torch._dynamo).
    cohort_forward = vmap(forward)

    def cohort_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        out = cohort_forward(p, xb)
        per = loss_fn(out.flatten(0, 1), yb.flatten(0, 1), reduction="none")  # type: ignore[call-arg]
        per = per.reshape(mask.shape[0], mask.shape[1], -1).mean(2)
        return (per * mask).sum(1) / mask.sum(1).clamp(min=1)

    sizes = torch.tensor([len(y) for _, y in data])
    xs = torch.cat([x for x, _ in data])
    ys = torch.cat([y for _, y in data])
    offsets = (torch.cumsum(sizes, 0) - sizes).unsqueeze(1)
    steps = math.ceil(int(sizes.max()) / batch_size)
    losses = torch.zeros(k, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    for epoch in range(epochs):
        orders = [_order(len(y), seed, server_round, c, epoch) for (_, y), c in zip(data, ids)]
        padded = torch.full((k, steps * batch_size), -1, dtype=torch.int64)
        padded[:, : int(sizes.max())] = pad_sequence(orders, batch_first=True, padding_value=-1)
        valid = padded >= 0
        rows = torch.where(valid, padded + offsets, 0)  # padding reads row 0, masked out
        for s in range(steps):
            cols = slice(s * batch_size, (s + 1) * batch_size)
            idx, mask = rows[:, cols], valid[:, cols].to(torch.float32)
            active = (mask.sum(1) > 0).to(torch.float32)
            leaves = [params[n].detach().requires_grad_() for n in names]
            lv = cohort_loss(dict(zip(names, leaves)), xs[idx], ys[idx], mask)
            g = dict(zip(names, torch.autograd.grad(lv.sum(), leaves, allow_unused=True)))
            with torch.no_grad():
                losses += lv.detach().double() * active.double()
                counts += active.double()
                for n in names:
                    shape = (k,) + (1,) * (params[n].dim() - 1)
                    if g[n] is not None:  # None: a parameter the loss does not use
                        params[n] = params[n] - lr * g[n] * active.view(shape)
    return [params[n].detach() for n in names], (losses / counts.clamp(min=1)).tolist()


def unstack(stacked: Parameters) -> list[Parameters]:
    """Per-client parameter lists from ``fit_cohort``'s stacked tensors (views, no copies).

    Example:
        >>> import torch
        >>> [[t.tolist() for t in ps] for ps in unstack([torch.tensor([[1.0], [2.0]])])]
        [[[1.0]], [[2.0]]]
    """
    return [list(ps) for ps in zip(*(t.unbind(0) for t in stacked))]


def _chunks(ids: Sequence[int], size: int | None) -> list[list[int]]:
    size = size or max(len(ids), 1)
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def simulate(model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
             strategy: Strategy, rounds: int, local_epochs: int = 1, batch_size: int = 32,
             lr: float = 0.1, loss_fn: Loss = F.cross_entropy, batched: bool = True,
             seed: int = 0, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
             dropout: float = 0.0, progress: bool = False, backend: str = "inprocess",
             ray_address: str | None = None,
             chunk_size: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Train ``model`` federated over ``client_data`` (one ``(x, y)`` per client) for
    ``rounds`` rounds of ``strategy``; local training is plain minibatch SGD.

    Returns the history: per round its number, the clients that trained, their mean training
    loss, the seconds it took (``seconds``), of which local training (``train_seconds``: the
    cohort's batched steps, the per-client loop, or the Ray tasks), and what
    ``evaluate(model)`` returns (the model holds the round's global parameters). ``model``
    ends with the last global parameters.

    ``loss_fn`` is a torch functional loss (it takes ``reduction=``; the batched cohort
    needs each example's loss). ``dropout``: the chance that a sampled client drops out
    mid-round (its update never arrives; the strategy aggregates the others and is told of
    the failures; seeded). ``progress=True`` shows a progress bar.

    ``backend="inprocess"`` trains here; ``backend="ray"`` (``pip install 'veil[ray]'``)
    trains each round's cohort as Ray tasks of ``chunk_size`` clients on the cluster at
    ``ray_address`` (see :mod:`veil.fl.ray_backend`). ``chunk_size`` caps the clients trained
    as one batched computation (memory grows with it); ``None``: the whole cohort in
    process, one chunk per CPU on Ray. The same ``seed`` and ``chunk_size`` give the same
    numbers on both backends.

    Raises:
        ValueError: bad sizes or settings.
        ImportError: ``backend="ray"`` without Ray installed.
    """
    if rounds < 1 or local_epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("rounds, local_epochs and batch_size must be >= 1 and lr > 0")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if backend not in ("inprocess", "ray"):
        raise ValueError(f"backend must be 'inprocess' or 'ray', got {backend!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if backend == "ray" and not batched:
        raise ValueError("backend='ray' trains batched cohorts; drop batched=False")
    if is_keras(model):  # Keras reads its own variables: functional_call cannot batch them
        if backend == "ray":
            raise UnsupportedError(
                "backend='ray' trains batched cohorts with torch.func, which cannot swap a "
                "Keras model's variables; simulate a Keras model in process (backend='inprocess')"
            )
        batched = False
    drops = torch.Generator().manual_seed(seed + 1)
    data = [(x, y) for x, y in client_data]
    if not data or any(len(x) != len(y) or len(y) == 0 for x, y in data):
        raise ValueError("every client needs as many labels as examples, and at least one")
    cohort: Any = None
    if backend == "ray":
        from veil.fl.ray_backend import RayCohort

        cohort = RayCohort(model, data, fit=fit_cohort, address=ray_address,
                           chunk_size=chunk_size)  # fmt: skip
    params = [p.detach().clone() for p in model.parameters()]
    clients = list(range(len(data)))
    history: list[dict[str, Any]] = []
    bar: Any = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("federated rounds", total=rounds)
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        plan = strategy.configure_fit(r, params, clients)
        ids = [int(c) for c, _ in plan]
        start = plan[0][1].parameters if plan else params
        kw = dict(epochs=local_epochs, batch_size=batch_size, lr=lr, loss_fn=loss_fn, seed=seed,
                  server_round=r)  # fmt: skip
        t1 = time.perf_counter()
        new: list[Parameters] = []
        losses: list[float] = []
        if cohort is not None:
            new, losses = cohort.fit(start, ids, **kw)
        elif batched:
            for chunk in _chunks(ids, chunk_size):
                stacked, chunk_losses = fit_cohort(model, start, [data[c] for c in chunk], chunk,
                                                   **kw)  # type: ignore[arg-type]  # fmt: skip
                new.extend(unstack(stacked))
                losses.extend(chunk_losses)
        else:
            for c in ids:
                got, loss = _fit_one(model, start, *data[c], client=c, **kw)  # type: ignore[arg-type]
                new.append(got)
                losses.append(loss)
        trained = time.perf_counter() - t1
        gone = (torch.rand(len(ids), generator=drops) < dropout).tolist() if dropout else []
        results = [FitRes(got, len(data[c][1]))
                   for i, (got, c) in enumerate(zip(new, ids)) if not (gone and gone[i])]  # fmt: skip
        failures: list[BaseException] = [
            ConnectionError(f"client {c} dropped out in round {r}")
            for i, c in enumerate(ids) if gone and gone[i]
        ]  # fmt: skip
        if not results:
            raise RuntimeError(f"every sampled client dropped out in round {r}")
        params = strategy.aggregate_fit(r, results, failures)
        with torch.no_grad():
            for p, v in zip(model.parameters(), params):
                p.copy_(v)
        row: dict[str, Any] = {"round": r, "clients": len(results), "dropped": len(failures),
                               "loss": sum(losses) / max(len(losses), 1),
                               "seconds": time.perf_counter() - t0,
                               "train_seconds": trained}  # fmt: skip
        if evaluate is not None:
            row.update(evaluate(model))
        history.append(row)
        if bar is not None:
            bar.update(task, advance=1, description=f"round {r}: loss {row['loss']:.4f}")
    if bar is not None:
        bar.stop()
    return history
