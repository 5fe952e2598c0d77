"""Attacks from a red-team review of the privacy kernel, each as the program that broke it.

Each transcript test runs one scientist program on two nodes whose datasets differ only in
values; what the scientist sees must be identical. The others check a denial of service.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import veil
from veil.errors import InvalidRequest, VeilError
from veil.node import kernel


def _scientist(data: torch.Tensor, **node_options: Any) -> tuple[veil.Node, Any, Any]:
    node = veil.Node("red", owner_email="o@t.org", owner_password="owner-pass-1",
                     **node_options)  # fmt: skip
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("d", private=data, mock=torch.zeros_like(data))
    owner.create_user("s@t.org", "sci-pass-123")
    sci = owner.login("s@t.org", "sci-pass-123")
    return node, sci, sci.datasets["d"].private


def _transcript(program: Callable[[Any, Any], Any], data: torch.Tensor) -> list[Any]:
    node, sci, priv = _scientist(data)
    log: list[Any] = []

    def see(what: str, fn: Callable[[], Any]) -> Any:
        try:
            out = fn()
        except VeilError as exc:
            text = re.sub(r"\d{12,}", "ID", str(exc))  # object ids are random per node
            log.append((what, type(exc).__name__, text))
            return None
        if isinstance(out, veil.PointerTensor):
            log.append((what, tuple(out.shape), out.private))
        elif isinstance(out, torch.Tensor):
            log.append((what, out.tolist()))
        else:
            log.append((what, out))
        return out

    program(sci, priv, see)  # type: ignore[call-arg]
    return log


A = torch.tensor([[3.5, -1.25, 7.0, 42.0]])
B = torch.tensor([[3.5, -1.25, 7.0, 5.0]])


def _same(program: Any) -> None:
    assert _transcript(program, A) == _transcript(program, B)


def test_a_gradient_written_with_private_data_stays_private_when_read_again() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        w = torch.zeros(1, 4).send(sci)
        w.requires_grad_(True)
        (w * 0).sum().backward()
        w.grad.add_(priv)  # the pointer to the gradient is dropped at once
        see("w.grad private", lambda: w.grad.private)
        see("w.grad.get", lambda: w.grad.get())

    _same(program)
    assert ("w.grad private", True) in _transcript(program, A)


def test_a_step_over_public_parameters_with_private_gradients_makes_them_private() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        w = torch.zeros(1, 4).send(sci)
        w.requires_grad_(True)
        (w * 0).sum().backward()
        w.grad.sub_(priv)
        opt = veil.RemoteOptimizer(torch.optim.SGD, [w], lr=1.0)
        opt.step()  # w = priv
        see("w.private", lambda: (w + 0).private)
        see("w.get", lambda: w.get())

    _same(program)
    assert ("w.private", True) in _transcript(program, A)


def test_how_many_private_writes_succeeded_is_not_in_a_backward_error() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        k = priv[0, 3].long()  # 42 or 5
        w = torch.ones(64).send(sci)
        w.requires_grad_(True)
        s = torch.zeros(64).send(sci)
        y = w * s  # public; saves s at version 0
        for i in range(64):
            s[k + i] = 1.0  # succeeds iff k + i < 64 (hidden either way)
        see("backward", lambda: y.sum().backward())
        see("w.grad", lambda: w.grad)

    _same(program)


def test_a_failed_module_call_leaves_the_gradients_a_successful_one_would() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        emb = sci.send(nn.Embedding(10, 2))
        out = see("emb(idx)", lambda: emb(priv[0, 3].long()))  # 42 fails, 5 works
        see("out.mul_(2)", lambda: out.mul_(2))
        see("backward", lambda: out.sum().backward())
        see("weight.grad", lambda: emb.parameters()[0].grad)
        see("object bytes", lambda: sci.info().object_bytes)

    _same(program)


def test_a_view_picked_by_a_private_index_does_not_alias_public_data() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        pub = torch.zeros(16).send(sci)
        r = pub[priv[0, 3].long()]  # in range on one dataset only
        r.add_(1)
        see("pub private", lambda: (pub + 0).private)

    _same(program)


def test_embedding_with_max_norm_is_tainted_whether_or_not_the_lookup_failed() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        emb = sci.send(nn.Embedding(50, 2, max_norm=1.0))
        idx = torch.stack([priv[0, 3].long(), torch.tensor(9999).send(sci)])
        see("lookup", lambda: emb(idx))
        see("module private", lambda: [o.private for o in sci.objects() if o.kind == "module"])

    _same(program)


def test_a_request_is_voided_by_any_write_not_by_a_change_of_content() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        x = priv[0, 3] * 1
        req = x.request("the value")
        x.clamp_(max=10.0)  # changes x only if x > 10
        see("status", lambda: [r.status for r in sci.requests.list() if r.id == req.id])

    _same(program)
    assert ("status", ["void"]) in _transcript(program, A)


def test_random_draws_of_an_op_on_private_data_are_not_seen_by_public_ones() -> None:
    def program(sci: Any, priv: Any, see: Any) -> None:
        torch.manual_seed(0)
        see("bernoulli", lambda: torch.bernoulli(torch.where(priv > 6, 0.5, 2.0)))
        see("public draws", lambda: torch.zeros(4).send(sci).uniform_().get())

    _same(program)


def test_ctc_loss_is_not_on_the_allowlist() -> None:
    """torch's CPU ctc_loss reads log-probabilities at target labels it does not check: an
    out-of-range label read (or crashed on) the node's memory."""
    assert "F.ctc_loss" not in veil.ops.names()


@pytest.mark.parametrize(
    "attack",
    [
        lambda w: torch.bincount(torch.tensor([10**7]).send(w)),
        lambda w: nn.functional.one_hot(torch.tensor([10**7]).send(w)),
        lambda w: torch.repeat_interleave(torch.ones(1).send(w), torch.tensor([10**7]).send(w)),
        lambda w: torch.repeat_interleave(torch.tensor([10**7]).send(w)),
        lambda w: w.run_op(
            "mpc.a128.scale",
            torch.zeros(4, 1, 4000, dtype=torch.int64).send(w),
            torch.zeros(4000, 1, dtype=torch.int64).send(w),
        ),
    ],
    ids=["bincount", "one_hot", "repeat_interleave", "repeat_interleave_counts", "mpc_scale"],
)
def test_sizes_set_by_public_values_are_checked_before_allocating(attack: Any) -> None:
    _, sci, _ = _scientist(A, max_result_bytes=1024**2)
    with pytest.raises(InvalidRequest, match="limit|does not broadcast"):
        attack(sci)


def test_long_argument_lists_do_not_fill_the_prediction_cache() -> None:
    _, sci, priv = _scientist(torch.randn(20, 4))
    before = len(kernel._CACHE)
    for start in range(5):
        priv[list(range(start, start + 15)) * 20]  # 300 indices: not a cache key
    assert len(kernel._CACHE) - before <= 1
