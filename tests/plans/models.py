"""The MLP, LeNet and LSTM examples the plan tests trace (each a forward of torch calls)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = F.dropout(h, 0.0, self.training)
        return F.log_softmax(self.fc2(h), dim=1)


class LeNet(nn.Module):
    """A LeNet whose forward calls torch functions on its own parameters (traced op by op)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Parameter(torch.randn(6, 1, 5, 5) * 0.2)
        self.b1 = nn.Parameter(torch.zeros(6))
        self.c2 = nn.Parameter(torch.randn(16, 6, 5, 5) * 0.1)
        self.b2 = nn.Parameter(torch.zeros(16))
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(F.conv2d(x, self.c1, self.b1)), 2)
        x = F.avg_pool2d(torch.tanh(F.conv2d(x, self.c2, self.b2, padding=0)), 2)
        x = torch.flatten(x, 1)
        return self.fc(x).softmax(-1)


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, (h, _c) = self.lstm(self.emb(tokens))
        last = out[:, -1, :] + h[0] * 0.5
        return self.head(torch.sigmoid(last))


def example(name: str, batch: int = 5) -> tuple[nn.Module, torch.Tensor]:
    """A fresh model and an input batch for it."""
    if name == "mlp":
        return MLP(), torch.randn(batch, 20)
    if name == "lenet":
        return LeNet(), torch.randn(batch, 1, 28, 28)
    return LSTMClassifier(), torch.randint(0, 50, (batch, 7))
