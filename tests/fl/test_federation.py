"""Federation over nodes: it trains what centralized training trains, and as well."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from veil.fl import CentralDP, FedAvg, Federation, History


def test_secure_fedavg_with_one_full_batch_step_is_centralized_gradient_descent(
    hospitals, mlp
) -> None:
    h = hospitals([120, 80, 200])
    model, reference = mlp(1), mlp(1)
    fed = Federation(h.scientist, model, strategy=FedAvg(), rounds=3, local_epochs=1,
                     batch_size=200, lr=0.5, dataset="digits", progress=False)  # fmt: skip
    h.approve(fed.request())
    hist = fed.fit()
    # the same model trained centrally: full-batch GD on the union, each example weighted alike
    x = torch.cat([p[0] for p in h.parts])
    y = torch.cat([p[1] for p in h.parts])
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert [r["clients"] for r in hist] == [3, 3, 3]
    with torch.no_grad():
        first = float(F.cross_entropy(mlp(1)(x), y))
    assert hist[0]["loss"] == pytest.approx(first, abs=1e-4)


def test_digits_over_three_hospitals_reach_90_percent_with_secure_aggregation(
    hospitals, mlp
) -> None:
    h = hospitals([500, 500, 500])
    fed = Federation(h.scientist, mlp(0), strategy=FedAvg(), rounds=12,
                     local_epochs=2, batch_size=32, lr=0.1, dataset="digits",
                     test_data=h.test, progress=False)  # fmt: skip
    h.approve(fed.request())
    hist = fed.fit()
    assert hist.last["accuracy"] >= 0.9, hist.series("accuracy")
    assert hist.series("loss")[-1] < hist.series("loss")[0]
    assert all(r["bytes"] > 0 and r["seconds"] > 0 for r in hist)


def test_central_dp_charges_each_node_and_matches_the_accountant(hospitals, mlp) -> None:
    h = hospitals([150, 150, 150])
    h.budgets(epsilon=100.0)
    dp = CentralDP(noise_multiplier=1.0, clip=1.0, delta=1e-5)
    fed = Federation(h.scientist, mlp(0), rounds=3, dataset="digits", dp=dp, progress=False)
    h.approve(fed.request())
    hist = fed.fit()
    assert hist.series("epsilon") == pytest.approx([dp.epsilon(r) for r in (1, 2, 3)], rel=1e-6)
    for owner in h.owners:
        (b,) = [b for b in owner.budgets.list() if b.dataset == "digits"]
        assert b.spent_epsilon == pytest.approx(dp.epsilon(3), rel=1e-6) and b.releases == 3


def test_dp_without_noise_is_clipped_fedavg(hospitals, mlp) -> None:
    h = hospitals([100, 100])
    h.budgets(epsilon=1e12, delta=0.5)
    big = CentralDP(noise_multiplier=1e-5, clip=5.0, delta=1e-5)  # noise std 5e-5
    a = Federation(h.scientist, mlp(2), rounds=2, dataset="digits", dp=big,
                   secure_aggregation=False, batch_size=100, progress=False)  # fmt: skip
    h.approve(a.request())
    assert len(a.fit()) == 2
    h2 = hospitals([100, 100])
    b = Federation(h2.scientist, mlp(2), rounds=2, dataset="digits", batch_size=100,
                   progress=False)  # fmt: skip
    h2.approve(b.request())
    b.fit()
    # equal-size clients: the unweighted DP mean is the weighted secure mean
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, atol=5e-4, rtol=1e-3)


def test_a_budget_stops_training_and_says_whose(hospitals, mlp) -> None:
    h = hospitals([100, 100, 100])
    dp = CentralDP(noise_multiplier=2.0, clip=1.0)
    h.budgets(epsilon=dp.epsilon(2) * 1.01)
    fed = Federation(h.scientist, mlp(0), rounds=5, dataset="digits", dp=dp, progress=False)
    h.approve(fed.request())
    hist = fed.fit()
    assert len(hist) == 2
    assert "sci@lab.org" in hist.stopped and "digits" in hist.stopped
    assert "hospital" in hist.stopped and "over the budget" in hist.stopped


def test_adaptive_clipping_moves_the_clip_towards_the_quantile(hospitals, mlp) -> None:
    h = hospitals([100, 100, 100])
    h.budgets(epsilon=1e9, delta=0.5)
    dp = CentralDP(noise_multiplier=1e-3, clip=100.0, adaptive=True, count_noise=1e-3)
    fed = Federation(h.scientist, mlp(0), rounds=3, dataset="digits", dp=dp, progress=False)
    h.approve(fed.request())
    assert len(fed.fit()) == 3
    # every update is far under 100: the count says so, and the clip shrinks each round
    assert fed._clip == pytest.approx(100.0 * math.exp(-0.2 * 0.5) ** 3, rel=2e-3)


def test_simulated_clients_run_the_batched_simulation(mlp) -> None:
    gen = torch.Generator().manual_seed(0)
    data = [(torch.rand(40, 64, generator=gen), torch.randint(0, 10, (40,), generator=gen))
            for _ in range(6)]  # fmt: skip
    fed = Federation(data, mlp(0), rounds=2, seed=3, progress=False)
    hist = fed.fit()
    assert [r["round"] for r in hist] == [1, 2] and hist.last["clients"] == 6
    assert fed.fit(1)[-1]["round"] == 3  # more rounds continue the count


def test_history_plots_its_curves(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    h = History([{"round": 1, "loss": 1.0, "accuracy": 0.5}, {"round": 2, "loss": 0.5,
                 "accuracy": 0.8}])  # fmt: skip
    fig = h.plot(str(tmp_path / "curves.png"))
    assert {ax.get_title() for ax in fig.axes} == {"loss", "accuracy"}
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_robust_strategies_and_server_side_dp_are_refused_on_nodes(hospitals, mlp) -> None:
    from veil.errors import UnsupportedError
    from veil.fl import DPFedAvg, FedMedian

    h = hospitals([50, 50])
    with pytest.raises(UnsupportedError, match="secure aggregation reveals only their sum"):
        Federation(h.scientist, mlp(), strategy=FedMedian(), dataset="digits")
    with pytest.raises(UnsupportedError, match="nodes clip and noise"):
        Federation(h.scientist, mlp(), strategy=DPFedAvg(FedAvg(), noise_multiplier=1.0,
                   clip_norm=1.0, num_clients=2), dataset="digits")  # fmt: skip


def test_local_dp_trains_with_dp_sgd_on_each_node_and_charges_the_accountants_epsilon(
    hospitals, mlp
) -> None:
    from veil.dp.accountants.rdp import RDPAccountant
    from veil.fl import LocalDP

    h = hospitals([300, 300])
    h.budgets(epsilon=50.0)
    dp = LocalDP(noise_multiplier=1.0, max_grad_norm=1.0)
    fed = Federation(h.scientist, mlp(0), rounds=3, dataset="digits", dp=dp, batch_size=50,
                     local_epochs=3, lr=1.0, secure_aggregation=False, test_data=h.test,
                     progress=False)  # fmt: skip
    reqs = fed.request()
    assert "DP-SGD" in __import__("veil").fl.review(h.owners[0], reqs[0].id)
    h.approve(reqs)
    hist = fed.fit()
    acc = RDPAccountant()
    acc.step(noise_multiplier=1.0, sample_rate=50 / 300, steps=3 * 3 * 6)
    assert hist.last["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert hist.last["accuracy"] > 0.5  # DP-SGD still learns
    for owner in h.owners:
        (b,) = owner.budgets.list()
        assert b.spent_epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
        assert b.spent_delta == pytest.approx(1e-5)
