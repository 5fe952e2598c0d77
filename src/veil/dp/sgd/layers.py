"""DP-friendly recurrent layers: RNN, GRU and LSTM built from ``nn.Linear`` cells.

They compute the same function as ``torch.nn.RNN/GRU/LSTM`` with the *same* Parameter
objects (built by :func:`from_torch_rnn`), but every matrix product goes through an
``nn.Linear``, whose per-sample gradient norms veil computes from activations without
materializing per-sample gradients. ``make_private`` swaps them in automatically.

Example:
    >>> import torch
    >>> lstm = torch.nn.LSTM(4, 8, batch_first=True)
    >>> dp = from_torch_rnn(lstm)
    >>> x = torch.randn(2, 5, 4)
    >>> torch.allclose(dp(x)[0], lstm(x)[0], atol=1e-6)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from veil.errors import UnsupportedError

__all__ = ["DPGRU", "DPLSTM", "DPRNN", "from_torch_rnn"]


def _linear_sharing(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = weight
    lin.bias = bias  # type: ignore[assignment]
    return lin


class _DPRecurrent(nn.Module):
    """Common driver: layers x directions of cells, batch_first, dropout between layers."""

    mode: str = ""
    gates: int = 1

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        if getattr(rnn, "proj_size", 0):
            raise UnsupportedError("LSTM with proj_size is not supported by DP-SGD yet")
        self.input_size, self.hidden_size = rnn.input_size, rnn.hidden_size
        self.num_layers, self.bias = rnn.num_layers, rnn.bias
        self.batch_first, self.dropout = rnn.batch_first, float(rnn.dropout)
        self.bidirectional = rnn.bidirectional
        self.nonlinearity = getattr(rnn, "nonlinearity", "tanh")
        self.ih = nn.ModuleList()
        self.hh = nn.ModuleList()
        for layer in range(self.num_layers):
            for suffix in ["", "_reverse"] if self.bidirectional else [""]:
                name = f"l{layer}{suffix}"
                b_ih = getattr(rnn, f"bias_ih_{name}") if self.bias else None
                b_hh = getattr(rnn, f"bias_hh_{name}") if self.bias else None
                self.ih.append(_linear_sharing(getattr(rnn, f"weight_ih_{name}"), b_ih))
                self.hh.append(_linear_sharing(getattr(rnn, f"weight_hh_{name}"), b_hh))

    def _cell(self, gi: torch.Tensor, hh: nn.Linear, h: torch.Tensor,
              c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        raise NotImplementedError

    def forward(self, x: Any, hx: Any = None) -> tuple[torch.Tensor, Any]:
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise UnsupportedError(
                "PackedSequence input is not supported by DP-SGD yet; pad the batch instead"
            )
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1 if not self.batch_first else 0)
        if not self.batch_first:
            x = x.transpose(0, 1)  # (B, T, F): every Linear sees the batch in dim 0
        batch, steps = x.shape[0], x.shape[1]
        dirs = 2 if self.bidirectional else 1
        is_lstm = self.mode == "LSTM"
        if hx is None:
            zeros = x.new_zeros(self.num_layers * dirs, batch, self.hidden_size)
            h0, c0 = zeros, (zeros if is_lstm else None)
        elif is_lstm:
            h0, c0 = hx
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        else:
            h0, c0 = (hx if batched else hx.unsqueeze(1)), None
        h_n, c_n = [], []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                gi = self.ih[k](layer_in)  # all time steps at once: (B, T, gates*H)
                h = h0[k]
                c = c0[k] if c0 is not None else None
                seq: list[torch.Tensor] = [h] * steps
                order = range(steps - 1, -1, -1) if d == 1 else range(steps)
                for t in order:
                    h, c = self._cell(gi[:, t], self.hh[k], h, c)  # type: ignore[arg-type]
                    seq[t] = h
                outs.append(torch.stack(seq, 1))
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            layer_in = torch.cat(outs, -1) if dirs == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = nn.functional.dropout(layer_in, self.dropout, True)
        out = layer_in if self.batch_first else layer_in.transpose(0, 1)
        hn = torch.stack(h_n, 0)
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
            hn = hn.squeeze(1)
        if is_lstm:
            cn = torch.stack(c_n, 0)
            return out, (hn, cn if batched else cn.squeeze(1))
        return out, hn

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first={self.batch_first}, bidirectional={self.bidirectional}"
        )


class DPRNN(_DPRecurrent):
    """``nn.RNN`` (tanh or relu) from Linear cells."""

    mode = "RNN"

    def _cell(self, gi: torch.Tensor, hh: nn.Linear, h: torch.Tensor,
              c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        pre = gi + hh(h)
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)), None


class DPGRU(_DPRecurrent):
    """``nn.GRU`` from Linear cells (same gate order r, z, n)."""

    mode = "GRU"

    def _cell(self, gi: torch.Tensor, hh: nn.Linear, h: torch.Tensor,
              c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        gh = hh(h)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h, None


class DPLSTM(_DPRecurrent):
    """``nn.LSTM`` from Linear cells (same gate order i, f, g, o)."""

    mode = "LSTM"

    def _cell(self, gi: torch.Tensor, hh: nn.Linear, h: torch.Tensor,
              c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        assert c is not None
        i, f, g, o = (gi + hh(h)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def from_torch_rnn(rnn: nn.Module) -> nn.Module:
    """The DP-friendly twin of an ``nn.RNN/GRU/LSTM`` sharing its Parameters."""
    if isinstance(rnn, nn.LSTM):
        return DPLSTM(rnn)
    if isinstance(rnn, nn.GRU):
        return DPGRU(rnn)
    if isinstance(rnn, nn.RNN):
        return DPRNN(rnn)
    raise TypeError(f"expected nn.RNN, nn.GRU or nn.LSTM, got {type(rnn).__name__}")
