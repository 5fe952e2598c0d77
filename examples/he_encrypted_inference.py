"""Workflow 1: encrypted data, plaintext model (CKKS).

A clinic (the client) holds patient features and must not reveal them. A lab's node
holds a trained model: a small MLP with a square activation (30 -> 8 -> 2), or a
logistic regression (its logits; the sigmoid is monotone, so the clinic applies it
after decrypting). The client
encrypts each feature vector with CKKS, the node evaluates the model on the
ciphertexts (it never sees the features, and the model never leaves the node), and the
client decrypts its predictions, which match the plaintext model within 1e-3.

The model is the lab's private dataset, so the encrypted predictions are derived from
private data: the lab approves releasing them (the client could otherwise probe the
weights with crafted inputs). Run: ``python examples/he_encrypted_inference.py``.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_breast_cancer

import veil
from veil.he import ckks


def _fit(params: list[torch.Tensor], loss_fn, steps: int = 300, lr: float = 0.05) -> None:  # noqa: ANN001
    """Plain gradient descent (the lab's training; nothing encrypted here)."""
    for _ in range(steps):
        for p in params:
            p.grad = None
        loss_fn().backward()
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad


def train_model(x: torch.Tensor, y: torch.Tensor, hidden: int = 8) -> tuple[torch.Tensor, ...]:
    """The lab's plaintext model: square activation, so CKKS can evaluate it exactly."""
    torch.manual_seed(0)
    w1 = (torch.randn(x.shape[1], hidden) * 0.1).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, 2) * 0.1).requires_grad_()
    b2 = torch.zeros(2, requires_grad=True)
    _fit(
        [w1, b1, w2, b2],
        lambda: torch.nn.functional.cross_entropy(((x @ w1 + b1) ** 2) @ w2 + b2, y),
    )
    return tuple(t.detach().double() for t in (w1, b1, w2, b2))


def train_logistic(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], 1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    _fit(
        [w, b],
        lambda: torch.nn.functional.binary_cross_entropy_with_logits((x @ w + b)[:, 0], y.float()),
    )
    return w.detach().double(), b.detach().double()


def run(model: str = "mlp", samples: int = 4) -> dict[str, float]:
    """Encrypted inference with ``model`` ("mlp" or "logistic") on ``samples`` patients."""
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target)
    if model == "mlp":
        w1, b1, w2, b2 = train_model(x, y)
        params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    elif model == "logistic":
        w, b = train_logistic(x, y)
        params = {"w": w, "b": b}
    else:
        raise ValueError(f"model is 'mlp' or 'logistic', got {model!r}")

    # The lab's node: the model is its private dataset (with a zero mock).
    lab = veil.Node("lab", owner_email="owner@lab.org", owner_password="lab-owner-pass")
    owner = veil.VirtualWorker(node=lab)
    owner.datasets.create(
        model, private=params, mock={k: torch.zeros_like(v) for k, v in params.items()}
    )
    owner.create_user("clinic@example.org", "clinic-password", role="data_scientist")
    clinic = owner.login("clinic@example.org", "clinic-password")
    remote = clinic.datasets[model]

    # The clinic's keys. The MLP needs depth 3 (matmul, square, matmul): N=16384 for
    # 128-bit security; the logistic regression needs depth 1: the default N=8192.
    ctx = ckks.context(16384, depth=3) if model == "mlp" else ckks.context()
    worst = 0.0
    for i in range(samples):
        enc = ckks.encrypt(x[i].double(), ctx, replicate=True).send(clinic)
        if model == "mlp":
            hidden = (enc @ remote["w1"].private + remote["b1"].private).square()
            scores = hidden @ remote["w2"].private + remote["b2"].private
            ref = ((x[i].double() @ w1 + b1) ** 2) @ w2 + b2
        else:
            scores = enc @ remote["w"].private + remote["b"].private
            ref = x[i].double() @ w + b
        request = scores.request("predictions for our own patient")
        owner.requests.approve(request.id, "encrypted predictions for the sender's own data")
        got = scores.decrypt()  # only the clinic's context can decrypt
        worst = max(worst, float((got - ref).abs().max()))
        print(f"patient {i}: encrypted {got.numpy().round(4)}  plaintext {ref.numpy().round(4)}")
    print(f"largest difference from the plaintext model: {worst:.2e}")
    return {"max_error": worst}


if __name__ == "__main__":
    run("logistic")
    run("mlp")
