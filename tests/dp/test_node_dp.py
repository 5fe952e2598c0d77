"""Automatic DP at the node: sensitivity tracking, publish, budgets and ledger — tests written as attacks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import veil
from veil.dp.sensitivity import Aggregate, Rowwise, propagate
from veil.errors import BudgetExceeded, InvalidRequest, PermissionDenied, UnboundedSensitivity
from veil.node import Node
from veil.node.store.sql import SQLStore
from veil.serde.messages import SetBudget

OWNER, OWNER_PW = "owner@dp.test", "owner-pw-123"
SCI, SCI_PW = "ds@dp.test", "scientist-pw-1"


def _setup(node: Node | None = None, *, bounds: object = [(0, 100), (0, 1)], budget: tuple[float, float] | None = (1.0, 1e-6),
           subjects: list[int] | None = None) -> tuple[veil.VirtualWorker, veil.VirtualWorker, torch.Tensor]:  # fmt: skip
    node = node or Node("clinic", owner_email=OWNER, owner_password=OWNER_PW)
    owner = veil.VirtualWorker(node=node)
    data = torch.stack([torch.linspace(20, 80, 60), (torch.arange(60) % 2).float()], 1)
    owner.datasets.create("patients", private=data, mock=torch.zeros(60, 2), columns=["age", "sick"],
                          bounds=bounds, subjects=subjects)  # type: ignore[arg-type]  # fmt: skip
    owner.create_user(SCI, SCI_PW)
    if budget is not None:
        owner.budgets.set(SCI, "patients", epsilon=budget[0], delta=budget[1])
    return owner, owner.login(SCI, SCI_PW), data


def test_publish_mean_is_close_and_charged() -> None:
    owner, sci, data = _setup()
    x = sci.datasets["patients"].private
    noisy = x[:, 0].mean().publish(epsilon=0.5)
    # sensitivity of the mean age: 100 / 60; Laplace scale 3.33: 10 scales is beyond chance
    assert abs(float(noisy) - float(data[:, 0].mean())) < 10 * (100 / 60) / 0.5
    (b,) = sci.budgets.list()
    assert b.releases == 1 and b.spent_epsilon == pytest.approx(0.5)
    with pytest.raises(PermissionDenied):
        x[:, 0].mean().get()  # publish did not make the exact value readable


def test_repeated_publishes_to_average_the_noise_away_stop_at_the_budget() -> None:
    owner, sci, _ = _setup(budget=(1.0, 0.0))
    x = sci.datasets["patients"].private[:, 1]
    released = []
    with pytest.raises(BudgetExceeded, match="over your budget"):
        for _ in range(100):
            released.append(x.sum().publish(epsilon=0.1))
    assert len(released) == 10  # pure ε composes by addition: 10 × 0.1
    # nothing more leaves, even for a tiny epsilon or another query on the same dataset
    with pytest.raises(BudgetExceeded):
        x.mean().publish(epsilon=1e-6)
    (b,) = owner.budgets.list()
    assert b.spent_epsilon == pytest.approx(1.0) and b.releases == 10


def test_gaussian_releases_compose_tighter_than_addition() -> None:
    owner, sci, _ = _setup(budget=(2.0, 1e-5))
    x = sci.datasets["patients"].private[:, 1]
    n = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(200):
            x.sum().publish(epsilon=0.5, delta=1e-7)
            n += 1
    assert n > 2.0 / 0.5  # basic composition would stop at 4 releases
    (b,) = sci.budgets.list()
    assert b.spent_epsilon <= 2.0 and b.releases == n


def test_a_scientist_cannot_raise_its_own_budget() -> None:
    owner, sci, _ = _setup(budget=(0.1, 0.0))
    with pytest.raises(PermissionDenied, match="only the node's owner"):
        sci.budgets.set(SCI, "patients", epsilon=1e9)
    with pytest.raises(PermissionDenied):
        sci.call(SetBudget(SCI, "patients", 1e9, 0.5))  # the raw message too
    assert [b.epsilon for b in owner.budgets.list()] == [0.1]


def test_no_budget_means_no_release() -> None:
    _, sci, _ = _setup(budget=None)
    with pytest.raises(BudgetExceeded, match="no privacy budget"):
        sci.datasets["patients"].private[:, 0].sum().publish(epsilon=0.1)


def test_unbounded_publishes_are_refused() -> None:
    owner, sci, _ = _setup(bounds=None)
    x = sci.datasets["patients"].private
    with pytest.raises(UnboundedSensitivity, match="NaN"):
        x[:, 0].sum().publish(epsilon=1.0)  # no declared bounds: any float, NaN included
    with pytest.raises(UnboundedSensitivity):
        torch.cumsum(x[:, 0].clamp(0, 1), 0).sum().publish(epsilon=1.0)  # no rule for cumsum
    with pytest.raises(UnboundedSensitivity):
        (x[:, 0].clamp(0, 1) * x[:, 0]).sum().publish(epsilon=1.0)  # times unbounded data
    # clamp keeps a NaN a NaN: a neighbour with one NaN row would make the sum NaN
    with pytest.raises(UnboundedSensitivity, match="nan_to_num"):
        x[:, 0].clamp(0, 100).sum().publish(epsilon=1.0)
    # replacing NaN, then clamping, gives a bound: this one is released
    assert x[:, 0].nan_to_num(0.0).clamp(0, 100).sum().publish(epsilon=1.0).shape == ()
    with pytest.raises(InvalidRequest, match="not private"):
        torch.ones(3).send(sci).publish(epsilon=1.0)


def test_writing_into_a_bounded_object_drops_its_bound() -> None:
    owner, sci, _ = _setup()
    y = sci.datasets["patients"].private[:, 0].clamp(0, 1)
    view = y[:10]
    y.mul_(1e6)  # writes past the bounds, also through the view
    for t in (y, view):
        with pytest.raises(UnboundedSensitivity):
            t.sum().publish(epsilon=0.1)


def test_duplicating_rows_through_a_public_index_counts_every_copy() -> None:
    node = Node("clinic", owner_email=OWNER, owner_password=OWNER_PW)
    owner, sci, _ = _setup(node)
    x = sci.datasets["patients"].private
    # one subject's row counted 60 times: 60 rows change when that subject is replaced
    idx = torch.zeros(60, dtype=torch.long).send(sci)
    s = x[idx][:, 0].sum()
    bound = node.capability_state("dp").bounds[s.id]
    assert isinstance(bound, Aggregate) and bound.l1 >= 60 * 100
    # a private index is another matter: which rows it picks is private
    with pytest.raises(UnboundedSensitivity):
        x[(x[:, 1] * 0).long()].sum().publish(epsilon=0.1)


def test_subjects_with_several_rows_scale_the_sensitivity() -> None:
    node = Node("clinic", owner_email=OWNER, owner_password=OWNER_PW)
    _, sci, _ = _setup(node, subjects=[i // 3 for i in range(60)])  # 3 rows per person
    s = sci.datasets["patients"].private[:, 1].sum()
    bound = node.capability_state("dp").bounds[s.id]
    # one person moves 3 rows of [0, 1], plus float32 summation error in any order
    # (60 terms: 2 · 60 · 2**-23 · 60 on the two sides)
    assert isinstance(bound, Aggregate)
    assert bound.l1 == pytest.approx(3.0, abs=2e-3) and bound.l1 > 3.0


def test_dataset_bounds_must_hold() -> None:
    node = Node("n", owner_email=OWNER, owner_password=OWNER_PW)
    owner = veil.VirtualWorker(node=node)
    with pytest.raises(InvalidRequest, match="outside the declared bounds"):
        owner.datasets.create(
            "d", private=torch.tensor([1.0, 5.0]), mock=torch.zeros(2), bounds=(0, 2)
        )


def test_restart_keeps_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    node = Node("clinic", store=SQLStore(url), owner_email=OWNER, owner_password=OWNER_PW)
    owner, sci, _ = _setup(node, budget=(0.3, 0.0))
    sci.datasets["patients"].private[:, 1].sum().publish(epsilon=0.2)
    node.close()
    node2 = Node("clinic", store=SQLStore(url))
    sci2 = veil.VirtualWorker(node=node2).login(SCI, SCI_PW)
    (b,) = sci2.budgets.list()
    assert (b.epsilon, b.releases) == (0.3, 1) and b.spent_epsilon == pytest.approx(0.2)
    x = sci2.datasets["patients"].private[:, 1]
    with pytest.raises(BudgetExceeded):
        x.sum().publish(epsilon=0.2)  # 0.2 + 0.2 > 0.3 after the restart too
    assert x.sum().publish(epsilon=0.1).shape == ()  # the asset's bounds came back
    node2.close()


def test_cli_sets_and_shows_budgets() -> None:
    from veil.cli import app
    from veil.node.server import serve_in_thread

    node = Node("cli-dp", owner_email=OWNER, owner_password=OWNER_PW)
    _setup(node, budget=None)
    env = {"VEIL_EMAIL": OWNER, "VEIL_PASSWORD": OWNER_PW}
    runner = CliRunner()
    with serve_in_thread(node) as url:
        r = runner.invoke(app, ["budgets", "set", "--user", SCI, "--dataset", "patients", "--epsilon",
                                "2.5", "--delta", "1e-6", "--url", url], env=env)  # fmt: skip
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["budgets", "show", "--url", url], env=env)
        assert r.exit_code == 0 and SCI in r.output and "2.5" in r.output
        sci = veil.connect(url, email=SCI, password=SCI_PW)  # publish over the network too
        try:
            assert sci.datasets["patients"].private[:, 1].sum().publish(epsilon=0.5).shape == ()
            with pytest.raises(UnboundedSensitivity):
                sci.datasets["patients"].private.cumsum(0).sum().publish(epsilon=0.5)
            assert sci.budgets.list()[0].releases == 1
        finally:
            sci.close()
        r = runner.invoke(app, ["budgets", "set", "--user", SCI, "--dataset", "patients", "--epsilon", "9",
                                "--url", url], env={"VEIL_EMAIL": SCI, "VEIL_PASSWORD": SCI_PW})  # fmt: skip
        assert r.exit_code == 1 and "only the node's owner" in r.output


# ------------------------------------------------------------------ sensitivity rules, brute force
W = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64)
OPS = [
    ("sum", lambda x: x.sum(), "Tensor.sum", lambda x: (x,)),
    ("mean0", lambda x: x.mean(0), "Tensor.mean", lambda x: (x, 0)),
    ("count", lambda x: (x > 0.5).sum(), None, None),
    ("affine_sum", lambda x: (x * 3 - 1).sum(0), None, None),
    ("linear_map", lambda x: (x @ W).sum(0), None, None),
    ("clip_sum", lambda x: x.clamp(0.2, 0.7).sum(), None, None),
    ("hist", lambda x: torch.histc(x[:, 0], bins=4, min=0, max=1), None, None),
]


def _rule(op: str) -> str:
    from veil.ops import default_registry

    facts = default_registry().get(op).facts
    assert facts is not None
    return facts.dp


def _track(fn_name: str, x: torch.Tensor, b: Rowwise) -> tuple[torch.Tensor, object]:
    """Run the op chain through propagate, op by op, as the node does (rules by the op facts)."""
    bounds = {id(x): b}
    calls = {
        "sum": [("Tensor.sum", lambda t: t.sum(), ())],
        "mean0": [("Tensor.mean", lambda t: t.mean(0), (0,))],
        "count": [("Tensor.__gt__", lambda t: t > 0.5, (0.5,)), ("Tensor.sum", lambda t: t.sum(), ())],
        "affine_sum": [("Tensor.__mul__", lambda t: t * 3, (3,)), ("Tensor.__sub__", lambda t: t - 1, (1,)),
                       ("Tensor.sum", lambda t: t.sum(0), (0,))],
        "linear_map": [("Tensor.__matmul__", lambda t: t @ W,
                        (W,)), ("Tensor.sum", lambda t: t.sum(0), (0,))],
        "clip_sum": [("Tensor.clamp", lambda t: t.clamp(0.2, 0.7), (0.2, 0.7)), ("Tensor.sum", lambda t: t.sum(), ())],
        "hist": [("Tensor.__getitem__", lambda t: t[:, 0], ((slice(None), 0),)),
                 ("torch.histc", lambda t: torch.histc(t, bins=4, min=0, max=1), ())],
    }[fn_name]  # fmt: skip
    cur = x
    for op, fn, extra in calls:
        out = fn(cur)
        kwargs = {"bins": 4, "min": 0, "max": 1} if op == "torch.histc" else {}
        nb = propagate(_rule(op), (cur, *extra), kwargs, bounds.get, out)
        bounds[id(out)] = nb  # type: ignore[assignment]
        cur = out
    return cur, bounds[id(cur)]


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([o[0] for o in OPS]), st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_tracked_sensitivity_bounds_every_neighbour(name: str, seed: int, k: int) -> None:
    """Replace one subject's k rows by arbitrary in-bounds rows: the change never exceeds the bound."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(12, 2, generator=g, dtype=torch.float64)
    b = Rowwise.for_asset(1, x, [(0.0, 1.0), (0.0, 1.0)], k)
    out, bound = _track(name, x, b)
    assert isinstance(bound, Aggregate)
    fn = next(o[1] for o in OPS if o[0] == name)
    for _ in range(20):
        y = x.clone()
        rows = torch.randperm(12, generator=g)[:k]
        y[rows] = (
            torch.randint(0, 2, (k, 2), generator=g).double()
            if seed % 2
            else torch.rand(k, 2, generator=g, dtype=torch.float64)
        )
        diff = (fn(y).double() - out.double()).flatten()
        assert float(diff.abs().sum()) <= bound.l1 + 1e-9
        assert float(diff.norm()) <= bound.l2 + 1e-9
    assert math.isfinite(bound.l1)


def test_casts_that_can_wrap_get_the_whole_range() -> None:
    node = Node("clinic", owner_email=OWNER, owner_password=OWNER_PW)
    owner, sci, _ = _setup(node, budget=(10.0, 1e-6))
    x = sci.datasets["patients"].private[:, 0]  # ages, declared in [0, 100]
    fits = x.to(torch.int8).sum()  # [0, 100] fits int8: truncated exactly
    assert node.capability_state("dp").bounds[fits.id].l1 == 100.0  # type: ignore[union-attr]
    wraps = (x * 2).to(torch.int8).sum()  # [0, 200] may wrap: any int8, per row
    assert node.capability_state("dp").bounds[wraps.id].l1 == 255.0  # type: ignore[union-attr]
    assert wraps.publish(epsilon=0.5).shape == ()
    assert x.double().sum().publish(epsilon=0.5).dtype == torch.float64
