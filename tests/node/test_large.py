"""Large payloads: a 1 GB tensor and a ~256 MB model survive the trip to a node and back."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch
from torch import nn

import veil

pytestmark = pytest.mark.slow

GB_ELEMENTS = 2**28  # float32: exactly 1 GiB


def test_one_gigabyte_tensor_send_and_get(virtual: Any) -> None:
    w, node = virtual.owner, virtual.node
    t = torch.arange(GB_ELEMENTS, dtype=torch.float32)
    t[::4097] *= -1.5  # break the pattern so a shifted or reordered chunk would show
    assert t.numel() * t.element_size() == 1024**3

    p = t.send(w)

    assert isinstance(p, veil.PointerTensor)
    assert p.shape == t.shape and p.dtype == torch.float32
    assert w.info().object_bytes == 1024**3
    assert torch.equal(p[-3:].get(), t[-3:])
    assert torch.equal(p[:: 2**20].get(), t[:: 2**20])
    torch.testing.assert_close(p.sum().get(), t.sum())

    back = p.get()

    assert back.shape == t.shape and back.dtype == t.dtype
    assert torch.equal(back[:1000], t[:1000]) and torch.equal(back[-1000:], t[-1000:])
    assert torch.equal(back, t)  # a full scan, without allocating a comparison tensor
    del back, t, p
    w.flush()
    gc.collect()
    assert node.object_count() == 0


def test_large_model_state_round_trips(virtual: Any) -> None:
    w = virtual.owner
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(4)])
    nbytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert nbytes > 256 * 1024**2

    remote = w.send(model)
    assert len(remote.parameters()) == 8
    x = torch.randn(2, 4096)
    torch.testing.assert_close(remote(x.send(w)).get(), model(x), rtol=1e-5, atol=1e-5)
    fetched = remote.get()

    assert isinstance(fetched, nn.Sequential) and len(fetched) == 4
    got, want = fetched.state_dict(), model.state_dict()
    assert list(got) == list(want)
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    del fetched, got, remote
    w.flush()
    assert virtual.node.object_count() == 0


def test_large_tensor_over_every_transport(deployment: Any) -> None:
    w = deployment.scientist()
    t = torch.randn(16 * 1024**2 // 4 * 3)  # 48 MB: several transport chunks

    p = t.send(w)
    back = p.get()

    assert torch.equal(back, t)
    assert torch.equal((p[1::1000] * 2).get(), t[1::1000] * 2)
