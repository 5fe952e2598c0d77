"""PySyft 0.2's Part 12 (train an encrypted NN on encrypted data) and Part 12 bis
(encrypted training and evaluation, MNIST-style) with only the import changed.

Measured against the same training in plaintext torch (16 fractional bits): Part 12's
losses match to about 1e-4 per step and the weights after 20 steps to about 4e-5; bounds
asserted: 2e-3 (losses) and 1e-3 (weights). The tutorial's data puts a ReLU input at
exactly 0 (input [0, 0], bias 0): the shared ReLU's derivative there is 0, as torch's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

import veil as sy


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 1)
        with torch.no_grad():  # the tutorial's deterministic initialisation
            self.fc1.weight.set_(torch.tensor([[0.0738, -0.2109], [-0.1579, 0.3174]]))
            self.fc1.bias.set_(torch.tensor([0.0, 0.1]))
            self.fc2.weight.set_(torch.tensor([[-0.5368, 0.7050]]))
            self.fc2.bias.set_(torch.tensor([-0.0343]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        return x


def test_part12_training_matches_plaintext_training() -> None:
    hook = sy.TorchHook(torch)
    alice = sy.VirtualWorker(hook, id="alice")
    bob = sy.VirtualWorker(hook, id="bob")
    james = sy.VirtualWorker(hook, id="james")
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]])
    target = torch.tensor([[0], [0], [1], [1.0]])
    plain = Net()
    plain_opt = optim.SGD(params=plain.parameters(), lr=0.1)

    data_enc = data.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    target_enc = target.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    model = Net().fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    opt = optim.SGD(params=model.parameters(), lr=0.1).fix_precision()

    losses, plain_losses = [], []
    for _ in range(20):
        opt.zero_grad()
        pred = model(data_enc)
        loss = ((pred - target_enc) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.get().float_precision().item())
        plain_opt.zero_grad()
        plain_loss = ((plain(data) - target) ** 2).sum()
        plain_loss.backward()
        plain_opt.step()
        plain_losses.append(plain_loss.item())

    assert losses[-1] < losses[0] / 10  # the loss indeed decreased
    assert max(abs(a - b) for a, b in zip(losses, plain_losses, strict=True)) < 2e-3
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert (p.get().float_precision() - q.detach()).abs().max() < 1e-3, name
    assert model.fc2.bias.shape == (1,)


def test_part12_bis_train_then_count_correct_predictions() -> None:
    hook = sy.TorchHook(torch)
    workers = [sy.VirtualWorker(hook, id=f"worker{i + 1}") for i in range(2)]
    crypto_provider = sy.VirtualWorker(hook, id="crypto_provider")
    torch.manual_seed(1)
    centers = torch.randn(3, 8) * 2
    labels = torch.arange(12) % 3
    images = centers[labels] + 0.3 * torch.randn(12, 8)

    def secret_share(t: torch.Tensor) -> object:
        return t.fix_precision().share(
            *workers, crypto_provider=crypto_provider, requires_grad=True
        )

    train = [(secret_share(images), secret_share(F.one_hot(labels, 3).float()))]
    test = [(secret_share(images), secret_share(labels.float()))]

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.view(-1, 8)
            return self.fc2(F.relu(self.fc1(x)))  # type: ignore[no-any-return]

    model = (
        Mlp().fix_precision().share(*workers, crypto_provider=crypto_provider, requires_grad=True)
    )
    optimizer = optim.SGD(model.parameters(), lr=0.05)
    optimizer = optimizer.fix_precision()
    first = last = None
    model.train()
    for _ in range(6):
        for data, target in train:
            optimizer.zero_grad()
            output = model(data)
            batch_size = output.shape[0]
            loss = ((output - target) ** 2).sum().refresh() / batch_size
            loss.backward()
            optimizer.step()
            last = loss.get().float_precision().item()
            first = first if first is not None else last
    assert last is not None and first is not None and last < first

    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test:
            output = model(data)
            pred = output.argmax(dim=1)
            correct += pred.eq(target.view_as(pred)).sum()
    n = correct.get().float_precision().item()
    assert 9 <= n <= 12  # well-separated classes after a few steps
