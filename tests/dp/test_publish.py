"""Publish decides from public facts only: bad arguments, failed ops, constant values."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import veil
from veil.dp import samplers
from veil.dp.sensitivity import Aggregate
from veil.errors import InvalidRequest, UnboundedSensitivity
from veil.node import Node
from veil.serde.messages import Publish

OWNER, OWNER_PW = "owner@pub.test", "owner-pw-123"
SCI, SCI_PW = "ds@pub.test", "scientist-pw-1"


def _setup(
    data: torch.Tensor | None = None, bounds: Any = ((0, 100), (0, 1))
) -> tuple[Node, Any, Any]:
    node = Node("clinic", owner_email=OWNER, owner_password=OWNER_PW)
    owner = veil.VirtualWorker(node=node)
    if data is None:
        data = torch.stack([torch.linspace(20, 80, 60), (torch.arange(60) % 2).float()], 1)
    owner.datasets.create("p", private=data, mock=torch.zeros_like(data), bounds=list(bounds))
    owner.create_user(SCI, SCI_PW)
    owner.budgets.set(SCI, "p", epsilon=100.0, delta=1e-6)
    sci = owner.login(SCI, SCI_PW)
    return node, sci, sci.datasets["p"].private


@pytest.mark.parametrize(
    ("epsilon", "delta", "named"),
    [
        (1e-300, 0.0, "epsilon"),
        (1e300, 0.0, "epsilon"),
        (math.nan, 0.0, "epsilon"),
        (math.inf, 0.0, "epsilon"),
        (-1.0, 0.0, "epsilon"),
        (0.0, 0.0, "epsilon"),
        (1e-300, 1e-6, "epsilon"),
        (0.5, math.nan, "delta"),
        (0.5, 1.0, "delta"),
        (0.5, -1e-9, "delta"),
        (0.5, math.inf, "delta"),
    ],
)
def test_bad_arguments_get_a_typed_error_naming_them(
    epsilon: float, delta: float, named: str
) -> None:
    _, sci, x = _setup()
    s = x[:, 1].sum()
    with pytest.raises(InvalidRequest, match=named):
        sci.call(Publish(s.id, epsilon, delta))
    assert sci.budgets.list()[0].releases == 0  # nothing charged


def test_a_failed_op_publishes_like_a_healthy_one(monkeypatch: pytest.MonkeyPatch) -> None:
    node, sci, x = _setup()
    healthy, failed = x[:, 1].sum(), x[:, 1].sum()
    rec = node._objects[failed.id]
    rec.error, rec.value = "RuntimeError on private values", torch.zeros_like(rec.value)
    assert (
        node.capability_state("dp").bounds[failed.id].l1
        == node.capability_state("dp").bounds[healthy.id].l1
    )  # type: ignore[union-attr]
    out = []
    for y in (healthy, failed):
        monkeypatch.setattr(samplers, "_DEFAULT", samplers.SeededSource(7))  # the same noise
        out.append(y.publish(epsilon=0.5))
    (b,) = sci.budgets.list()
    assert b.releases == 2 and b.spent_epsilon == pytest.approx(1.0)  # charged alike
    # the same noise around 30 (the count) and around 0 (the placeholder)
    assert float(out[0] - out[1]) == pytest.approx(30.0, abs=1e-2)


def test_a_failed_op_with_an_out_of_range_placeholder_is_clipped() -> None:
    node, sci, x = _setup()
    y = x[:, 0].clamp(30, 40).mean()  # always in [30, 40]
    rec = node._objects[y.id]
    rec.error, rec.value = "failed", torch.zeros_like(rec.value)  # 0 is outside [30, 40]
    assert 20 < float(y.publish(epsilon=5.0)) < 50  # noise around 30, the public clip of 0


def test_nan_and_infinity_never_reach_the_sampler() -> None:
    node, sci, x = _setup()
    y = x[:, 1].sum()
    rec = node._objects[y.id]
    for bad in (math.nan, math.inf, -math.inf):
        rec.value = torch.tensor(bad)  # a value outside its own bound: clipped, never sampled
        assert math.isfinite(float(y.publish(epsilon=1.0)))


def test_a_value_with_one_possible_value_is_released_exactly() -> None:
    node, sci, x = _setup()
    z = x[:, 1].clamp(5, 5).long().sum()  # every row is 5: the sum is 300, whatever the data
    b = node.capability_state("dp").bounds[z.id]
    assert isinstance(b, Aggregate) and b.l1 == 0.0
    assert float(z.publish(epsilon=0.1)) == 300.0
    f = x[:, 1].clamp(5, 5).sum()  # the same in float32: its rounding error is not 0
    assert node.capability_state("dp").bounds[f.id].l1 > 0  # type: ignore[union-attr]


def test_a_tiny_sensitivity_still_gets_noise() -> None:
    node, sci, x = _setup()
    y = x[:, 1].double().sum() * 1e-300  # tiny, but not zero: noise, on a usable grid
    out = y.publish(epsilon=1.0)
    assert math.isfinite(float(out))


def test_nan_values_are_refused_for_what_they_are() -> None:
    _, sci, x = _setup()
    with pytest.raises(UnboundedSensitivity, match="NaN"):
        (x[:, 1] * math.inf).sum().publish(epsilon=1.0)  # 0 * inf
