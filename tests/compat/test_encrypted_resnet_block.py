"""A model that is not ``nn.Sequential`` (a small ResNet block: conv-bn-relu-conv + skip,
``torch.cat``, ``F.relu``, ``x.view``) shared with PySyft's spellings and run privately,
against the plain forward; measured error about 5e-5, bound 5e-3."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import veil as sy


class BasicBlock(nn.Module):
    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.head = nn.Linear(2 * channels * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        out = F.relu(out + x)
        out = torch.cat([out, x], dim=1)
        return self.head(out.view(out.size(0), -1))  # type: ignore[no-any-return]


def test_resnet_block_private_inference_matches_plaintext() -> None:
    hook = sy.TorchHook(torch)
    alice = sy.VirtualWorker(hook, id="alice")
    bob = sy.VirtualWorker(hook, id="bob")
    james = sy.VirtualWorker(hook, id="james")
    torch.manual_seed(5)
    model = BasicBlock()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.3, 0.3)  # type: ignore[operator]
        model.bn1.running_var.uniform_(0.5, 1.5)  # type: ignore[operator]
    model.eval()
    x = torch.randn(3, 2, 4, 4)

    shared_model = model.fix_precision().share(alice, bob, crypto_provider=james)
    shared_x = x.fix_precision().share(alice, bob, crypto_provider=james)
    out = shared_model(shared_x).get().float_precision()

    assert (out - model(x)).abs().max() < 5e-3
    assert shared_model.conv1.weight.shape == model.conv1.weight.shape
    assert torch.equal(shared_model(shared_x).argmax(dim=1).get().float_precision(),
                       model(x).argmax(dim=1).float())  # fmt: skip
