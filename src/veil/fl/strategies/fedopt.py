"""FedOpt (Reddi et al. 2021): the server applies an adaptive optimizer to the clients' mean update.

Each round the pseudo-gradient is ``delta = mean(client parameters) - global``; the server
keeps moments ``m`` and ``v`` and steps ``x <- x + eta * m / (sqrt(v) + tau)`` with
``m <- beta1 * m + (1 - beta1) * delta`` and ``v`` by the variant:

* FedAdagrad: ``v <- v + delta^2``;
* FedAdam: ``v <- beta2 * v + (1 - beta2) * delta^2``;
* FedYogi: ``v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from veil.fl.strategies.base import FitRes, Parameters, weighted_mean
from veil.fl.strategies.fedavg import FedAvg


class FedOpt(FedAvg):
    """The FedOpt family's common part (use :class:`FedAdagrad`, :class:`FedAdam` or
    :class:`FedYogi`).

    Args:
        eta: the server's learning rate; ``tau``: adaptivity (numerical floor under ``sqrt(v)``);
        beta_1, beta_2: moment decay rates; the rest as :class:`FedAvg`.
    """

    variant = ""

    def __init__(self, *, eta: float = 1e-1, tau: float = 1e-9, beta_1: float = 0.9,
                 beta_2: float = 0.99, **kwargs: Any) -> None:  # fmt: skip
        if eta <= 0 or tau <= 0:
            raise ValueError(f"eta and tau must be > 0, got eta={eta}, tau={tau}")
        if not (0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ValueError(f"beta_1 and beta_2 must be in [0, 1), got {beta_1}, {beta_2}")
        super().__init__(**kwargs)
        self.eta, self.tau, self.beta_1, self.beta_2 = float(eta), float(tau), beta_1, beta_2
        self.m: Parameters | None = None
        self.v: Parameters | None = None
        self.current: Parameters | None = None

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate_fit(self, server_round: int, results: Sequence[FitRes],
                      failures: Sequence[BaseException]) -> Parameters:  # fmt: skip
        mean = weighted_mean(results)
        if self.current is None:
            raise ValueError(
                f"{type(self).__name__} needs the global parameters before a round: call "
                "configure_fit first (a Federation does)"
            )
        delta = [a.double() - c.double() for a, c in zip(mean, self.current)]
        if self.m is None or self.v is None:
            self.m = [torch.zeros_like(d) for d in delta]
            self.v = [torch.zeros_like(d) for d in delta]
        out = []
        for i, d in enumerate(delta):
            self.m[i] = self.beta_1 * self.m[i] + (1 - self.beta_1) * d
            self.v[i] = self._second_moment(self.v[i], d * d)
            step = self.eta * self.m[i] / (self.v[i].sqrt() + self.tau)
            out.append((self.current[i].double() + step).to(self.current[i].dtype))
        self.current = [t.clone() for t in out]
        return out

    def configure_fit(self, server_round: int, parameters: Parameters,
                      clients: Sequence[Any]) -> list[tuple[Any, Any]]:  # fmt: skip
        self.current = [t.detach().clone() for t in parameters]
        return super().configure_fit(server_round, parameters, clients)


class FedAdagrad(FedOpt):
    """FedOpt with Adagrad's second moment (``v += delta^2``).

    Example:
        >>> import torch
        >>> s = FedAdagrad(eta=0.1, tau=1e-9)
        >>> _ = s.configure_fit(1, [torch.zeros(1)], [0, 1])
        >>> s.aggregate_fit(1, [FitRes([torch.ones(1)], 1), FitRes([torch.ones(1)], 1)], [])[0]
        tensor([0.0100])
    """

    variant = "adagrad"

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v + d2


class FedAdam(FedOpt):
    """FedOpt with Adam's second moment (``v = beta2 v + (1 - beta2) delta^2``)."""

    variant = "adam"

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return self.beta_2 * v + (1 - self.beta_2) * d2


class FedYogi(FedOpt):
    """FedOpt with Yogi's second moment (``v -= (1 - beta2) delta^2 sign(v - delta^2)``)."""

    variant = "yogi"

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta_2) * d2 * torch.sign(v - d2)
