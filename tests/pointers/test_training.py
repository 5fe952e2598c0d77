"""Training where the data lives reaches the same weights as the same loop run locally."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny ops gain nothing from intra-op threads, and two test workers on two cores
    oversubscribe OpenMP (10x slower loops); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


STEPS = 8


class Net(nn.Module):
    """A model with its own forward: not rebuildable on a node, so sent as parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: Any) -> Any:
        h = F.relu(self.fc1(x)) * self.scale
        return self.fc2(h + x.mean(dim=1, keepdim=True))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)


def _train_local(model: nn.Module, opt_cls: Any, x: torch.Tensor, y: torch.Tensor,
                 **opt_kw: Any) -> list[float]:  # fmt: skip
    opt = opt_cls(model.parameters(), **opt_kw)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _train_remote(model: Any, opt_cls: Any, x: Any, y: Any, **opt_kw: Any) -> list[float]:
    opt = veil.RemoteOptimizer(opt_cls, model.parameters(), **opt_kw)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        assert isinstance(loss, veil.PointerTensor) and loss.shape == torch.Size([])
        loss.backward()
        opt.step()
        losses.append(loss.get().item())
    return losses


def _assert_same_weights(got: nn.Module, want: nn.Module) -> None:
    got_state, want_state = got.state_dict(), want.state_dict()
    assert list(got_state) == list(want_state)
    for name, value in want_state.items():
        torch.testing.assert_close(got_state[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("opt_cls", "opt_kw"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 0.01})],
    ids=["sgd", "adam"],
)
def test_remote_sequential_training_matches_local(deployment: Any, opt_cls: Any,
                                                  opt_kw: dict[str, Any]) -> None:  # fmt: skip
    w = deployment.scientist()
    torch.manual_seed(0)
    local = _mlp()
    remote = w.send(copy.deepcopy(local))
    x, y = _data()

    want_losses = _train_local(local, opt_cls, x, y, **opt_kw)
    got_losses = _train_remote(remote, opt_cls, x.send(w), y.send(w), **opt_kw)

    assert "module" in repr(remote) and "params of" not in repr(remote)
    assert got_losses == pytest.approx(want_losses, abs=1e-6)
    assert want_losses[-1] < want_losses[0]  # it did learn something
    fetched = remote.get()
    assert isinstance(fetched, nn.Sequential)
    _assert_same_weights(fetched, local)


@pytest.mark.parametrize(
    ("opt_cls", "opt_kw"),
    [(torch.optim.SGD, {"lr": 0.1}), (torch.optim.Adam, {"lr": 0.01})],
    ids=["sgd", "adam"],
)
def test_remote_custom_module_training_matches_local(deployment: Any, opt_cls: Any,
                                                     opt_kw: dict[str, Any]) -> None:  # fmt: skip
    w = deployment.scientist()
    torch.manual_seed(0)
    local = Net()
    remote = w.send(copy.deepcopy(local))  # mode="auto" picks "params" for a custom forward
    x, y = _data()

    want_losses = _train_local(local, opt_cls, x, y, **opt_kw)
    got_losses = _train_remote(remote, opt_cls, x.send(w), y.send(w), **opt_kw)

    assert "params of Net" in repr(remote)
    assert all(isinstance(p, veil.PointerTensor) for p in remote.parameters())
    assert got_losses == pytest.approx(want_losses, abs=1e-6)
    fetched = remote.get()
    assert type(fetched) is Net
    _assert_same_weights(fetched, local)
    torch.testing.assert_close(fetched(x), local(x), rtol=0, atol=1e-6)


def test_grads_are_pointers_that_match_local_grads(deployment: Any) -> None:
    w = deployment.scientist()
    torch.manual_seed(0)
    local = _mlp()
    remote = w.send(copy.deepcopy(local))
    x, y = _data()

    F.cross_entropy(local(x), y).backward()
    F.cross_entropy(remote(x.send(w)), y.send(w)).backward()

    params = remote.parameters()
    names = [n for n, _ in remote.named_parameters()]
    assert names == [n for n, _ in local.named_parameters()]
    for p, (name, lp) in zip(params, local.named_parameters()):
        g = p.grad
        assert isinstance(g, veil.PointerTensor), name
        assert g.shape == lp.shape and p.requires_grad
        torch.testing.assert_close(g.get(), lp.grad, rtol=0, atol=1e-6, msg=name)

    remote.zero_grad()
    assert all(p.grad is None for p in remote.parameters())


def test_eval_mode_and_dropout_follow_the_local_model(deployment: Any) -> None:
    w = deployment.scientist()
    torch.manual_seed(0)
    local = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.BatchNorm1d(6))
    remote = w.send(copy.deepcopy(local))
    x, _ = _data()

    remote.eval()
    local.eval()

    assert remote.training is False
    torch.testing.assert_close(remote(x.send(w)).get(), local(x), rtol=0, atol=1e-6)
    fetched = remote.get()
    assert fetched.training is False


def test_model_pointer_forward_matches_and_state_roundtrips(deployment: Any) -> None:
    w = deployment.scientist()
    torch.manual_seed(0)
    local = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
    )  # fmt: skip
    remote = w.send(copy.deepcopy(local))
    x = torch.randn(3, 2, 8, 8)

    out = remote(x.send(w))
    want = local(x)

    assert out.shape == want.shape
    torch.testing.assert_close(out.get(), want, rtol=0, atol=1e-6)
    fetched = remote.get()  # running stats were updated on the node exactly as locally
    _assert_same_weights(fetched, local)
    assert remote.state_dict().keys() == local.state_dict().keys()
