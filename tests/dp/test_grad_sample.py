"""Per-sample gradients, norms and clipped sums against a naive per-example backward loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil.dp.sgd import DPGRU, DPLSTM, DPRNN, GradSampleModule, from_torch_rnn
from veil.dp.sgd.engine import _swap_rnns

B = 6


class TextClassifier(nn.Module):
    def __init__(self, rnn: type[nn.RNNBase] = nn.LSTM, **kw: object) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.rnn = rnn(8, 12, batch_first=True, **kw)
        self.fc = nn.Linear(12 * (2 if kw.get("bidirectional") else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))
        return self.fc(out[:, -1])


class Attn(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.bf = batch_first
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bf:
            x = x.transpose(0, 1)
        h, _ = self.mha(x, x, x)
        h = self.ln(h)
        h = h.mean(1 if self.bf else 0)
        return self.fc(h)


def _cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)), torch.randn(B, 10)),
        "cnn2d": (
            nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.GroupNorm(2, 4),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, stride=2),
                nn.Flatten(),
                nn.Linear(4 * 3 * 3, 3),
            ),
            torch.randn(B, 1, 8, 8),
        ),  # fmt: skip
        "cnn1d": (
            nn.Sequential(
                nn.Conv1d(2, 4, 3, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)
            ),
            torch.randn(B, 2, 10),
        ),
        "seq_linear": (
            nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Flatten(), nn.Linear(28, 3)),
            torch.randn(B, 4, 5),
        ),  # fmt: skip
        "lstm": (TextClassifier(nn.LSTM), torch.randint(0, 20, (B, 5))),
        "gru_2layer_bi": (
            TextClassifier(nn.GRU, num_layers=2, bidirectional=True),
            torch.randint(0, 20, (B, 5)),
        ),  # fmt: skip
        "rnn": (TextClassifier(nn.RNN), torch.randint(0, 20, (B, 5))),
        "mha_batch_first": (Attn(True), torch.randn(B, 4, 8)),
        "mha_seq_first": (Attn(False), torch.randn(B, 4, 8)),
    }


def _naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example gradients by one backward per example."""
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            out.setdefault(name, []).append(p.grad.detach().clone() if p.grad is not None
                                            else torch.zeros_like(p))  # fmt: skip
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("ghost", ["auto", "always", "never"])
def test_clipped_sum_equals_the_per_example_loop(case: str, ghost: str) -> None:
    model, x = _cases()[case]
    _swap_rnns(model)
    y = torch.randint(0, 3, (B,))
    ref = _naive(model, x, y)
    gsm = GradSampleModule(model, ghost=ghost)
    model.zero_grad()
    nn.functional.cross_entropy(gsm(x), y).backward()
    names = {p: n for n, p in model.named_parameters()}
    psg = gsm.per_sample_gradients()
    for p, g in psg.items():
        torch.testing.assert_close(g, ref[names[p]], atol=1e-5, rtol=1e-4)
    ref_norms = (
        torch.stack([ref[n].flatten(1) for n in ref], 0).pow(2).sum((0, 2))
        if False
        else (sum(ref[n].flatten(1).pow(2).sum(1) for n in ref).sqrt())
    )
    c = float(ref_norms.median())  # clip about half of the examples
    norms, sums = gsm.clip_and_sum(c)
    torch.testing.assert_close(norms, ref_norms, atol=1e-5, rtol=1e-4)
    factors = (c / (ref_norms + 1e-6)).clamp(max=1)
    for p, s in sums.items():
        expect = torch.einsum("b,b...->...", factors, ref[names[p]])
        torch.testing.assert_close(s, expect, atol=1e-5, rtol=1e-4)
    assert len(sums) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize(
    "kw", [{}, {"num_layers": 2, "bidirectional": True}, {"batch_first": True}]
)
def test_dp_recurrent_layers_match_torch(cls: type[nn.RNNBase], kw: dict[str, object]) -> None:
    torch.manual_seed(1)
    rnn = cls(4, 6, **kw)  # type: ignore[arg-type]
    twin = from_torch_rnn(rnn)
    assert isinstance(twin, DPLSTM | DPGRU | DPRNN)
    assert {id(p) for p in twin.parameters()} == {id(p) for p in rnn.parameters()}
    x = torch.randn(3, 5, 4)
    out_ref, h_ref = rnn(x)
    out, h = twin(x)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(torch.utils._pytree.tree_leaves(h), torch.utils._pytree.tree_leaves(h_ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
