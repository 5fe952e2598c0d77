"""Hospitals for federation tests: VirtualWorker nodes holding a split of load_digits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits

import veil

SCIENTIST, PASSWORD = "sci@lab.org", "scientist-pw-1"


@dataclass
class Hospitals:
    """Owners and the scientist's handles on each node, and the data (white-box checks)."""

    owners: list[Any]
    scientist: list[Any]
    parts: list[tuple[torch.Tensor, torch.Tensor]]
    test: tuple[torch.Tensor, torch.Tensor]

    def approve(self, requests: list[Any]) -> None:
        for owner, req in zip(self.owners, requests):
            owner.requests.approve(req.id)

    def budgets(self, epsilon: float, delta: float = 1e-5) -> None:
        for owner in self.owners:
            owner.budgets.set(SCIENTIST, "digits", epsilon=epsilon, delta=delta)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    return (torch.tensor(x / 16.0, dtype=torch.float32)[order], torch.tensor(y)[order])


def make_hospitals(sizes: list[int], test: int = 297) -> Hospitals:
    x, y = digits()
    owners, sci, parts, at = [], [], [], 0
    for i, n in enumerate(sizes):
        xi, yi = x[at : at + n], y[at : at + n]
        at += n
        owner = veil.VirtualWorker(f"hospital{i}")
        gen = torch.Generator().manual_seed(100 + i)
        mock = {"x": torch.rand(xi.shape, generator=gen), "y": torch.randint(0, 10, yi.shape)}
        owner.datasets.create("digits", private={"x": xi, "y": yi}, mock=mock)
        owner.create_user(SCIENTIST, PASSWORD, role="data_scientist")
        owners.append(owner)
        sci.append(owner.login(SCIENTIST, PASSWORD))
        parts.append((xi, yi))
    return Hospitals(owners, sci, parts, (x[-test:], y[-test:]))


@pytest.fixture
def hospitals() -> Callable[..., Hospitals]:
    return make_hospitals


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


@pytest.fixture(name="mlp")
def mlp_fixture() -> Callable[..., torch.nn.Module]:
    return mlp
