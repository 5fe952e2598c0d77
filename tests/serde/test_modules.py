"""Allowlisted modules travel as descriptions and compute the same on a node."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import veil
from veil.serde.modules import module_to_spec, spec_to_module

CASES = [
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), (2, 1, 8, 8)),
    (lambda: nn.LSTM(4, 8, num_layers=2, batch_first=True, dropout=0.0), (2, 5, 4)),
    (lambda: nn.GRU(4, 6, bidirectional=True), (5, 2, 4)),
    (lambda: nn.RNN(4, 6, nonlinearity="relu", bias=False), (5, 2, 4)),
    (lambda: nn.Sequential(nn.Embedding(10, 4, padding_idx=0), nn.LayerNorm(4)), None),
    (lambda: nn.MultiheadAttention(8, 2, batch_first=True), (2, 3, 8)),
    (lambda: nn.Sequential(nn.Linear(3, 3), nn.GroupNorm(1, 3), nn.GELU(), nn.Dropout(0.0)), (4, 3)),
]  # fmt: skip


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[index,return-value]


@pytest.mark.parametrize(("make", "shape"), CASES)
def test_module_round_trips_and_runs_remotely(make: object, shape: tuple[int, ...] | None) -> None:
    torch.manual_seed(0)
    model = make().eval()  # type: ignore[operator]
    x = torch.randint(0, 10, (2, 5)) if shape is None else torch.randn(*shape)
    args = (x, x, x) if isinstance(model, nn.MultiheadAttention) else (x,)
    rebuilt = spec_to_module(module_to_spec(model))
    assert type(rebuilt) is type(model)
    for (n1, t1), (n2, t2) in zip(
        model.state_dict().items(), rebuilt.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(t1, t2)
    with torch.no_grad():
        expected = _first(model(*args))
    worker = veil.VirtualWorker("m")
    remote = worker.send(model)
    assert remote.id is not None  # rebuilt on the node, not run through pointers locally
    got = _first(remote(*[a.send(worker) for a in args])).get()
    torch.testing.assert_close(got, expected)
    assert torch.equal(remote.get().state_dict()[n1], model.state_dict()[n1])


def test_a_submodule_in_eval_mode_stays_in_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    model[1].eval()  # e.g. frozen batch-norm statistics in a model being trained
    built = spec_to_module(module_to_spec(model))
    assert [m.training for m in built.modules()] == [m.training for m in model.modules()]
    assert built.training and not built[1].training
