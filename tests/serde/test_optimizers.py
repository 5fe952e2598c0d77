"""Optimizers <-> OptimizerSpec: every allowlisted class round-trips its state, with no pickle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil.errors import OpNotAllowed, SerdeError
from veil.ops.modules import OPTIMIZER_CLASSES
from veil.serde import codec
from veil.serde.messages import OptimizerSpec, ParamRef
from veil.serde.optimizers import optimizer_to_spec, spec_to_optimizer


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(4, 3, generator=gen)).pow(2).sum().backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZER_CLASSES))
def test_every_allowlisted_optimizer_continues_where_it_stopped(name: str) -> None:
    cls = OPTIMIZER_CLASSES[name]
    torch.manual_seed(1)
    model, twin = nn.Linear(3, 2), nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.05}]
    opt = cls(groups, lr=0.01)
    twin_opt = cls([{"params": [twin.weight]}, {"params": [twin.bias], "lr": 0.05}], lr=0.01)
    _steps(model, opt, 2)
    _steps(twin, twin_opt, 2)

    names = {id(model.weight): "weight", id(model.bias): "bias"}
    spec = optimizer_to_spec(opt, lambda p: ParamRef(1, names[id(p)]))
    spec = codec.decode_stored(codec.encode(spec))  # through bytes, as the store keeps it
    assert isinstance(spec, OptimizerSpec)
    again = spec_to_optimizer(spec, lambda ref: getattr(model, ref.slot))
    assert again.param_groups[1]["params"][0] is model.bias
    _steps(model, again, 2)
    _steps(twin, twin_opt, 2)
    for got, want in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_parameters_no_object_holds_travel_inside_the_description() -> None:
    w = torch.ones(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5, momentum=0.5)
    w.sum().backward()
    opt.step()
    again = spec_to_optimizer(codec.decode_stored(codec.encode(optimizer_to_spec(opt))))
    (p,) = again.param_groups[0]["params"]
    assert p is not w and p.requires_grad and torch.equal(p, w)
    assert torch.equal(again.state[p]["momentum_buffer"], opt.state[w]["momentum_buffer"])


def test_a_description_that_does_not_fit_is_refused_clearly() -> None:
    w = torch.ones(2, requires_grad=True)
    spec = optimizer_to_spec(torch.optim.SGD([w], lr=0.1))
    with pytest.raises(OpNotAllowed, match="allowlist"):
        spec_to_optimizer(OptimizerSpec("Pickled", spec.groups))
    with pytest.raises(SerdeError, match="state for 3 parameters"):
        spec_to_optimizer(OptimizerSpec("SGD", spec.groups, spec.defaults, [{}, {}, {}]))
    with pytest.raises(SerdeError, match="refers to no objects"):
        spec_to_optimizer(OptimizerSpec("SGD", [spec.groups[0].__class__([ParamRef(7)])]))
