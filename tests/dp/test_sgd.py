"""make_private end to end: Poisson loader, physical batching, BatchNorm refusal, load_digits at ε <= 3."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import veil.dp as dp
from veil.errors import UnsupportedError


def _data(n: int = 200) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model: nn.Module, loader: dp.PoissonLoader, opt: dp.DPOptimizer) -> None:
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_physical_batching_gives_the_same_update() -> None:
    results = []
    for physical in (None, 7):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        pm, popt, loader = dp.make_private(
            module=model, optimizer=opt, data_loader=DataLoader(_data(), batch_size=50),
            noise_multiplier=0.0, max_grad_norm=0.5, max_physical_batch_size=physical, seed=3,
        )  # fmt: skip
        sizes = []
        for x, y in loader:
            sizes.append(len(x))
            popt.zero_grad()
            nn.functional.cross_entropy(pm(x), y).backward()
            popt.step()
        assert physical is None or max(sizes) <= physical
        results.append(([p.detach().clone() for p in model.parameters()], popt.accountant.steps))
    (a, steps_a), (b, steps_b) = results
    assert steps_a == steps_b == 4  # logical steps counted once each
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_update_is_clipped_mean_plus_calibrated_noise() -> None:
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    data = _data(100)
    pm, popt, _ = dp.make_private(module=model, optimizer=opt, data_loader=DataLoader(data, batch_size=100),
                                  noise_multiplier=0.0, max_grad_norm=0.1)  # fmt: skip
    x, y = data.tensors
    popt.zero_grad()
    nn.functional.cross_entropy(pm(x), y).backward()
    popt.step()
    # reference: the per-example loop, each gradient clipped to 0.1, averaged over the batch
    ref_model = _mlp()
    grads = []
    for i in range(100):
        ref_model.zero_grad()
        nn.functional.cross_entropy(ref_model(x[i : i + 1]), y[i : i + 1]).backward()
        g = [p.grad.clone() for p in ref_model.parameters()]
        norm = torch.sqrt(sum(t.pow(2).sum() for t in g))
        grads.append([t * min(1.0, 0.1 / (float(norm) + 1e-6)) for t in g])
    for k, p in enumerate(model.parameters()):
        expect = before[k] - sum(gr[k] for gr in grads) / 100
        torch.testing.assert_close(p.detach(), expect, atol=1e-6, rtol=1e-5)
    # with noise: the gradient's spread matches sigma * C / batch
    popt.noise_multiplier = 2.0
    noisy = popt._privatize(torch.zeros(100_000))
    assert abs(float(noisy.std()) - 0.2) < 0.005


def test_secure_mode_noise_sits_on_a_grid() -> None:
    model = _mlp()
    _, popt, _ = dp.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                 data_loader=DataLoader(_data(), batch_size=20), noise_multiplier=1.0,
                                 max_grad_norm=1.0, secure_mode=True)  # fmt: skip
    out = popt._privatize(torch.full((1000,), 0.123))
    g = float(out.abs()[out != 0].min())
    assert abs(float(out.std()) - 1.0) < 0.1
    assert torch.all(torch.remainder(out.double(), 2.0**-16) == 0)  # exact grid multiples
    assert g > 0


def test_batchnorm_is_refused_with_the_fix_named() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(72, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(
        TensorDataset(torch.randn(10, 1, 5, 5), torch.zeros(10).long()), batch_size=5
    )
    with pytest.raises(UnsupportedError, match="GroupNorm.*fix_model"):
        dp.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                        max_grad_norm=1.0)  # fmt: skip
    assert dp.validate(model) and len(dp.validate(model)) == 1
    fixed = dp.fix_model(model)
    assert isinstance(fixed[1], nn.GroupNorm) and dp.validate(fixed) == []
    opt = torch.optim.SGD(fixed.parameters(), lr=0.1)
    pm, popt, pl = dp.make_private(module=fixed, optimizer=opt, data_loader=loader,
                                   noise_multiplier=1.0, max_grad_norm=1.0)  # fmt: skip
    _train(pm, pl, popt)
    assert popt.accountant.steps == 2


def test_configuration_errors_say_what_to_do() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(), batch_size=20)
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        dp.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                        max_grad_norm=0)  # fmt: skip
    with pytest.raises(ValueError, match="exactly one of"):
        dp.make_private(module=model, optimizer=opt, data_loader=loader, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="needs epochs"):
        dp.make_private(module=model, optimizer=opt, data_loader=loader, max_grad_norm=1.0,
                        target_epsilon=1.0)  # fmt: skip


def test_empty_poisson_batches_still_step_and_count() -> None:
    data = _data(20)
    model = _mlp()
    pm, popt, loader = dp.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                       data_loader=DataLoader(data, batch_size=1),
                                       noise_multiplier=1.0, max_grad_norm=1.0, seed=0)  # fmt: skip
    sizes = []
    for x, y in loader:
        sizes.append(len(x))
        popt.zero_grad()
        out = pm(x)
        (nn.functional.cross_entropy(out, y, reduction="sum") / max(len(x), 1)).backward()
        popt.step()
    assert 0 in sizes and popt.accountant.steps == 20
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lstm_text_classifier_trains_privately() -> None:
    torch.manual_seed(0)
    x = torch.randint(1, 30, (64, 7))
    y = (x[:, 0] > 15).long()
    emb, lstm, fc = nn.Embedding(30, 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 2)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.lstm, self.fc = emb, lstm, fc

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            _, (h, _) = self.lstm(self.emb(t))
            return self.fc(h[-1])

    model = M()
    ids = {id(p) for p in model.parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    pm, popt, loader = dp.make_private(module=model, optimizer=opt,
                                       data_loader=DataLoader(TensorDataset(x, y), batch_size=16),
                                       noise_multiplier=0.5, max_grad_norm=1.0)  # fmt: skip
    assert {id(p) for p in model.parameters()} == ids  # the swap kept the user's Parameters
    _train(pm, loader, popt)
    assert popt.accountant.steps == 4 and popt.last_norms is not None


def test_progress_bar_and_privacy_plot(tmp_path: object) -> None:
    acc = dp.RDPAccountant()
    with dp.PrivacyProgress(acc, delta=1e-5, total=3, disable=True) as bar:
        for _ in range(3):
            acc.step(noise_multiplier=1.0, sample_rate=0.05)
            bar.advance(loss=1.0)
    assert bar.epsilon == pytest.approx(acc.get_epsilon(1e-5))
    pytest.importorskip("matplotlib")
    from pathlib import Path

    path = Path(str(tmp_path)) / "eps.png"
    ax = dp.plot_privacy(acc, delta=1e-5, path=path, points=3)
    ys = ax.lines[0].get_ydata()
    assert (
        path.stat().st_size > 1000
        and list(ys) == sorted(ys)
        and ys[-1] == pytest.approx(bar.epsilon)
    )


def test_load_digits_reaches_90_percent_at_epsilon_3() -> None:
    """The end-to-end example (examples/dp_digits.py), run as a user would."""
    out = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "dp_digits.py"))
    result = out["run"](progress=False)
    assert result["epsilon"] <= 3.0
    assert result["accuracy"] >= 0.90, result


def test_poisson_loader_collates_any_dataset_including_empty_batches() -> None:
    items = [(torch.randn(6), i % 3) for i in range(10)]
    loader = dp.PoissonLoader(items, sample_rate=0.05, seed=1)  # type: ignore[arg-type]
    batches = list(loader)
    assert len(batches) == len(loader) == 20
    sizes = [len(b[0]) for b in batches]
    assert 0 in sizes and max(sizes) >= 1
    empty = next(b for b in batches if len(b[0]) == 0)
    assert empty[0].shape == (0, 6) and empty[1].shape == (0,)
