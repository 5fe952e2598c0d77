"""DP-SGD end to end: a digits classifier at epsilon <= 3, delta = 1e-5 (veil.dp.make_private).

Run it: ``python examples/dp_digits.py``. It trains on scikit-learn's ``load_digits`` (shipped
with the package: nothing is downloaded), shows a progress bar with the loss and the epsilon
spent, and prints the test accuracy and the final epsilon (about 94% at epsilon 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import veil.dp as dp

EPSILON, DELTA, EPOCHS = 3.0, 1e-5, 10


def run(epochs: int = EPOCHS, *, progress: bool = True) -> dict[str, Any]:
    """Train privately; return the test accuracy and the epsilon spent."""
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-3
    train = TensorDataset(torch.tensor((xtr - mu) / sd, dtype=torch.float32), torch.tensor(ytr))
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    private, popt, loader = dp.make_private(module=model, optimizer=opt,
                                            data_loader=DataLoader(train, batch_size=64),
                                            target_epsilon=EPSILON, target_delta=DELTA,
                                            epochs=epochs, max_grad_norm=1.0)  # fmt: skip
    with dp.PrivacyProgress(popt, delta=DELTA, total=epochs * len(loader),
                            disable=not progress) as bar:  # fmt: skip
        for _ in range(epochs):
            for xb, yb in loader:
                popt.zero_grad()
                loss = nn.functional.cross_entropy(private(xb), yb)
                loss.backward()
                popt.step()
                bar.advance(loss=loss.item())
    private.eval()
    with torch.no_grad():
        pred = private(torch.tensor((xte - mu) / sd, dtype=torch.float32)).argmax(1).numpy()
    return {"accuracy": float(np.mean(pred == yte)), "epsilon": private.get_epsilon(DELTA)}


if __name__ == "__main__":
    out = run()
    print(f"test accuracy {out['accuracy']:.1%} at epsilon {out['epsilon']:.2f}, delta {DELTA}")
