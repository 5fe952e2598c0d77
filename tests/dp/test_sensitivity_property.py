"""Property test of sensitivity tracking: random programs on bounded datasets, brute-force neighbours.

Hypothesis draws a dataset (dtype, shape, declared bounds or none, rows per subject), a
short program over the ops that carry a DP rule (random public operands, dtypes,
broadcasting shapes and keywords), and neighbours (one subject's rows replaced by other
in-bound values, the bounds' extremes included). Every op runs as a node runs it (the
allowlisted callable, its rule read from the op-facts table), on the dataset and on each
neighbour. Then, for every result the tracker calls bounded:

* every value on every neighbour lies in the tracked interval (NaN only if flagged);
* a row-wise result changes in at most ``k`` rows;
* the observed L1 and L2 change never exceeds the tracked sensitivity;
* the bound is the same when computed from a neighbour's run (public facts only).

``VEIL_FUZZ_EXAMPLES`` sets the number of programs and ``VEIL_FUZZ_SECONDS`` a time limit
(``make fuzz`` sets both).
Counterexamples found here become explicit tests in ``test_sensitivity_gaps.py``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from veil.dp.bounds import Aggregate, Rowwise, bound_to_json
from veil.dp.intervals import Interval
from veil.dp.sensitivity import propagate
from veil.ops import default_registry

#: ``make test`` runs a fixed sample (about 20 s); ``make fuzz`` sets ``VEIL_FUZZ_EXAMPLES``
#: (and ``VEIL_FUZZ_SECONDS``, the time to spend) and explores new programs on every run.
FUZZ = os.environ.get("VEIL_FUZZ_EXAMPLES")
EXAMPLES = int(FUZZ or "1000")
SECONDS = float(os.environ.get("VEIL_FUZZ_SECONDS", "0"))  # 0: no time limit
_START = time.monotonic()
REG = default_registry()

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_DTYPES = [torch.int64, torch.int32, torch.int8, torch.uint8, torch.int16]
FLOATS = [0.0, 1.0, -1.0, 0.5, 0.1, 2.0, 3.0, 100.0, -100.0, 1e-3, 1e10, 1e30, -1e30, 3e38,
          65504.0, 1e-40, 88.0, 89.0, 2.0**24, 2.0**53, -0.5, 7.5, 1e-160, -1e-200, 1e300]  # fmt: skip
INTS = [0, 1, -1, 2, 3, 7, 127, 128, 255, 1000, -1000, 2**31, 2**62, -(2**62), 2**63 - 1, -(2**63)]


# ------------------------------------------------------------------ datasets
def _representable(v: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(v, dtype=torch.float64).to(dtype).to(torch.float64))


@st.composite
def datasets(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["float", "float", "int", "bool"]))
    dtype = (
        draw(st.sampled_from(FLOAT_DTYPES)) if kind == "float"
        else draw(st.sampled_from(INT_DTYPES)) if kind == "int" else torch.bool
    )  # fmt: skip
    n = draw(st.integers(1, 7))
    cols = draw(st.sampled_from([None, 1, 2, 3]))
    shape = (n,) if cols is None else (n, cols)
    ncol = 1 if cols is None else cols
    declared = draw(st.booleans()) or kind == "bool" or draw(st.booleans())
    bounds: list[tuple[float, float]] | None = None
    if declared:
        bounds = []
        for _ in range(ncol):
            if kind == "float":
                a, b = sorted(
                    _representable(draw(st.sampled_from(FLOATS)), dtype) for _ in range(2)
                )
                if not (math.isfinite(a) and math.isfinite(b)):
                    a, b = 0.0, 1.0
            elif kind == "int":
                info = torch.iinfo(dtype)
                a, b = sorted(
                    min(max(draw(st.sampled_from(INTS)), info.min), info.max) for _ in range(2)
                )
            else:
                a, b = 0, 1
            bounds.append((a, b))
        if cols is None or (len(set(bounds)) == 1 and draw(st.booleans())):
            bounds = bounds[:1]
    k = draw(st.integers(1, 3))
    subjects = [i // k for i in range(n)]
    seed = draw(st.integers(0, 2**32 - 1))
    return {"dtype": dtype, "shape": shape, "bounds": bounds, "k": k, "subjects": subjects,
            "seed": seed, "kind": kind}  # fmt: skip


def _column_bounds(ds: dict[str, Any]) -> list[tuple[float, float]]:
    shape, bounds = ds["shape"], ds["bounds"]
    ncol = 1 if len(shape) == 1 else shape[1]
    if bounds is None:
        return []
    return bounds * ncol if len(bounds) == 1 else bounds


def _values(ds: dict[str, Any], rng: np.random.Generator, rows: int, mode: str) -> torch.Tensor:
    """``rows`` rows inside the declared bounds (``mode``: random, lo, hi, mixed)."""
    shape = (rows, *ds["shape"][1:])
    dtype, cb = ds["dtype"], _column_bounds(ds)
    ncol = 1 if len(shape) == 1 else shape[1]
    out = np.empty((rows, ncol), dtype=object)
    for j in range(ncol):
        if cb:
            lo, hi = cb[j]
        elif dtype.is_floating_point:
            lo, hi = -1e30, 1e30
        elif dtype == torch.bool:
            lo, hi = 0, 1
        else:
            info = torch.iinfo(dtype)
            lo, hi = int(info.min), int(info.max)
        for i in range(rows):
            m = mode if mode != "mixed" else rng.choice(["random", "lo", "hi"])
            if m == "lo":
                v: Any = lo
            elif m == "hi":
                v = hi
            elif dtype.is_floating_point:
                v = (
                    lo + (hi - lo) * float(rng.random())
                    if math.isfinite(hi - lo)
                    else float(rng.normal()) * 1e30
                )
                if not cb and rng.random() < 0.15:
                    v = float(rng.choice([math.nan, math.inf, -math.inf]))
            else:
                v = lo + int(rng.integers(0, 2**62)) % (int(hi) - int(lo) + 1)
            out[i, j] = v
    if dtype.is_floating_point:
        t = torch.tensor(out.astype(np.float64)).to(dtype)
        if cb:  # rounding into the dtype may leave the bounds: back inside, in the dtype
            lo_t = torch.tensor([c[0] for c in cb], dtype=torch.float64).to(dtype)
            hi_t = torch.tensor([c[1] for c in cb], dtype=torch.float64).to(dtype)
            t = torch.maximum(torch.minimum(t, hi_t), lo_t)
    else:
        t = torch.tensor(
            [[int(v) for v in row] for row in out],
            dtype=torch.int64 if dtype != torch.uint8 else torch.int64,
        )
        t = t.to(dtype)
    return t.reshape(shape)


def _neighbours(
    ds: dict[str, Any], x: torch.Tensor, rng: np.random.Generator, count: int
) -> list[torch.Tensor]:
    subjects = np.asarray(ds["subjects"])
    out = []
    for i in range(count):
        s = int(rng.choice(subjects))
        rows = np.flatnonzero(subjects == s)
        y = x.clone()
        mode = ["lo", "hi", "random", "mixed"][i % 4]
        y[torch.from_numpy(rows)] = _values(ds, rng, len(rows), mode)
        out.append(y)
    return out


# ------------------------------------------------------------------ programs
def _public_like(draw: Any, v: torch.Tensor, rng: np.random.Generator) -> Any:
    """A public operand: a number, or a tensor of a shape that broadcasts with ``v``."""
    choice = draw(st.sampled_from(["int", "float", "tensor", "tensor", "bool"]))
    if choice == "int":
        return draw(st.sampled_from(INTS[:12]))
    if choice == "float":
        return draw(st.sampled_from(FLOATS))
    if choice == "bool":
        return draw(st.booleans())
    shapes = [
        (),
        (1,),
        tuple(v.shape[-1:]),
        tuple(v.shape),
        (3, *v.shape),
        (1000,) if v.dim() == 0 else (2, *v.shape),
    ]
    if v.dim() == 1:
        shapes.append((v.shape[0], 1))
    shape = draw(st.sampled_from(shapes))
    dt = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16, v.dtype]))
    vals = rng.choice(np.asarray(FLOATS[:12]), size=shape)
    t = torch.tensor(vals, dtype=torch.float64)
    return t.to(dt) if dt.is_floating_point else t.round().clamp(-1000, 1000).to(dt)


def _step(
    draw: Any, v: torch.Tensor, rng: np.random.Generator
) -> tuple[str, list[Any], dict[str, Any]]:
    """One op applied to the current value ``v`` (marked "V" in args; "X" is the dataset)."""
    family = draw(st.sampled_from(["binary", "binary", "unary", "unary", "cast", "reduce", "reduce",
                                   "index", "shape", "compare", "clamp", "self", "matmul"]))  # fmt: skip
    if family == "binary":
        op = draw(st.sampled_from(["__add__", "__sub__", "__mul__", "__truediv__", "__rsub__",
                                   "__radd__", "__rmul__", "__floordiv__", "__rtruediv__",
                                   "__rfloordiv__"]))  # fmt: skip
        return f"Tensor.{op}", ["V", _public_like(draw, v, rng)], {}
    if family == "self":
        op = draw(st.sampled_from(["torch.add", "torch.sub", "torch.mul", "torch.div", "torch.gt"]))
        other = draw(st.sampled_from(["V", "X"]))
        kwargs: dict[str, Any] = {}
        if op in ("torch.add", "torch.sub") and draw(st.booleans()):
            kwargs["alpha"] = draw(st.sampled_from([2, -1, 0.5, 3]))
        if op == "torch.div":
            kwargs["rounding_mode"] = draw(st.sampled_from([None, "floor", "trunc"]))
        return op, ["V", other], kwargs
    if family == "unary":
        op = draw(st.sampled_from(["neg", "abs", "square", "sqrt", "exp", "sigmoid", "tanh", "relu",
                                   "floor", "ceil", "trunc", "round", "pow", "nan_to_num"]))  # fmt: skip
        if op == "round":
            d = draw(st.sampled_from([None, 0, 1, 2, -1, 5]))
            return "Tensor.round", ["V"], ({} if d is None else {"decimals": d})
        if op == "pow":
            return (
                "Tensor.pow",
                ["V", draw(st.sampled_from([0, 1, 2, 3, 0.5, -1, -2, 2.5, 1.5]))],
                {},
            )
        if op == "nan_to_num":
            return (
                "Tensor.nan_to_num",
                ["V"],
                draw(st.sampled_from([{}, {"nan": 0.0, "posinf": 1.0, "neginf": -1.0}])),
            )
        return f"Tensor.{op}", ["V"], {}
    if family == "cast":
        op = draw(st.sampled_from(["float", "double", "half", "bfloat16", "int", "long", "short", "char",
                                   "byte", "bool", "to"]))  # fmt: skip
        if op == "to":
            return (
                "Tensor.to",
                ["V", draw(st.sampled_from([*FLOAT_DTYPES, *INT_DTYPES, torch.bool]))],
                {},
            )
        return f"Tensor.{op}", ["V"], {}
    if family == "reduce":
        op = draw(st.sampled_from(["sum", "sum", "mean", "nansum", "count_nonzero", "histc"]))
        if op == "histc":
            lo = draw(st.sampled_from([0.0, -1.0, 0.0]))
            return (
                "torch.histc",
                ["V"],
                {
                    "bins": draw(st.integers(1, 5)),
                    "min": lo,
                    "max": lo + draw(st.sampled_from([1.0, 100.0])),
                },
            )
        kwargs = {}
        if v.dim() and draw(st.booleans()):
            kwargs["dim"] = draw(st.sampled_from([0, -1, (0,), tuple(range(v.dim()))]))
            if op != "count_nonzero" and draw(st.booleans()):
                kwargs["keepdim"] = True
        if op in ("sum", "mean") and draw(st.booleans()):
            kwargs["dtype"] = draw(
                st.sampled_from(
                    [torch.float64, torch.float32, torch.int8, torch.int64, torch.float16]
                )
            )
        return f"Tensor.{op}", ["V"], kwargs
    if family == "index":
        n = v.shape[0] if v.dim() else 1
        choice = draw(
            st.sampled_from(
                ["slice", "col", "list", "dup", "mask", "none", "ellipsis", "int", "step"]
            )
        )
        if choice == "slice":
            idx: Any = slice(draw(st.integers(0, n)), None)
        elif choice == "step":
            idx = slice(None, None, draw(st.integers(1, 3)))
        elif choice == "col":
            idx = (slice(None), 0)
        elif choice == "list":
            idx = [int(i) for i in rng.integers(0, max(n, 1), size=draw(st.integers(1, 4)))]
        elif choice == "dup":
            idx = [0] * draw(st.sampled_from([2, 7, 50]))
        elif choice == "mask":
            idx = torch.from_numpy(rng.random(n) < 0.5) if v.dim() else torch.tensor(True)
        elif choice == "none":
            idx = None
        elif choice == "ellipsis":
            idx = (Ellipsis, 0)
        else:
            idx = 0
        return "Tensor.__getitem__", ["V", idx], {}
    if family == "shape":
        choice = draw(st.sampled_from(["flat", "rows", "flatten", "viewdtype", "t1"]))
        if choice == "flat":
            return "Tensor.reshape", ["V", -1], {}
        if choice == "rows":
            return "Tensor.reshape", ["V", (v.shape[0] if v.dim() else 1, -1)], {}
        if choice == "flatten":
            return "Tensor.flatten", ["V"], {}
        if choice == "t1":
            return "Tensor.view", ["V", (1, -1)], {}
        return (
            "Tensor.view",
            ["V", draw(st.sampled_from([torch.int32, torch.int16, torch.uint8]))],
            {},
        )
    if family == "compare":
        op = draw(st.sampled_from(["__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__"]))
        return f"Tensor.{op}", ["V", _public_like(draw, v, rng)], {}
    if family == "clamp":
        op = draw(st.sampled_from(["clamp", "clamp", "clip", "clamp_min", "clamp_max"]))
        if op in ("clamp_min", "clamp_max"):
            return f"Tensor.{op}", ["V", _public_like(draw, v, rng)], {}
        lo = _public_like(draw, v, rng)
        hi = draw(st.sampled_from([None, 1.0, 100.0])) if not isinstance(lo, torch.Tensor) else None
        return f"Tensor.{op}", ["V", lo, hi], {}
    # matmul with a public matrix, or F.linear
    d = v.shape[-1] if v.dim() else 1
    w = torch.tensor(
        rng.choice([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], size=(d, 2)),
        dtype=v.dtype if v.is_floating_point() else torch.float32,
    )
    if draw(st.booleans()):
        return "Tensor.__matmul__", ["V", w], {}
    return "F.linear", ["V", w.t().contiguous()], {"bias": torch.ones(2, dtype=w.dtype)}


# ------------------------------------------------------------------ checks
def _as_objects(t: torch.Tensor) -> np.ndarray:  # type: ignore[type-arg]
    if t.is_floating_point():
        return t.to(torch.float64).numpy().astype(object)
    return np.asarray(t.to(torch.int64).tolist(), dtype=object).reshape(tuple(t.shape))


def _inside(value: Interval, t: torch.Tensor, rowwise: bool) -> str | None:
    v = _as_objects(t)
    full = tuple(t.shape)
    lo = np.broadcast_to(np.asarray(value.lo).astype(object), full)
    hi = np.broadcast_to(np.asarray(value.hi).astype(object), full)
    for idx in np.ndindex(*full) if full else [()]:
        x, a, b = v[idx], lo[idx], hi[idx]
        if isinstance(x, float) and math.isnan(x):
            if not value.nan:
                return f"NaN not flagged ({t.dtype})"
            continue
        if not (a <= x <= b):
            return f"{x!r} outside [{a!r}, {b!r}] at {idx} ({t.dtype})"
    return None


def _change(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, int]:
    """L1, L2 of b - a (exact for integers; NaN positions: infinite), and rows changed."""
    x, y = _as_objects(a), _as_objects(b)
    diffs = []
    rows_changed = set()
    for idx in np.ndindex(*x.shape) if x.shape else [()]:
        p, q = x[idx], y[idx]
        pn = isinstance(p, float) and math.isnan(p)
        qn = isinstance(q, float) and math.isnan(q)
        if pn and qn:
            continue
        if pn or qn:
            d: Any = math.inf
        elif isinstance(p, float) and math.isinf(p) and p == q:
            d = 0
        else:
            d = abs(q - p)
        if d:
            diffs.append(d)
            if idx:
                rows_changed.add(idx[0])
    if all(isinstance(d, int) for d in diffs):
        s2 = sum(d * d for d in diffs)
        return float(sum(diffs)), (math.sqrt(s2) if s2 < 2**1000 else math.inf), len(rows_changed)
    try:
        l1 = math.fsum(float(d) for d in diffs)
    except OverflowError:
        l1 = math.inf
    l2 = math.hypot(*(float(d) for d in diffs))
    return l1, l2, len(rows_changed)


def _check(bound: Any, base: torch.Tensor, runs: list[torch.Tensor], where: str) -> None:
    if isinstance(bound, Rowwise):
        for t in [base, *runs]:
            bad = _inside(bound.value, t, True)
            assert bad is None, f"{where}: row-wise interval does not hold: {bad}"
        agg = bound.as_aggregate(tuple(base.shape))
        for t in runs:
            l1, l2, rows = _change(base, t)
            assert rows <= bound.k, f"{where}: {rows} rows changed, tracked k={bound.k}"
            assert l1 <= agg.l1 * (1 + 1e-9), f"{where}: L1 change {l1} > tracked {agg.l1}"
            assert l2 <= agg.l2 * (1 + 1e-9), f"{where}: L2 change {l2} > tracked {agg.l2}"
    elif isinstance(bound, Aggregate):
        for t in [base, *runs]:
            bad = _inside(bound.value, t, False)
            assert bad is None, f"{where}: interval does not hold: {bad}"
        if bound.value.nan:
            return
        for t in runs:
            l1, l2, _ = _change(base, t)
            assert l1 <= bound.l1 * (1 + 1e-9), f"{where}: L1 change {l1} > tracked {bound.l1}"
            assert l2 <= bound.l2 * (1 + 1e-9), f"{where}: L2 change {l2} > tracked {bound.l2}"


def _sub(args: list[Any], v: torch.Tensor, x: torch.Tensor) -> list[Any]:
    out = []
    for a in args:
        if isinstance(a, str) and a == "V":
            out.append(v)
        elif isinstance(a, str) and a == "X":
            out.append(x)
        else:
            out.append(a)
    return out


class _Run:
    """A program under way: the dataset, its neighbours, the current value on each and its bound."""

    def __init__(self, ds: dict[str, Any]) -> None:
        self.ds = ds
        self.rng = np.random.default_rng(ds["seed"])
        self.x = _values(ds, self.rng, ds["shape"][0], "mixed")
        self.neigh = _neighbours(ds, self.x, self.rng, 6)
        self.b0 = Rowwise.for_asset(1, self.x, ds["bounds"], ds["k"])
        _check(self.b0, self.x, self.neigh, "the dataset")
        self.cur, self.cur_n = self.x, self.neigh
        self.bound: Any = self.b0
        self.trail: list[str] = []

    def step(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> bool:
        """Run one op on the dataset and every neighbour and check its bound; False when the
        op fails on the dataset (public facts) and nothing changed."""
        spec = REG.get(name)
        x, cur = self.x, self.cur
        try:
            out = spec.fn(*_sub(args, cur, x), **kwargs)
        except Exception:  # noqa: BLE001 - fails on public facts: try another op
            return False
        if not isinstance(out, torch.Tensor) or out.is_complex():
            return False
        outs = []
        for c, xn in zip(self.cur_n, self.neigh, strict=True):
            try:
                outs.append(spec.fn(*_sub(args, c, xn), **kwargs))
            except Exception:  # noqa: BLE001 - fails on private values: the node's affair
                outs = []
                break
        if not outs:
            assume(False) if currently_in_test_context() else pytest.fail(
                f"{name} fails on a neighbour"
            )
        rule = spec.facts.dp if spec.facts else ""
        of = {id(cur): self.bound, id(x): self.b0}.get
        new = propagate(rule, tuple(_sub(args, cur, x)), kwargs, of, out)
        shown = tuple(
            a if not isinstance(a, torch.Tensor) else ("tensor", tuple(a.shape), a.dtype)
            for a in args
        )
        self.trail.append(f"{name}{shown} {kwargs}")
        ds = self.ds
        where = (
            " -> ".join(self.trail)
            + f" [{ds['dtype']}, {ds['shape']}, bounds={ds['bounds']}, k={ds['k']}]"
        )
        if currently_in_test_context():
            event(f"{rule or name}: {type(new).__name__}")
        if isinstance(new, Rowwise | Aggregate):
            _check(new, out, outs, where)
            # the same bound from a neighbour's run: it depends on public facts only
            n_of = {id(self.cur_n[0]): self.bound, id(self.neigh[0]): self.b0}.get
            again = propagate(
                rule, tuple(_sub(args, self.cur_n[0], self.neigh[0])), kwargs, n_of, outs[0]
            )
            same = isinstance(again, Rowwise | Aggregate) and bound_to_json(again) == bound_to_json(
                new
            )
            assert same, where
        self.cur, self.cur_n = out, outs
        self.bound = new if isinstance(new, Rowwise | Aggregate) else None
        return True


def _program(data: st.DataObject) -> None:
    run = _Run(data.draw(datasets()))
    for _ in range(data.draw(st.integers(1, 6))):
        run.step(*_step(data.draw, run.cur, run.rng))
        if run.bound is None:
            break


def _ds(
    dtype: torch.dtype, shape: tuple[int, ...], bounds: Any, k: int = 1, seed: int = 0
) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "bounds": bounds, "k": k, "seed": seed,
            "subjects": [i // k for i in range(shape[0])], "kind": ""}  # fmt: skip


_W = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, 1.0]])

#: Counterexamples the property found, each a program that broke an earlier version.
REGRESSIONS: dict[str, tuple[dict[str, Any], list[tuple[str, list[Any], dict[str, Any]]]]] = {
    # a finite value times 2 overflows to inf; floor division of inf is NaN (through fmod)
    "floor_division_of_an_overflow": (
        _ds(
            torch.float32,
            (1, 3),
            [(0.0, 0.0), (0.0, _representable(3e38, torch.float32)), (0.0, 0.0)],
        ),
        [("F.linear", ["V", _W], {"bias": torch.ones(2)}), ("Tensor.__floordiv__", ["V", 1], {})],
    ),
    # two values near float32's max: their sum overflows before the mean divides it
    "mean_overflows_while_summing": (
        _ds(torch.float32, (1, 2), [(0.0, 0.0), (0.0, 1.0)]),
        [("Tensor.__add__", ["V", 3e38], {}), ("Tensor.mean", ["V"], {})],
    ),
    # a float16 sum is accumulated in float32, then rounded to float16 once more
    "half_sum_rounds_at_the_end": (
        _ds(torch.float16, (3, 3), [(0.0, 0.0), (0.0, 0.0), (0.0, 1.0)], seed=1),
        [("Tensor.nansum", ["V"], {})],
    ),
    # int16 values in float16: their sum may be inf, so no finite sensitivity holds
    "int16_sum_in_half_overflows": (
        _ds(torch.int16, (1, 2), None),
        [("Tensor.sum", ["V"], {"dtype": torch.float16})],
    ),
    # c / x is computed as x.reciprocal() * c: 1 / 1e-40 is inf in float32, and 0 * inf NaN
    "rtruediv_is_reciprocal_times": (
        _ds(torch.float32, (1,), [(_representable(1e-40, torch.float32), 1.0)]),
        [("Tensor.__rtruediv__", ["V", 0], {})],
    ),
    # numpy's own int64 inside object arrays wrapped silently: exact integers only
    "int64_square_wraps": (
        _ds(torch.int64, (1,), [(0, 2**62)]),
        [("Tensor.nansum", ["V"], {}), ("Tensor.square", ["V"], {})],
    ),
    # a sum of no rows is exactly 0, even of values that may be infinite
    "sum_of_no_rows": (
        _ds(torch.float32, (1,), None),
        [("Tensor.__getitem__", ["V", slice(1, None)], {}), ("Tensor.sum", ["V"], {})],
    ),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression(name: str) -> None:
    ds, steps = REGRESSIONS[name]
    run = _Run(ds)
    for step in steps:
        assert run.step(*step), f"{step[0]} failed on the dataset"


_settings = settings(
    max_examples=min(EXAMPLES, 500) if SECONDS else EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=FUZZ is None,
)
_property = _settings(given(st.data())(_program))


@pytest.mark.timeout(SECONDS + 600 if SECONDS else 300)  # make fuzz runs past pytest's limit
def test_tracked_sensitivity_bounds_every_neighbour() -> None:
    """The property, on ``EXAMPLES`` programs; under ``make fuzz``, batch after batch of new
    ones until ``VEIL_FUZZ_SECONDS`` are spent."""
    _property()
    while SECONDS and time.monotonic() - _START < SECONDS:
        _property()
