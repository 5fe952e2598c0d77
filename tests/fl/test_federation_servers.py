"""A federation over three node servers on loopback: the deployed path, end to end."""

from __future__ import annotations

import contextlib

import torch

import veil
from veil.fl import CentralDP, Federation
from veil.node import Node
from veil.node.server import serve_in_thread

OWNER, OWNER_PW = "owner@h.org", "owner-password-1"
SCI, SCI_PW = "sci@lab.org", "scientist-pw-1"


def test_three_hospital_servers_train_with_secure_aggregation_and_central_dp(hospitals) -> None:
    h = hospitals([200, 200, 200])  # for the data split and the test set
    with contextlib.ExitStack() as stack:
        owners, scientists = [], []
        for i, (x, y) in enumerate(h.parts):
            url = stack.enter_context(serve_in_thread(Node(f"h{i}", owner_email=OWNER,
                                                           owner_password=OWNER_PW)))  # fmt: skip
            owner = veil.connect(url, email=OWNER, password=OWNER_PW)
            stack.callback(owner.close)
            owner.datasets.create("digits", private={"x": x, "y": y},
                                  mock={"x": torch.rand_like(x), "y": torch.zeros_like(y)})  # fmt: skip
            owner.create_user(SCI, SCI_PW, role="data_scientist")
            owner.budgets.set(SCI, "digits", epsilon=1e6, delta=1e-5)
            sci = veil.connect(url, email=SCI, password=SCI_PW)
            stack.callback(sci.close)
            owners.append(owner)
            scientists.append(sci)
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 10)
        dp = CentralDP(noise_multiplier=0.05, clip=5.0)
        fed = Federation(scientists, model, rounds=4, dataset="digits", lr=0.5, dp=dp,
                         test_data=h.test, progress=False)  # fmt: skip
        for owner, req in zip(owners, fed.request()):
            (pending,) = [r for r in owner.requests.list() if r.kind == "fl"]
            assert "4 rounds on digits, updates leave by secagg+dp" in pending.summary
            owner.requests.approve(req.id)
        hist = fed.fit()
        assert [r["clients"] for r in hist] == [3, 3, 3, 3]
        assert hist.last["accuracy"] > 0.6 and hist.last["epsilon"] > 0
        audit = [e.action for e in owners[0].audit(limit=100_000)]
        assert audit.count("fl.fit") == 4


def test_the_hospitals_example_runs_as_a_user_would(tmp_path) -> None:
    """examples/fl_hospitals.py: three `veil node serve` processes, approvals, SecAgg+ + DP."""
    import runpy
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    path = Path(__file__).resolve().parents[2] / "examples" / "fl_hospitals.py"
    run = runpy.run_path(str(path))["run"]
    out = run(2, progress=False, plot=str(tmp_path / "curves.png"), workdir=str(tmp_path))
    assert out["rounds"] == 2
    assert out["epsilon"] == CentralDP(noise_multiplier=0.3, clip=2.0).epsilon(2)
    assert (tmp_path / "curves.png").stat().st_size > 1000
