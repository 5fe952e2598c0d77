"""Holes an outside tester found in the privacy rules (issue 10), each as the attack it was.

Every test here failed on the release the tester attacked; the fix is in the node's
privacy kernel (``veil.node.kernel``), its request handling, or its size checks.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import veil
from veil.errors import InvalidRequest, ObjectNotFound, PermissionDenied, VeilError
from veil.serde.messages import CLIENT_IDS, ObjectInfo, Ref, RunOp

DATASET = "patients"


@pytest.fixture
def setup(deployment: Any) -> tuple[torch.Tensor, Any, veil.PointerTensor]:
    raw = torch.randn(16, 4, generator=torch.Generator().manual_seed(11))
    deployment.owner.datasets.create(
        DATASET, private=raw, mock=torch.zeros(16, 4), bounds=(-10, 10)
    )
    sci = deployment.scientist()
    return raw, sci, sci.datasets[DATASET].private


# ------------------------------------------------------------------ hole 2: gradients


def test_the_gradient_of_a_non_leaf_is_private_after_a_private_backward(setup: Any) -> None:
    raw, sci, priv = setup
    w = torch.ones(4, 1).send(sci)
    w.requires_grad_(True)
    h = w * 2  # public: computed from the scientist's own w only
    h.retain_grad()
    loss = (priv @ h).sum()  # d loss / d h = the column sums of the dataset
    loss.backward()

    grad = h.grad
    assert grad is not None and grad.private
    with pytest.raises(PermissionDenied):
        grad.get()
    with pytest.raises(PermissionDenied):
        h.get()  # h's gradient came from private data: h itself is private now


# ------------------------------------------------------------------ hole 3: shape arguments


@pytest.mark.parametrize(
    "leak",
    [
        lambda pub, k: pub[:k],
        lambda pub, k: pub[::k],
        lambda pub, k: pub[k:],
        lambda pub, k: pub.narrow(0, 0, k),
        lambda pub, k: pub.repeat(k),
        lambda pub, k: pub.view(k, -1),
        lambda pub, k: torch.split(pub, [k, 64 - k]),
        lambda pub, k: pub.repeat_interleave(k),
    ],
    ids=["stop", "step", "start", "narrow", "repeat", "view", "split_sizes", "repeat_interleave"],
)
def test_a_private_value_cannot_decide_a_shape(setup: Any, leak: Any) -> None:
    raw, sci, priv = setup
    k = (priv[0, 0].abs() * 10).long() + 1  # a private count
    pub = torch.arange(64.0).send(sci)

    with pytest.raises(PermissionDenied, match="private"):
        leak(pub, k)


def test_a_private_integer_index_keeps_the_shape_and_hides_failure(setup: Any) -> None:
    raw, sci, priv = setup
    pub = torch.arange(4.0).send(sci)
    inside = (priv[0, 0].abs() * 0).long()  # 0: in range
    outside = (priv[0, 0].abs() * 0).long() + 99  # out of range on every dataset

    a, b = pub[inside], pub[outside]

    assert a.shape == b.shape == torch.Size([]) and a.private and b.private


# ------------------------------------------------------------------ hole 4: failure bits


def test_whether_an_op_fails_cannot_be_searched(setup: Any, deployment: Any) -> None:
    """The tester's binary search: ``zeros(n)[k]`` fails iff k >= n, so asking with
    n = 1, 2, 4, ... recovers k. Now every call answers the same way."""
    raw, sci, priv = setup
    k = (priv[:, 0].abs() * 3).long()  # private values 0..30
    answers = []
    for n in (1, 2, 4, 8, 16, 32):
        zeros = torch.zeros(n).send(sci)
        try:
            out = zeros[k[3]]
            answers.append(("ok", tuple(out.shape), out.private))
        except VeilError as exc:
            answers.append(("error", type(exc).__name__))
    assert len(set(answers)) == 1 and answers[0] == ("ok", (), True)


def test_a_failed_result_holds_its_error_for_the_owner(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    k = (priv[0, 0].abs() * 0).long() + 50
    out = torch.zeros(3).send(sci)[k]
    req = out.request("what is it")
    deployment.owner.requests.approve(req.id)

    with pytest.raises(VeilError, match="out of bounds|holds an error"):
        out.get()  # approved: the scientist now learns it failed, and why


def test_a_failure_spreads_to_what_is_computed_from_it(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    k = (priv[0, 0].abs() * 0).long() + 50
    bad = torch.zeros(3).send(sci)[k]
    later = (bad + 1) * 2
    req = later.request("and this")
    deployment.owner.requests.approve(req.id)
    with pytest.raises(VeilError, match="holds an error"):
        later.get()


# ------------------------------------------------------------------ hole 5: request binding


@pytest.mark.parametrize(
    "write",
    [lambda m, p: m.mul_(0).add_(p[0]), lambda m, p: m.__setitem__(slice(None), p[3])],
    ids=["overwrite", "setitem"],
)
def test_a_write_between_request_and_approval_voids_the_request(
    setup: Any, deployment: Any, write: Any
) -> None:
    raw, sci, priv = setup
    means = priv.mean(0)
    req = means.request("column means")
    owner_view = deployment.owner.pointer(means.id).get()  # the owner inspects the means
    torch.testing.assert_close(owner_view, raw.mean(0))

    write(means, priv)  # the scientist swaps a raw record in before the approval

    decided = deployment.owner.requests.approve(req.id)
    assert decided.status == "void" and "written after" in decided.note
    with pytest.raises(PermissionDenied):
        means.get()
    assert [r.status for r in deployment.owner.requests.list()] == ["void"]


def test_an_approval_covers_exactly_the_content_approved(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    means = priv.mean(0)
    deployment.owner.requests.approve(means.request("column means").id)
    torch.testing.assert_close(means.get(), raw.mean(0))

    means.zero_()  # even a write with public data changes what was approved
    means.add_(priv[2])

    with pytest.raises(PermissionDenied):
        means.get()


# ------------------------------------------------------------------ hole 10: result sizes


@pytest.mark.parametrize(
    "attack",
    [
        lambda x: torch.zeros(0, 3000).send(x).T @ torch.zeros(0, 3000).send(x),
        lambda x: torch.nn.functional.conv2d(
            torch.ones(1, 1, 1, 1).send(x), torch.ones(1, 1, 1, 1).send(x), padding=1500
        ),
        lambda x: x.send(nn.ZeroPad2d(1500))(torch.ones(1, 1, 1, 1).send(x)),
        lambda x: x.send(nn.ConstantPad1d(3_000_000, 1.0))(torch.ones(1, 1).send(x)),
        lambda x: x.send(nn.Upsample(scale_factor=2000))(torch.ones(1, 1, 2, 2).send(x)),
    ],
    ids=["empty_dims_matmul", "conv_padding", "zeropad_module", "constpad_module", "upsample"],
)
def test_every_op_and_module_call_checks_its_result_size(attack: Any) -> None:
    node = veil.Node("small", owner_email="o@test.local", owner_password="owner-password",
                     max_result_bytes=4 * 1024**2)  # fmt: skip
    owner = veil.VirtualWorker(node=node)
    owner.create_user("s@test.local", "scientist-pw")
    sci = owner.login("s@test.local", "scientist-pw")

    with pytest.raises(InvalidRequest, match="limit"):
        attack(sci)
    assert torch.equal((torch.ones(2).send(sci) + 1).get(), torch.full((2,), 2.0))


# ------------------------------------------------------------------ hole 11: ids per user


def test_a_client_chosen_id_says_nothing_about_other_users(deployment: Any) -> None:
    alice, mallory = deployment.scientist(), deployment.scientist()
    oid = CLIENT_IDS.start + 12345
    xa = torch.ones(2).send(alice)
    reply = alice.call(RunOp("torch.add", [alice._ref(xa), 1], {}, oid))
    assert isinstance(reply, ObjectInfo) and reply.id == oid

    # mallory names the same id: it is hers, free, and refers to nothing of alice's
    xm = torch.ones(3).send(mallory)
    mine = mallory.call(RunOp("torch.zeros_like", [mallory._ref(xm)], {}, oid))
    assert isinstance(mine, ObjectInfo) and mine.id == oid and mine.shape == [3]
    assert torch.equal(veil.PointerTensor(alice, reply, owned=False).get(), torch.full((2,), 2.0))
    assert torch.equal(veil.PointerTensor(mallory, mine, owned=False).get(), torch.zeros(3))

    with pytest.raises(ObjectNotFound):  # an id alice never named is simply not hers
        veil.PointerTensor(alice, ObjectInfo(oid + 1, "tensor", [2], "float32"), owned=False).get()


def test_client_ids_are_checked_in_the_callers_own_namespace(deployment: Any) -> None:
    sci = deployment.scientist()
    x = torch.ones(2).send(sci)
    oid = CLIENT_IDS.start + 777
    sci.call(RunOp("torch.neg", [sci._ref(x)], {}, oid))
    with pytest.raises(InvalidRequest, match="not free"):
        sci.call(RunOp("torch.neg", [sci._ref(x)], {}, oid))
    with pytest.raises(InvalidRequest, match="not free"):  # node ids are not the client's
        sci.call(RunOp("torch.neg", [sci._ref(x)], {}, 5))


def test_a_refusal_for_an_id_is_the_same_whether_it_exists_or_not(deployment: Any) -> None:
    sci, other = deployment.scientist(), deployment.scientist()
    theirs = other.run_op("torch.neg", torch.ones(2).send(other))
    messages = set()
    for oid in (theirs.id, theirs.id + 1):
        with pytest.raises(ObjectNotFound) as err:
            sci.call(RunOp("torch.neg", [Ref(oid)], {}))
        messages.add(str(err.value).replace(str(oid), "ID"))
    assert len(messages) == 1


# ------------------------------------------------------------------ randomness as a channel


def _public_draws_after_a_private_bernoulli(data: torch.Tensor) -> torch.Tensor:
    node = veil.Node("rng", owner_email="o@test.local", owner_password="owner-password")
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("d", private=data, mock=torch.zeros_like(data))
    owner.create_user("s@test.local", "scientist-pw")
    sci = owner.login("s@test.local", "scientist-pw")
    priv = sci.datasets["d"].private
    torch.manual_seed(0)
    # draws one number per element up to the first p outside [0, 1]: a count of private values
    torch.bernoulli(torch.where(priv > 0, 0.5, 2.0))
    return torch.zeros(8).send(sci).uniform_().get()


def test_how_many_random_numbers_an_op_on_private_data_draws_is_not_public() -> None:
    """torch's generator is shared: a scientist can clone it from her own random tensors and
    count what an op on private data drew. Ops on private data draw from their own stream."""
    a = _public_draws_after_a_private_bernoulli(torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0]))
    b = _public_draws_after_a_private_bernoulli(torch.tensor([-1.0, 1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(a, b)
