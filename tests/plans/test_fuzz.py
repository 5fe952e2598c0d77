"""Fuzzed plan messages are refused with an error, never crash the node, and leave it serving."""

from __future__ import annotations

import msgspec
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import veil
from veil.errors import VeilError
from veil.node import capability
from veil.serde.messages import GetInfo, ListArg, Ref, RunOp, TupleArg
from veil.serde.plans import PlanStored, StorePlan, encode_plan

_W = veil.VirtualWorker("fuzz")
_SCI = None


def _sci():
    global _SCI
    if _SCI is None:
        _W.create_user("f@t.org", "fuzz-pass-123")
        _SCI = _W.login("f@t.org", "fuzz-pass-123")
    return _SCI


def _valid() -> bytes:
    net = torch.nn.Linear(3, 2)
    p = veil.plan(lambda x, y: (net(x) * y).relu().sum(1)).build(torch.ones(2, 3), torch.ones(2, 2))
    return encode_plan(p.spec)


_VALID = _valid()


def _store(data: bytes) -> None:
    try:
        capability.call(_sci(), "plans", "store", StorePlan(data), PlanStored)
    except VeilError:
        pass  # refused with one of veil's errors: fine


def _alive() -> None:
    assert _sci().call(GetInfo()).name == "fuzz"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=400))
def test_random_bytes_as_a_plan_are_refused(data: bytes) -> None:
    _store(data)
    _alive()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(flips=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)),
                      min_size=1, max_size=6))  # fmt: skip
def test_mutated_plans_are_refused_or_run_safely(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for i, b in flips:
        data[i] = b
    try:
        stored = capability.call(_sci(), "plans", "store", StorePlan(bytes(data)), PlanStored)
    except VeilError:
        _alive()
        return
    x, y = torch.ones(2, 3).send(_sci()), torch.ones(2, 2).send(_sci())
    try:  # a mutated plan that still checks out runs under the rules, or is refused
        _sci().call_op("plans.run", stored.hash, [], [x, y])
    except VeilError:
        pass
    _alive()


ARG = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.text(max_size=70),
        st.builds(Ref, st.integers(-5, 2**63 - 1)),
    ),  # fmt: skip
    lambda inner: st.one_of(
        st.builds(ListArg, st.lists(inner, max_size=4)),
        st.builds(TupleArg, st.lists(inner, max_size=4)),
    ),  # fmt: skip
    max_leaves=10,
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(args=st.lists(ARG, max_size=5), kwargs=st.dictionaries(st.sampled_from(
    ["repeat", "state", "args", "plan_hash", "x"]), ARG, max_size=3))  # fmt: skip
def test_fuzzed_plan_runs_are_refused_without_crashing(args: list, kwargs: dict) -> None:
    stored = capability.call(_sci(), "plans", "store", StorePlan(_VALID), PlanStored)
    if args and isinstance(args[0], str) and len(args) > 1:
        args[0] = stored.hash
    try:
        _sci().call(RunOp("plans.run", args, kwargs))
    except VeilError:
        pass
    _alive()


def test_a_valid_plan_still_runs_after_the_fuzzing() -> None:
    stored = capability.call(_sci(), "plans", "store", StorePlan(_VALID), PlanStored)
    assert msgspec.msgpack.decode(_VALID)["name"] == "<lambda>"
    x, y = torch.ones(2, 3).send(_sci()), torch.ones(2, 2).send(_sci())
    with pytest.raises(VeilError, match="state"):  # its model was not given
        _sci().call_op("plans.run", stored.hash, [], [x, y])
