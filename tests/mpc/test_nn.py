"""Private inference and training with veil.mpc.nn against the same models in plaintext."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from sklearn.datasets import load_digits
from torch import nn
from veil.mpc.nn import SGD, cross_entropy_grad

import veil
from veil.errors import UnsupportedError
from veil.mpc import encrypt_model


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x, dtype=torch.float32)
    perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))
    return xt[perm], torch.tensor(y)[perm]


def _lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


@pytest.mark.slow
def test_three_party_lenet_inference_matches_plaintext_predictions(three: Any) -> None:
    torch.manual_seed(0)
    x, y = _digits()
    img = F.interpolate(x.reshape(-1, 1, 8, 8) / 16, size=(28, 28), mode="bilinear")
    model = _lenet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(0, 1400, 50):  # one quick epoch: a model with real decision margins
        opt.zero_grad()
        F.cross_entropy(model(img[i : i + 50]), y[i : i + 50]).backward()
        opt.step()
    model.eval()
    test = img[1400:1600]
    with torch.no_grad():
        want = model(test)
    assert (want.argmax(1) == y[1400:1600]).float().mean() > 0.5  # it learned something
    shared = model.share(*three.parties, crypto_provider=three.provider)
    got = shared(three.share(test)).reconstruct()
    agree = (got.argmax(1) == want.argmax(1)).float().mean().item()
    assert agree >= 0.99
    assert float((got - want).abs().max()) < 1e-2


def test_two_party_training_on_digits_reaches_90_percent(two: Any) -> None:
    torch.manual_seed(0)
    x, y = _digits()
    x = (x - x.mean(0)) / (x.std(0) + 1)
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    plain = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    plain.load_state_dict(model.state_dict())
    popt = torch.optim.SGD(plain.parameters(), lr=1.0)
    shared = encrypt_model(model, two.parties, two.provider)
    opt = SGD(shared, lr=1.0)
    for i in range(0, 1400 - 63, 64):  # one epoch, 21 steps
        xb, yb = xtr[i : i + 64], ytr[i : i + 64]
        out = shared(two.share(xb))
        shared.backward(cross_entropy_grad(out, two.share(F.one_hot(yb, 10).float())))
        opt.step()
        popt.zero_grad()
        F.cross_entropy(plain(xb), yb).backward()
        popt.step()
    trained = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p, s in zip(trained.parameters(), shared.parameters(), strict=True):
            p.copy_(s.reconstruct())
        acc = (trained(xte).argmax(1) == yte).float().mean().item()
        plain_acc = (plain(xte).argmax(1) == yte).float().mean().item()
        loss0 = F.cross_entropy(model(xtr), ytr).item()
        loss, plain_loss = (
            F.cross_entropy(trained(xtr), ytr).item(),
            F.cross_entropy(plain(xtr), ytr).item(),
        )
    assert acc >= 0.90
    assert abs(acc - plain_acc) <= 0.03
    assert loss < 0.3 * loss0 and abs(loss - plain_loss) <= 0.1 * plain_loss + 0.02


def test_batchnorm_avgpool_dropout_models_match_plaintext(group: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
        nn.Dropout(0.5), nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3),
    )  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(3, 2, 4, 4)
    got = encrypt_model(model, group.parties, group.provider)(group.share(x)).reconstruct()
    assert torch.allclose(got, model(x), atol=5e-3)
    out = encrypt_model(model, group.parties, group.provider)(x)  # a plain tensor is shared first
    assert torch.allclose(out.reconstruct(), model(x), atol=5e-3)


def test_unsupported_models_are_refused_with_every_problem_listed(two: Any) -> None:
    bad = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.LSTM(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(UnsupportedError) as err:
        encrypt_model(bad, two.parties, two.provider)
    msg = str(err.value)
    assert "1: GELU cannot be shared" in msg and "2: LSTM" in msg and "3: BatchNorm" in msg

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * 2

    with pytest.raises(UnsupportedError, match="its own forward"):
        encrypt_model(Custom(), two.parties, two.provider)
    shared = encrypt_model(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), two.parties, two.provider
    )
    with pytest.raises(UnsupportedError, match="no backward pass"):
        shared.backward(two.share(torch.zeros(1, 2, 1, 1)))
    assert "SharedConv2d(1, 2, kernel_size=(3, 3)" in repr(shared)
    assert isinstance(veil.mpc.nn.SharedSequential, type)


# ----------------------------------------------------------------- security="malicious"


def _tiny_cnn() -> nn.Sequential:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
        nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3),
    )  # fmt: skip
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_malicious_private_inference_of_a_tiny_cnn_matches_plaintext(three: Any) -> None:
    from veil.mpc.authenticated import AuthenticatedTensor

    model = _tiny_cnn()
    x = torch.randn(2, 1, 8, 8)
    shared = model.share(*three.parties, crypto_provider=three.provider, security="malicious")
    assert isinstance(shared.layers[0].weight, AuthenticatedTensor)
    sx = x.share(*three.parties, crypto_provider=three.provider, security="malicious")
    got = shared(sx)
    assert isinstance(got, AuthenticatedTensor)
    with torch.no_grad():
        assert torch.allclose(got.reconstruct(), model(x), atol=1e-2)


def test_a_party_that_alters_a_weight_share_is_caught_during_the_forward(two: Any) -> None:
    model = _tiny_cnn()
    shared = encrypt_model(model, two.parties, two.provider, security="malicious")
    conv = shared.layers[0].weight
    two.parties[1].node._objects[conv.shares[1].id].value[0].view(-1)[3] += 1
    x = torch.randn(1, 1, 8, 8).share(
        *two.parties, crypto_provider=two.provider, security="malicious"
    )
    with pytest.raises(veil.errors.MACCheckFailed):
        shared(x)


def test_one_malicious_training_step_matches_plaintext_sgd(two: Any) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    smodel = encrypt_model(model, two.parties, two.provider, security="malicious")
    opt = SGD(smodel, lr=0.5)
    share = dict(crypto_provider=two.provider, security="malicious")
    out = smodel(x.share(*two.parties, **share))
    smodel.backward(cross_entropy_grad(out, F.one_hot(y, 3).float().share(*two.parties, **share)))
    opt.step()
    torch.optim.SGD(model.parameters(), lr=0.5).zero_grad()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    for got, want in zip(smodel.parameters(), model.parameters(), strict=True):
        assert torch.allclose(got.reconstruct(), want, atol=1e-2)
