"""In-process simulation of federated training: many clients, bounded memory, one batched cohort.

:func:`simulate` runs a :class:`~veil.fl.strategies.Strategy` over clients that are just
datasets in this process. A client's model exists only while it trains. With
``batched=True`` the clients of a round that share the model's architecture train as one
computation: their parameters are stacked and every local SGD step of the whole cohort is one
``torch.func.vmap`` over ``torch.func.grad`` of ``functional_call``, with each client's
minibatch padded and masked. It computes what the Python loop (``batched=False``) computes,
on the same minibatches, to float tolerance.

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
from torch.func import functional_call, grad, vmap

from veil.fl.strategies.base import FitRes, Parameters, Strategy

__all__ = ["simulate"]

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


def _fit_cohort(model: nn.Module, start: Parameters, data: list[tuple[torch.Tensor, torch.Tensor]],
                ids: list[int], *, epochs: int, batch_size: int, lr: float, loss_fn: Loss,
                seed: int, server_round: int) -> tuple[list[Parameters], list[float]]:  # fmt: skip
    names = [n for n, _ in model.named_parameters()]
    k = len(ids)
    params = {n: v.detach().unsqueeze(0).repeat(k, *[1] * v.dim()) for n, v in zip(names, start)}
    buffers = dict(model.named_buffers())

    def example_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        out = functional_call(model, (p, buffers), (xb,))
        per = loss_fn(out, yb, reduction="none")  # type: ignore[call-arg]
        if per.dim() > 1:
            per = per.flatten(1).mean(1)
        return (per * mask).sum() / mask.sum().clamp(min=1)

    step = vmap(grad(example_loss))
    loss_of = vmap(example_loss)
    sizes = [len(data[c][1]) for c in ids]
    per_epoch = [math.ceil(n / batch_size) for n in sizes]
    losses = torch.zeros(k, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    x0, y0 = data[ids[0]]
    for epoch in range(epochs):
        orders = [_order(n, seed, server_round, c, epoch) for n, c in zip(sizes, ids)]
        for s in range(max(per_epoch)):
            xb = torch.zeros(k, batch_size, *x0.shape[1:], dtype=x0.dtype)
            yb = torch.zeros(k, batch_size, *y0.shape[1:], dtype=y0.dtype)
            mask = torch.zeros(k, batch_size)
            for i, c in enumerate(ids):
                idx = orders[i][s * batch_size : (s + 1) * batch_size]
                if len(idx):
                    xb[i, : len(idx)] = data[c][0][idx]
                    yb[i, : len(idx)] = data[c][1][idx]
                    mask[i, : len(idx)] = 1
            active = (mask.sum(1) > 0).to(torch.float32)
            with torch.no_grad():
                lv = loss_of(params, xb, yb, mask)
            losses += lv.double() * active.double()
            counts += active.double()
            g = step(params, xb, yb, mask)
            with torch.no_grad():
                for n in names:
                    shape = (k,) + (1,) * (params[n].dim() - 1)
                    params[n] = params[n] - lr * g[n] * active.view(shape)
    out = [[params[n][i].clone() for n in names] for i in range(k)]
    return out, (losses / counts.clamp(min=1)).tolist()


def simulate(model: nn.Module, client_data: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
             strategy: Strategy, rounds: int, local_epochs: int = 1, batch_size: int = 32,
             lr: float = 0.1, loss_fn: Loss = F.cross_entropy, batched: bool = True,
             seed: int = 0, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
             dropout: float = 0.0, progress: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Train ``model`` federated over ``client_data`` (one ``(x, y)`` per client) for
    ``rounds`` rounds of ``strategy``; local training is plain minibatch SGD.

    Returns the history: per round its number, the clients that trained, their mean training
    loss, the seconds it took, and what ``evaluate(model)`` returns (the model holds the
    round's global parameters). ``model`` ends with the last global parameters.

    ``loss_fn`` is a torch functional loss (it takes ``reduction=``; the batched cohort
    needs each example's loss). ``dropout``: the chance that a sampled client drops out
    mid-round (its update never arrives; the strategy aggregates the others and is told of
    the failures; seeded). ``progress=True`` shows a progress bar.

    Raises:
        ValueError: bad sizes or settings.
    """
    if rounds < 1 or local_epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("rounds, local_epochs and batch_size must be >= 1 and lr > 0")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    drops = torch.Generator().manual_seed(seed + 1)
    data = [(x, y) for x, y in client_data]
    if not data or any(len(x) != len(y) or len(y) == 0 for x, y in data):
        raise ValueError("every client needs as many labels as examples, and at least one")
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
        if batched:
            new, losses = _fit_cohort(model, start, data, ids, **kw)  # type: ignore[arg-type]
        else:
            new, losses = [], []
            for c in ids:
                got, loss = _fit_one(model, start, *data[c], client=c, **kw)  # type: ignore[arg-type]
                new.append(got)
                losses.append(loss)
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
                               "seconds": time.perf_counter() - t0}  # fmt: skip
        if evaluate is not None:
            row.update(evaluate(model))
        history.append(row)
        if bar is not None:
            bar.update(task, advance=1, description=f"round {r}: loss {row['loss']:.4f}")
    if bar is not None:
        bar.stop()
    return history
