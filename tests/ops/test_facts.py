"""The op-facts table: every allowlisted op declares what it writes, reveals and costs."""

from __future__ import annotations

import torch

import veil  # noqa: F401 - registers the MPC and HE ops too
from veil.ops import OpFacts, default_registry
from veil.ops.registry import UNDECLARED, OpRegistry, OpSpec


def test_every_allowlisted_op_declares_its_facts() -> None:
    missing = [
        n for n, s in default_registry().specs.items() if s.facts is None or s.facts is UNDECLARED
    ]
    assert not missing, f"declare OpFacts for: {missing[:20]}"


def test_an_op_registered_without_facts_is_caught() -> None:
    reg = OpRegistry()
    reg.register(OpSpec("torch.add", torch.add))
    spec = reg.get("torch.add")
    assert spec.facts is UNDECLARED
    assert spec.facts.size == "meta" and spec.facts.pipeline == "never" and not spec.facts.dp


def test_facts_are_consistent() -> None:
    for name, spec in default_registry().specs.items():
        facts = spec.facts
        assert isinstance(facts, OpFacts), name
        if spec.effect == "node":  # node ops say where private objects may appear
            assert facts.private_args is not None, name
            assert facts.pipeline == "never", name
        else:
            assert facts.private_args is None, name
        if spec.effect in ("inplace", "step") or (facts.writes and not facts.write_switch):
            assert not facts.dp, f"{name} writes: its result has no sensitivity rule"
        if facts.write_switch:
            assert facts.writes, name


def test_value_shaped_ops_are_declared() -> None:
    reg = default_registry()
    for name in ("torch.nonzero", "Tensor.unique", "torch.masked_select", "torch.bincount"):
        facts = reg.get(name).facts
        assert facts is not None and facts.shape_values is not None, name
        assert facts.pipeline == "never", name
    x = torch.arange(4)
    getitem = reg.get("Tensor.__getitem__").facts
    assert getitem is not None and getitem.shape_values is not None
    assert getitem.shape_values([x, slice(1, 3)], {}) == [1, 3]
    assert getitem.shape_values([x, x > 1], {})[0].dtype == torch.bool
