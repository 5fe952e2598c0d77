"""The PySyft 0.2 seed example runs unchanged and prints the doubled tensor."""

from __future__ import annotations

import pytest


def test_pysyft_seed_example_runs_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    import veil as sy

    hook = sy.TorchHook(torch)
    alice = sy.VirtualWorker(hook, id="alice")
    bob = sy.VirtualWorker(hook, id="bob")  # noqa: F841 - part of the verbatim example
    data = torch.tensor([1, 2, 3, 4.0]).send(alice)
    result = data * 2
    print(result.get())

    assert capsys.readouterr().out == "tensor([2., 4., 6., 8.])\n"


def test_seed_example_pointers_live_on_alice() -> None:
    import torch

    import veil as sy

    hook = sy.TorchHook(torch)
    alice = sy.VirtualWorker(hook, id="alice")
    data = torch.tensor([1, 2, 3, 4.0]).send(alice)
    result = data * 2

    assert isinstance(result, sy.PointerTensor)
    assert result.location is alice and alice.id == "alice"
    assert alice.node.object_count() == 2
    assert torch.equal(result.get(), torch.tensor([2.0, 4.0, 6.0, 8.0]))
