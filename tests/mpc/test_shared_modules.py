"""Models with their own forward, shared: a residual block with BatchNorm, torch.cat and
functional calls run on shares against the plain forward; a model on a node is shared by
that node; copy, refresh, get and the optimizer spelling.

Measured: the residual block's outputs differ from plaintext by about 5e-5 (bound 5e-3).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from veil.errors import UnsupportedError
from veil.mpc.tensors.autograd import AutogradTensor
from veil.mpc.tensors.modules import FixedPrecisionModule, SharedModule

from .conftest import Parties, make


@pytest.fixture
def two() -> Parties:
    return make(2)


class Block(nn.Module):
    """conv-bn-relu-conv + skip, then a concatenation and a linear head."""

    def __init__(self, c: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(2 * c * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv1(x)))
        y = self.conv2(y) + x
        z = torch.cat([F.relu(y), x], dim=1)
        return self.fc(z.view(z.size(0), -1))  # type: ignore[no-any-return]


def test_a_residual_block_runs_on_shares_like_the_plain_forward(two: Parties) -> None:
    torch.manual_seed(0)
    model = Block()
    model.bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
    model.bn.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
    model.eval()
    x = torch.randn(2, 2, 4, 4)
    shared = model.share(*two.parties, crypto_provider=two.provider)  # type: ignore[operator]
    assert isinstance(shared, Block) and isinstance(shared, SharedModule)
    assert type(shared).__name__ == "SharedBlock"
    out = shared(two.share(x))
    assert (out.reconstruct() - model(x)).abs().max() < 5e-3
    assert torch.equal(out.argmax(dim=1).reconstruct(), model(x).argmax(1).float())
    shared.train()
    with pytest.raises(UnsupportedError, match="eval mode"):
        shared(two.share(x))


def test_an_op_without_a_shared_implementation_is_named(two: Parties) -> None:
    class Gelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.gelu(self.fc(x))

    shared = Gelu().fix_precision().share(*two.parties, crypto_provider=two.provider)  # type: ignore[operator]
    with pytest.raises(UnsupportedError, match="torch.nn.functional.gelu"):
        shared(two.share(torch.ones(1, 2)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))  # type: ignore[no-any-return]


def test_a_model_on_a_node_is_shared_by_that_node(two: Parties) -> None:
    torch.manual_seed(1)
    net = Net()
    owner = two.parties[1]
    x = torch.randn(4, 2)
    expected = net(x)
    net.send(owner)  # type: ignore[operator]  # PySyft's model.send: the model itself moves
    shared = net.share(*two.parties, crypto_provider=two.provider)  # type: ignore[operator]
    assert (shared(two.share(x)).reconstruct() - expected).abs().max() < 1e-3
    # the weights were split on the owner's node: nothing but shares reached the driver
    assert all(isinstance(p, AutogradTensor) for p in shared.parameters())
    torch.manual_seed(3)
    other = Net()
    held = owner.send(other, mode="params")  # a pointer to a model kept in "params" form
    twin = held.share(*two.parties, crypto_provider=two.provider)
    assert (twin(two.share(x)).reconstruct() - other(x)).abs().max() < 1e-3
    rebuilt = owner.send(nn.Sequential(nn.Linear(2, 1)))
    with pytest.raises(UnsupportedError, match="mode='params'"):
        rebuilt.share(*two.parties, crypto_provider=two.provider)


def test_copy_refresh_get_and_the_optimizer_spelling(two: Parties) -> None:
    torch.manual_seed(2)
    net = Net()
    shared = net.fix_precision().share(*two.parties, crypto_provider=two.provider,  # type: ignore[attr-defined]
                                       requires_grad=True)  # fmt: skip
    twin = shared.copy()
    opt = torch.optim.SGD(shared.parameters(), lr=0.5).fix_precision()  # type: ignore[attr-defined]
    opt.zero_grad()
    (shared(two.share(torch.ones(1, 2))) ** 2).sum().backward()
    assert shared.fc1.weight.grad is not None
    opt.step()
    shared.zero_grad()
    assert shared.fc1.weight.grad is None
    assert torch.allclose(twin.fc2.weight.reconstruct(), net.fc2.weight, atol=1e-4)
    assert not torch.allclose(shared.fc2.weight.reconstruct(), net.fc2.weight, atol=1e-3)
    before = shared.fc1.weight.secret.shares[0].get()
    shared.refresh()
    assert not torch.equal(shared.fc1.weight.secret.shares[0].get(), before)
    back = shared.get()
    assert isinstance(back, FixedPrecisionModule)
    plain = back.float_precision()
    assert type(plain) is Net
    assert torch.allclose(plain.fc2.weight, shared.fc2.weight.reconstruct())
    with pytest.raises(UnsupportedError, match="share the model first"):
        torch.optim.SGD(net.parameters(), lr=0.1).fix_precision()  # type: ignore[attr-defined]
