"""PySyft 0.2 Part 10 (federated learning with encrypted gradient aggregation)."""

from __future__ import annotations

import torch
from torch import nn, optim

import veil as sy


def test_part_10_models_are_averaged_encrypted() -> None:
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    secure_worker = sy.VirtualWorker(hook, id="secure_worker")
    torch.manual_seed(0)
    data = torch.randn(8, 2)
    target = data @ torch.tensor([[0.5], [-1.0]])
    parts = {bob: (data[:4], target[:4]), alice: (data[4:], target[4:])}
    model = nn.Linear(2, 1)
    models = {}
    for w, (d, t) in parts.items():
        m = model.copy().send(w)
        opt = optim.SGD(m.parameters(), lr=0.1)
        dp, tp = d.send(w), t.send(w)
        for _ in range(3):
            opt.zero_grad()
            ((m(dp) - tp) ** 2).mean().backward()
            opt.step()
        models[w] = m.get()
    enc = {
        w: m.weight.data.fix_precision().share(bob, alice, crypto_provider=secure_worker)
        for w, m in models.items()
    }
    avg = ((enc[bob] + enc[alice]) * 0.5).get().float_precision()
    expected = (models[bob].weight.data + models[alice].weight.data) / 2
    torch.testing.assert_close(avg, expected, atol=1e-4, rtol=0)


def test_share_accepts_pysyft_keywords_and_deals_in_process() -> None:
    bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    x = torch.tensor([1.25, -2.5])
    a = x.fix_precision(precision_fractional=3).share(bob, alice, protocol="snn")
    b = x.fix_precision(precision_fractional=3).share(bob, alice, crypto_provider=None)
    assert a.session is b.session  # one in-process dealer per set of parties
    torch.testing.assert_close((a * b).get().float_precision(), x * x, atol=1e-2, rtol=0)
    p = x.send(bob).encrypt(workers=[bob, alice], precision_fractional=4)
    torch.testing.assert_close(p.get().float_precision(), x, atol=1e-4, rtol=0)


def test_integers_come_back_as_integers() -> None:
    bob, alice, carol = (sy.VirtualWorker(n) for n in ("bob", "alice", "carol"))
    x = torch.tensor([1, -2, 300])
    shared = x.fix_precision().share(bob, alice, crypto_provider=carol)
    assert torch.equal(shared.get().float_precision(), x)  # dtype int64, as PySyft gave
    assert torch.equal(x.share(bob, alice, crypto_provider=carol).get().float_precision(), x)
    on_bob = x.send(bob).fix_precision().share(bob, alice, crypto_provider=carol)
    assert torch.equal(on_bob.get().float_precision(), x)
    assert shared.get().float_precision(torch.float32).dtype == torch.float32
