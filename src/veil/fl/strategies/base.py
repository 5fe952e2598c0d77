"""The strategy ABC: one federated round as a template (configure, fit, aggregate, evaluate)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: A model's parameters as a list of tensors, in ``state_dict`` order.
Parameters = list[torch.Tensor]


@dataclass(frozen=True, slots=True)
class FitIns:
    """What a client is asked to do in a round: train from ``parameters`` with ``config``."""

    parameters: Parameters
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FitRes:
    """A client's answer: its new parameters, how many examples it trained on, metrics."""

    parameters: Parameters
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvaluateRes:
    """A client's evaluation: its loss and metrics on ``num_examples`` examples."""

    loss: float
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Strategy(ABC):
    """How a federation trains, one round at a time (Flower's template, in veil's types).

    A round is :meth:`configure_fit` (which clients train, on what), the clients' fits,
    :meth:`aggregate_fit` (the new global parameters), then optionally
    :meth:`configure_evaluate` / :meth:`aggregate_evaluate` on clients and
    :meth:`evaluate` on the server. Subclasses implement :meth:`aggregate_fit`; wrappers
    (secure aggregation, DP) hold a strategy rather than patching it.

    Example:
        >>> import torch
        >>> from veil.fl.strategies import FedAvg
        >>> s = FedAvg()
        >>> res = [FitRes([torch.tensor([1.0])], 1), FitRes([torch.tensor([4.0])], 2)]
        >>> s.aggregate_fit(1, res, [])[0]
        tensor([3.])
    """

    @abstractmethod
    def configure_fit(self, server_round: int, parameters: Parameters,
                      clients: Sequence[Any]) -> list[tuple[Any, FitIns]]:  # fmt: skip
        """The clients that train this round and what each is asked."""

    @abstractmethod
    def aggregate_fit(self, server_round: int, results: Sequence[FitRes],
                      failures: Sequence[BaseException]) -> Parameters:  # fmt: skip
        """The new global parameters from the clients' results (failures: dropped clients)."""

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           clients: Sequence[Any]) -> list[tuple[Any, FitIns]]:  # fmt: skip
        """The clients that evaluate this round (none by default)."""
        return []

    def aggregate_evaluate(self, server_round: int,
                           results: Sequence[EvaluateRes]) -> tuple[float, dict[str, float]]:  # fmt: skip
        """The clients' evaluations combined: loss and metrics weighted by examples."""
        total = sum(r.num_examples for r in results)
        if not total:
            return float("nan"), {}
        loss = sum(r.loss * r.num_examples for r in results) / total
        keys = set().union(*(r.metrics for r in results))
        metrics = {
            k: sum(r.metrics.get(k, 0.0) * r.num_examples for r in results) / total for k in keys
        }
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, float]] | None:  # fmt: skip
        """A central evaluation of the global parameters (None: none)."""
        return None


def weighted_mean(results: Sequence[FitRes]) -> Parameters:
    """The examples-weighted mean of the clients' parameters (FedAvg's aggregate).

    Example:
        >>> import torch
        >>> weighted_mean([FitRes([torch.ones(2)], 3), FitRes([torch.zeros(2)], 1)])[0]
        tensor([0.7500, 0.7500])
    """
    if not results:
        raise ValueError("no client results to aggregate")
    total = sum(r.num_examples for r in results)
    if total <= 0:
        raise ValueError("the clients trained on no examples")
    first = results[0].parameters
    out = []
    for i in range(len(first)):
        acc = torch.zeros_like(first[i], dtype=torch.float64)
        for r in results:
            acc += r.parameters[i].to(torch.float64) * (r.num_examples / total)
        out.append(acc.to(first[i].dtype))
    return out


def check_fraction(name: str, value: float) -> float:
    """A fraction in (0, 1], else a ValueError that says what is expected."""
    if not 0 < value <= 1:
        raise ValueError(
            f"{name} must be in (0, 1], got {value}; 0.1 samples a tenth of the clients"
        )
    return float(value)


Evaluate = Callable[[int, Parameters], tuple[float, dict[str, float]] | None]
