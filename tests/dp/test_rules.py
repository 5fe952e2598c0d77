"""The rule registry and the op-facts table agree; rules refuse what they do not know; intervals are certified."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.dp import intervals as iv
from veil.dp.bounds import RULES, Call, register_rule
from veil.dp.sensitivity import Aggregate, Rowwise, Unbounded, propagate
from veil.ops import default_registry
from veil.ops.torch_ops import DP_RULES


def test_every_rule_name_of_the_op_facts_has_a_rule_and_back() -> None:
    named = {
        spec.facts.dp for spec in default_registry().specs.values() if spec.facts and spec.facts.dp
    }
    assert named <= set(RULES), f"op facts name rules nobody implements: {named - set(RULES)}"
    assert set(DP_RULES.values()) == set(RULES), "a rule no op names, or a name without a rule"


def test_the_registry_refuses_a_second_rule_of_a_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_rule("add")(lambda call: None)


def test_in_place_and_functional_variants_get_no_rule_unless_listed() -> None:
    reg = default_registry()
    assert reg.get("Tensor.add_").facts.dp == ""  # type: ignore[union-attr]
    assert reg.get("F.relu").facts.dp == "relu"  # type: ignore[union-attr]
    assert reg.get("F.softplus").facts.dp == ""  # type: ignore[union-attr]


def _x() -> tuple[torch.Tensor, Rowwise]:
    x = torch.rand(6, 2)
    return x, Rowwise.for_asset(1, x, [(0.0, 1.0)], 1)


@pytest.mark.parametrize(
    ("rule", "args", "kwargs", "result"),
    [
        ("add", ("X", 1.0), {"bogus": 1}, lambda x: x + 1),
        ("add", ("X", 1.0), {"out": None}, lambda x: x + 1),
        ("sum", ("X",), {"out": None}, lambda x: x.sum()),
        ("sum", ("X", 0, False, torch.float64), {}, lambda x: x.sum(0)),  # dtype is keyword-only
        ("relu", ("X",), {"inplace": True}, lambda x: x.relu()),
        ("round", ("X",), {"decimals": 2.5}, lambda x: x.round()),
        ("div", ("X", 2.0), {"rounding_mode": "round"}, lambda x: x / 2),
        ("histc", ("X",), {}, lambda x: torch.histc(x)),  # the range comes from the data
        ("histc", ("X",), {"bins": 4, "min": 1.0, "max": 1.0}, lambda x: torch.histc(x, 4, 1, 1)),
        ("reshape", ("X", torch.int32), {}, lambda x: x.view(torch.int32)),
        ("pow", ("X", torch.tensor(2.0)), {}, lambda x: x**2),  # a tensor exponent
        ("index", ("X", "X"), {}, lambda x: x[:, 0]),  # a private index
        ("cast", ("X",), {"device": "meta"}, lambda x: x.float()),
        ("same", ("X", 3), {}, lambda x: x.clone()),
        ("attribute", ("X", "T"), {}, lambda x: x.T),
        ("matmul", (torch.ones(3, 6), "X"), {}, lambda x: torch.ones(3, 6) @ x),  # mixes rows
    ],
)
def test_rules_refuse_what_they_do_not_know(rule: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                                            result: Any) -> None:  # fmt: skip
    x, b = _x()
    real = tuple(x if a == "X" else a for a in args)
    out = propagate(rule, real, kwargs, {id(x): b}.get, result(x))
    assert isinstance(out, Unbounded), out


def test_rules_never_read_private_values() -> None:
    x, b = _x()
    meta = torch.empty(6, 2, device="meta")  # the node passes the result's shape and dtype only
    out = propagate("mul", (x, 3.0), {}, {id(x): b}.get, meta)
    assert isinstance(out, Rowwise) and float(out.value.hi.max()) >= 3.0
    seen = []

    @register_rule("_spy_for_this_test")
    def spy(call: Call) -> None:
        seen.extend(a for a in call.args if isinstance(a, torch.Tensor))
        return None

    try:
        propagate("_spy_for_this_test", (x, torch.ones(2)), {}, {id(x): b}.get, meta)
        assert all(t is not x for t in seen) and isinstance(spy, object)
    finally:
        RULES.pop("_spy_for_this_test")


# ------------------------------------------------------------------ intervals
FLOATS = st.floats(allow_nan=False, width=64)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(FLOATS, min_size=1, max_size=8),
    st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
def test_rounding_out_holds_every_rounding(values: list[float], dtype: torch.dtype) -> None:
    x = np.asarray(values)
    out = iv.round_out(iv.Interval(x, x), dtype)
    cast = torch.from_numpy(x).to(dtype).double().numpy()
    assert bool(np.all((out.lo <= cast) & (cast <= out.hi)))
    assert bool(np.all((out.lo <= x) & (x <= out.hi)))


@settings(max_examples=1000, deadline=None)
@given(FLOATS, FLOATS, FLOATS, FLOATS)
def test_float_arithmetic_encloses_the_exact_result(a: float, b: float, c: float, d: float) -> None:
    from fractions import Fraction

    lo1, hi1 = sorted((a, b))
    lo2, hi2 = sorted((c, d))
    p, q = iv.Interval.of(lo1, hi1), iv.Interval.of(lo2, hi2)
    ops: list[tuple[Any, Any]] = [(iv.add, lambda u, v: u + v), (iv.sub, lambda u, v: u - v),
                                  (iv.mul, lambda u, v: u * v)]  # fmt: skip
    if lo2 > 0 or hi2 < 0:
        ops.append((iv.div, lambda u, v: u / v))
    for op, f in ops:
        r = op(p, q)
        for u in (lo1, hi1):
            for v in (lo2, hi2):
                if math.isinf(u) or math.isinf(v):
                    continue
                exact = f(Fraction(u), Fraction(v))
                lo, hi = float(r.lo), float(r.hi)
                assert lo == -math.inf or Fraction(lo) <= exact
                assert hi == math.inf or exact <= Fraction(hi)


def test_point_intervals_stay_points() -> None:
    a = iv.Interval.of(0.5, 0.5)
    assert float(iv.add(a, a).lo) == float(iv.add(a, a).hi) == 1.0
    assert float(iv.mul(a, iv.Interval.of(4.0, 4.0)).hi) == 2.0


def test_zero_times_infinity_is_flagged() -> None:
    assert iv.mul(iv.Interval.of(0.0, 1.0), iv.Interval.of(1.0, math.inf)).nan
    assert not iv.mul(iv.Interval.of(1.0, 2.0), iv.Interval.of(1.0, math.inf)).nan
    assert iv.add(iv.Interval.of(-math.inf, 0.0), iv.Interval.of(0.0, math.inf)).nan


def test_integers_are_exact_and_wrap_into_their_dtype() -> None:
    big = iv.Interval.of(np.asarray(2**62, dtype=np.int64), np.asarray(2**62 + 1, dtype=np.int64))
    assert iv.fit(iv.sub(big, iv.Interval.point(2**62)), torch.int64)[0].hi.tolist() == 1
    out, wrapped = iv.fit(iv.mul(big, iv.Interval.point(4)), torch.int64)
    assert wrapped and (int(out.lo), int(out.hi)) == (-(2**63), 2**63 - 1)
    out, kind = iv.cast(iv.Interval.of(0.0, 300.0), torch.float32, torch.int8)
    assert kind == "range" and (int(out.lo), int(out.hi)) == (-128, 127)
    out, kind = iv.cast(iv.Interval.of(-1.5, 100.7), torch.float32, torch.int8)
    assert kind == "trunc" and (int(out.lo), int(out.hi)) == (-1, 100)


def test_a_sum_may_wrap_and_is_bounded_by_the_range_then() -> None:
    x = torch.zeros(200)
    b = Rowwise.for_asset(1, x, [(0, 1)], 1)
    count = torch.empty(200, dtype=torch.bool)
    t = propagate("compare", (x, 0.5), {}, {id(x): b}.get, count)
    assert isinstance(t, Rowwise)
    s = propagate(
        "sum",
        (count,),
        {"dtype": torch.int8},
        {id(count): t}.get,
        torch.empty((), dtype=torch.int8),
    )
    assert isinstance(s, Aggregate) and s.l1 == 255.0
