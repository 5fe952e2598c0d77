"""The Accountant ABC and registry; ``noise_multiplier_for`` by bisection over any accountant."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

__all__ = ["ACCOUNTANTS", "Accountant", "noise_multiplier_for", "register_accountant"]


class Accountant(ABC):
    """Tracks the privacy spent by a sequence of Poisson-subsampled Gaussian steps.

    ``history`` holds ``(noise_multiplier, sample_rate, steps)`` runs, merged when a step
    repeats the previous one's parameters (the common case in DP-SGD).
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps of the subsampled Gaussian mechanism."""
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            s, q, n = self.history[-1]
            self.history[-1] = (s, q, n + steps)
        elif steps:
            self.history.append((noise_multiplier, sample_rate, steps))

    @abstractmethod
    def get_epsilon(self, delta: float) -> float:
        """The ε of everything recorded so far, at ``delta``."""

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def __len__(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps})"


ACCOUNTANTS: dict[str, type[Accountant]] = {}


def register_accountant(cls: type[Accountant]) -> type[Accountant]:
    """Class decorator adding an accountant to :data:`ACCOUNTANTS` (refuses duplicate names)."""
    if cls.name in ACCOUNTANTS:
        raise ValueError(f"an accountant named {cls.name!r} is already registered")
    ACCOUNTANTS[cls.name] = cls
    return cls


def _make(accountant: str | type[Accountant]) -> Accountant:
    if isinstance(accountant, str):
        if accountant not in ACCOUNTANTS:
            raise ValueError(
                f"unknown accountant {accountant!r}; choose from {sorted(ACCOUNTANTS)}"
            )
        return ACCOUNTANTS[accountant]()
    return accountant()


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str | type[Accountant] = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (within ``tolerance``) whose ε after ``steps`` steps at
    ``sample_rate`` is at most ``target_epsilon``.

    Example:
        >>> s = noise_multiplier_for(target_epsilon=3.0, delta=1e-5, sample_rate=0.01, steps=1000)
        >>> 0.8 < s < 1.0
        True
    """
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")

    def eps(sigma: float) -> float:
        acc = _make(accountant)
        acc.step(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        return acc.get_epsilon(delta)

    lo, hi = 0.0, 10.0
    while eps(hi) > target_epsilon:
        hi *= 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
