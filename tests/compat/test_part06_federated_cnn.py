"""PySyft 0.2 Part 6 (federated learning on digits with a CNN and a FederatedDataLoader)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812
from sklearn.datasets import load_digits
from torch import nn, optim

import veil as sy


class Net(nn.Module):
    """The tutorial's CNN, scaled to scikit-learn's 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1)
        self.fc1 = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = x.view(-1, 4 * 3 * 3)
        return F.log_softmax(self.fc1(x), dim=1)


def test_part_6_cnn_trained_through_a_federated_loader_matches_plain_torch() -> None:
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    digits = load_digits()
    x = torch.tensor(digits.data[:48], dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(digits.target[:48])
    loader = sy.FederatedDataLoader(sy.BaseDataset(x, y).federate((bob, alice)), batch_size=8)
    torch.manual_seed(1)
    model = Net()
    ref = copy.deepcopy(model)
    opt, ref_opt = optim.SGD(model.parameters(), lr=0.1), optim.SGD(ref.parameters(), lr=0.1)
    losses = []
    for data, target in loader:
        model.send(data.location)
        opt.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        opt.step()
        model.get()
        losses.append(loss.get().item())
    ref_losses = []
    for i in range(0, 48, 8):  # bob's 24 examples in 3 batches, then alice's
        ref_opt.zero_grad()
        loss = F.nll_loss(ref(x[i : i + 8]), y[i : i + 8])
        loss.backward()
        ref_opt.step()
        ref_losses.append(loss.item())
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses))
    for got, want in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(got, want)
