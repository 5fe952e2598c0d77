"""Attacks on rule 1 (nothing executable crosses the wire) and rule 2 (private stays private).

Every attack must fail with a clear error, and the node must keep answering correctly.
"""

from __future__ import annotations

import copy
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil
from veil.errors import (
    InvalidRequest,
    ObjectNotFound,
    OpNotAllowed,
    PermissionDenied,
    SerdeError,
    VeilError,
    error_from_code,
)
from veil.node import Session
from veil.serde import codec
from veil.serde.messages import (
    Call,
    DeleteObjects,
    DTypeArg,
    ErrorReply,
    GetObject,
    ListArg,
    ModuleSpec,
    ObjectInfo,
    Ref,
    RunOp,
    SendObject,
    TensorData,
    Value,
)
from veil.serde.modules import module_to_spec
from veil.version import WIRE_VERSION

DATASET = "patients"


def _publish(deployment: Any) -> torch.Tensor:
    raw = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    deployment.owner.datasets.create(
        DATASET, private=raw, mock=torch.zeros(16, 4), description="vitals",
        columns=["a", "b", "c", "d"], bounds=(-10, 10),
    )  # fmt: skip
    return raw


@pytest.fixture
def setup(deployment: Any) -> tuple[torch.Tensor, Any, veil.PointerTensor]:
    """(the private data, a data scientist's worker, the scientist's pointer to the data)."""
    raw = _publish(deployment)
    sci = deployment.scientist()
    return raw, sci, sci.datasets[DATASET].private


def _alive(worker: Any) -> None:
    """The node still answers correctly for this user."""
    p = torch.tensor([1.0, 2.0]).send(worker)
    assert torch.equal((p * 3).get(), torch.tensor([3.0, 6.0]))


def _denied(ptr: Any, what: str = "") -> PermissionDenied:
    try:
        ptr.get()
    except PermissionDenied as err:
        assert "request" in str(err), what
        return err
    pytest.fail(f"{what or ptr!r}: get() was allowed")


def _refused(error: Any, name: str, attempt: Callable[[], Any]) -> None:
    try:
        attempt()
    except error:
        return
    pytest.fail(f"{name}: expected {error.__name__}, but it was allowed")


def _asset_intact(deployment: Any, raw: torch.Tensor) -> None:
    assert torch.equal(deployment.owner.datasets[DATASET].private.get(), raw)


def _forge(worker: Any, obj_id: int, shape: Any = (4,), *, owned: bool = False) -> Any:
    """A pointer to an id this worker never received (as an attacker would guess or steal)."""
    info = ObjectInfo(obj_id, "tensor", list(shape), "float32")
    return veil.PointerTensor(worker, info, owned=owned)


# ------------------------------------------------------------------ reading private data


def test_get_of_dataset_private_pointer_is_refused(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup

    err = _denied(priv)

    assert DATASET in str(err)
    assert priv.private and DATASET in repr(priv)
    for leak in (priv.item, priv.tolist, lambda: priv.move(veil.VirtualWorker("elsewhere"))):
        with pytest.raises(PermissionDenied):
            leak()
    assert torch.equal(sci.datasets[DATASET].mock, torch.zeros(16, 4))
    _alive(sci)
    _asset_intact(deployment, raw)


DERIVED: dict[str, Callable[[Any, Any], Any]] = {
    "mean": lambda x, own: x.mean(),
    "mean_dim": lambda x, own: x.mean(0),
    "plus_one": lambda x, own: x + 1,
    "reflected": lambda x, own: 1 - x,
    "index": lambda x, own: x[0],
    "slice": lambda x, own: x[:, 1:],
    "public_mask_index": lambda x, own: x[torch.tensor([True, False] * 8)],
    "int_index": lambda x, own: x[(x[:, 0] > 0).long()],
    "view": lambda x, own: x.view(-1),
    "reshape": lambda x, own: x.reshape(4, 16),
    "transpose": lambda x, own: x.T,
    "detach": lambda x, own: x.detach(),
    "data": lambda x, own: x.data,
    "clone": lambda x, own: x.clone(),
    "copy": lambda x, own: x.copy(),
    "to_double": lambda x, own: x.double(),
    "compare": lambda x, own: x > 0,
    "argmax": lambda x, own: x.argmax(),
    "max_values": lambda x, own: torch.max(x, 0).values,
    "max_indices": lambda x, own: torch.max(x, 0).indices,
    "sort_indices": lambda x, own: x.sort(0)[1],
    "split": lambda x, own: torch.split(x, 4)[1],
    "chunk": lambda x, own: x.chunk(2)[0],
    "unbind": lambda x, own: x.unbind(1)[3],
    "relu": lambda x, own: F.relu(x),
    "matmul_own": lambda x, own: own @ x,
    "mixed_own": lambda x, own: own + x.sum(),
    "stack_own": lambda x, own: torch.stack([own, x[0]]),
    "where_own": lambda x, own: torch.where(own > 0, x[0], own),
    "zeros_like": lambda x, own: torch.zeros_like(x) + x.std(),
    "shape_only": lambda x, own: torch.ones_like(x),  # conservative: any use taints
}


def test_anything_derived_from_private_data_is_refused(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    for name, derive in DERIVED.items():
        own = torch.ones(16 if name == "matmul_own" else 4).send(sci)

        result = derive(priv, own)

        assert isinstance(result, veil.PointerTensor) and result.private, name
        assert result.location is sci, name
        _denied(result, name)
        assert torch.equal(own.get(), torch.ones(own.shape)), name  # public inputs stay public
    _alive(sci)
    _asset_intact(deployment, raw)


def test_derived_from_derived_and_module_outputs_are_refused(setup: Any) -> None:
    raw, sci, priv = setup
    model = sci.send(nn.Sequential(nn.Linear(4, 2)))

    out = model(priv)
    loss = out.pow(2).mean()
    chain = ((priv - priv.mean(0)) / priv.std(0)).abs().sum(1).sqrt()

    for ptr in (out, loss, chain, chain[3]):
        _denied(ptr)
    _alive(sci)


def test_owner_can_always_fetch(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    mean = priv.mean(0)
    owner_view = _forge(deployment.owner, mean.id)

    assert torch.equal(deployment.owner.datasets[DATASET].private.get(), raw)
    torch.testing.assert_close(owner_view.get(), raw.mean(0))
    torch.testing.assert_close((deployment.owner.datasets[DATASET].private * 2).get(), raw * 2)


def test_scientists_own_uploads_are_fetchable(setup: Any) -> None:
    raw, sci, priv = setup
    t = torch.randn(3, 3)
    p = t.send(sci)

    assert not p.private
    assert torch.equal(p.get(), t)
    assert torch.equal((p @ p).get(), t @ t)


def test_scientist_cannot_upload_private_data(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    before = deployment.node.object_count()

    with pytest.raises(PermissionDenied, match="owner"):
        sci.send(torch.ones(3), private=True)

    assert deployment.node.object_count() == before
    _alive(sci)


SHAPE_LEAKS: dict[str, Callable[[Any, Any], Any]] = {
    "bool_mask": lambda x, w: x[x > 0],
    "bool_scalar_index": lambda x, w: x[x[0, 0] > 0],
    "masked_select": lambda x, w: torch.masked_select(x, x > 0),
    "public_masked_by_private": lambda x, w: torch.masked_select(torch.ones(4).send(w), x[0] > 0),
    "nonzero": lambda x, w: (x > 0).nonzero(),
    "argwhere": lambda x, w: torch.argwhere(x),
    "where_one_arg": lambda x, w: torch.where(x > 0),
    "unique": lambda x, w: torch.unique(x),
    "unique_consecutive": lambda x, w: x.round().unique_consecutive(),
    "bincount": lambda x, w: torch.bincount((x[:, 0] > 0).long()),
    "one_hot_inferred": lambda x, w: F.one_hot((x[:, 0] > 0).long()),
    "repeat_interleave": lambda x, w: (
        torch.ones(2).send(w).repeat_interleave((x[0, :2] > 0).long())
    ),
    "repeat_by_private_count": lambda x, w: torch.ones(1).send(w).repeat((x > 0).sum()),
    "expand_by_private_count": lambda x, w: torch.ones(1).send(w).expand((x > 0).sum()),
    "narrow_by_private_count": lambda x, w: torch.ones(64).send(w).narrow(0, 0, (x > 0).sum()),
    "pad_by_private_count": lambda x, w: F.pad(torch.ones(1).send(w), (0, (x > 0).sum())),
    "topk_by_private_k": lambda x, w: torch.ones(64).send(w).topk((x > 0).sum()),
    "tensor_split_private": lambda x, w: torch.ones(64).send(w).tensor_split((x > 0).sum()),
}


def test_result_shapes_cannot_depend_on_private_values(setup: Any, deployment: Any) -> None:
    """A pointer's shape is public, so x[x > t].shape (a count) or ones(1).repeat(k) would
    reveal private values; a search over t recovers any value exactly."""
    raw, sci, priv = setup
    for name, leak in SHAPE_LEAKS.items():
        try:
            result = leak(priv, sci)
        except PermissionDenied as err:
            assert "shape" in str(err), name
        else:
            pytest.fail(f"{name}: allowed, result shape {tuple(result.shape)}")
    _alive(sci)

    owner_priv = deployment.owner.datasets[DATASET].private  # the owner may do anything
    assert owner_priv[owner_priv > 0].shape == raw[raw > 0].shape


def test_fixed_shape_alternatives_still_work(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    mask = priv > 0
    count = mask.sum()

    masked_mean = (priv * mask).sum() / count
    clipped = torch.where(mask, priv, 0.0)
    labels = (priv[:, 0] > 0).long()
    one_hot = F.one_hot(labels, 2)
    picked = priv[labels]

    assert (count.shape, masked_mean.shape, clipped.shape) == ((), (), (16, 4))
    assert one_hot.shape == (16, 2) and picked.shape == (16, 4)
    req = masked_mean.request("mean of the positive values")
    deployment.owner.requests.approve(req.id)
    torch.testing.assert_close(masked_mean.get(), raw[raw > 0].mean())


def test_errors_on_private_data_do_not_quote_it(setup: Any, deployment: Any) -> None:
    """An op that fails on private values (an index out of range) does not tell the
    scientist that it failed, let alone quote the value: its result holds the error."""
    raw, sci, priv = setup
    own = torch.zeros(2).send(sci)
    secret = int(raw[0, 0].abs() * 1e6) + 10
    index = (priv[0, 0].abs() * 1e6).long() + 10  # out of bounds: torch names the index

    for attempt in (lambda: own[index], lambda: torch.gather(own, 0, index.view(1))):
        result = attempt()  # answered as on success, from shapes and dtypes
        assert result.private
        with pytest.raises(PermissionDenied) as err:
            result.get()
        assert str(secret) not in str(err.value)
        held = deployment.owner.pointer(result.id)
        with pytest.raises(VeilError, match=str(secret)):  # the owner sees what failed
            held.get()
    with pytest.raises(VeilError, match=str(secret)):  # the owner's own ops fail at once
        owner_index = _forge(deployment.owner, index.id, ())
        torch.zeros(2).send(deployment.owner)[owner_index]
    _alive(sci)


# ------------------------------------------------------------------ requests


def test_approval_releases_exactly_the_approved_object(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    mean = priv.mean(0)
    total = priv.sum()

    req = mean.request("column means for the paper")
    assert req.status == "pending" and req.object_id == mean.id
    _denied(mean)  # not before the owner decides
    pending = deployment.owner.requests.list("pending")
    assert [r.id for r in pending] == [req.id] and pending[0].reason == req.reason

    decided = deployment.owner.requests.approve(req.id, note="ok")

    assert decided.status == "approved"
    torch.testing.assert_close(mean.get(), raw.mean(0))
    _denied(total)
    _denied(priv)
    _denied(mean + 1)  # a new object computed from the approved one is not approved
    _denied(mean.view(2, 2))
    other = deployment.scientist()
    with pytest.raises(ObjectNotFound):  # approval is for the requester only
        _forge(other, mean.id).get()
    _denied(other.datasets[DATASET].private.mean(0))
    _alive(sci)


def test_denied_request_stays_denied(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    mean = priv.mean()
    req = mean.request("I want it")

    denied = deployment.owner.requests.deny(req.id, note="too revealing")

    assert denied.status == "denied" and denied.note == "too revealing"
    _denied(mean)
    with pytest.raises(InvalidRequest, match="denied"):
        deployment.owner.requests.approve(req.id)
    _denied(mean)
    assert [r.status for r in sci.requests.list()] == ["denied"]
    again = mean.request("please reconsider")  # a new request is a new decision
    assert again.status == "pending"
    _denied(mean)
    _alive(sci)


def test_request_needs_a_reason(setup: Any) -> None:
    raw, sci, priv = setup

    with pytest.raises(InvalidRequest, match="why"):
        priv.mean().request("   ")
    _alive(sci)


@pytest.mark.parametrize(
    "write",
    [lambda m, p: m.add_(p[0]), lambda m, p: m.view(2, 2).mul_(p[:2, :2]),
     lambda m, p: m.__setitem__(0, p[1, 1])],
    ids=["direct", "through_view", "setitem"],
)  # fmt: skip
def test_approval_lapses_when_the_object_is_mutated_with_private_data(
    setup: Any, deployment: Any, write: Any
) -> None:
    raw, sci, priv = setup
    mean = priv.mean(0)
    deployment.owner.requests.approve(mean.request("means").id)
    torch.testing.assert_close(mean.get(), raw.mean(0))

    write(mean, priv)

    _denied(mean)
    _alive(sci)


def test_scientist_cannot_decide_requests_or_administer(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    req = priv.mean().request("means")
    users_before = len(deployment.owner.users())

    attempts: dict[str, Callable[[], Any]] = {
        "approve": lambda: sci.requests.approve(req.id),
        "deny": lambda: sci.requests.deny(req.id),
        "create_user": lambda: sci.create_user("evil@test.local", "password-123"),
        "create_admin": lambda: sci.create_user("evil2@test.local", "password-123", role="admin"),
        "list_users": lambda: sci.users(),
        "audit": lambda: sci.audit(),
        "create_dataset": lambda: sci.datasets.create(
            "fake", private=torch.ones(2), mock=torch.zeros(2)
        ),
    }
    for name, attempt in attempts.items():
        _refused(PermissionDenied, name, attempt)
        _alive(sci)

    assert [r.status for r in deployment.owner.requests.list()] == ["pending"]
    assert len(deployment.owner.users()) == users_before
    assert [d.name for d in sci.datasets.list()] == [DATASET]
    assert all(e.user != "evil@test.local" for e in deployment.owner.audit(1000))


# ------------------------------------------------------------------ other users' objects


def test_another_scientist_cannot_touch_my_objects(setup: Any, deployment: Any) -> None:
    raw, alice, priv = setup
    mine = torch.arange(4.0).send(alice)
    my_private = priv.mean(0)
    bob = deployment.scientist()
    stolen = _forge(bob, mine.id)
    stolen_private = _forge(bob, my_private.id)

    attempts: dict[str, Callable[[], Any]] = {
        "get": stolen.get,
        "use": lambda: stolen + 1,
        "use_as_arg": lambda: torch.ones(4).send(bob) * stolen,
        "mutate": lambda: stolen.add_(1),
        "setitem": lambda: stolen.__setitem__(0, 9.0),
        "request": lambda: stolen.request("mine now"),
        "request_private": lambda: stolen_private.request("mine now"),
        "get_raw": lambda: bob.call(GetObject(mine.id)),
        "delete": lambda: bob.call(DeleteObjects([mine.id])),
    }
    for name, attempt in attempts.items():
        _refused(ObjectNotFound, name, attempt)
        _alive(bob)

    dropped = _forge(bob, mine.id, owned=True)  # a dropped pointer's release is ignored too
    del dropped
    bob.flush()
    bob.clear()

    assert mine.id not in {o.id for o in bob.objects()}
    assert my_private.id not in {o.id for o in bob.objects()}
    assert bob.requests.list() == []
    assert torch.equal(mine.get(), torch.arange(4.0))  # untouched, still there for its owner
    assert {mine.id, my_private.id} <= {o.id for o in alice.objects()}


def test_deleting_dataset_data_is_refused(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup

    with pytest.raises((ObjectNotFound, PermissionDenied)):
        sci.call(DeleteObjects([priv.id]))
    released = _forge(sci, priv.id, owned=True)
    del released
    sci.flush()
    sci.clear()

    _asset_intact(deployment, raw)
    torch.testing.assert_close(sci.datasets[DATASET].private.mean(0).shape, torch.Size([4]))


# ------------------------------------------------------------------ writing into private data


MUTATIONS: dict[str, Callable[[Any, Any], Any]] = {
    "add_": lambda x, w: x.add_(1),
    "iadd": lambda x, w: x.__iadd__(1),
    "setitem": lambda x, w: x.__setitem__(0, 5.0),
    "setitem_mask": lambda x, w: x.__setitem__(x > 0, 0.0),
    "zero_": lambda x, w: x.zero_(),
    "requires_grad_": lambda x, w: x.requires_grad_(),
    "view_add_": lambda x, w: x[0].add_(1),
    "view_setitem": lambda x, w: x.view(-1).__setitem__(slice(0, 4), 0.0),
    "transpose_zero_": lambda x, w: x.T.zero_(),
    "data_fill_": lambda x, w: x.data.fill_(0),
    "detach_mul_": lambda x, w: x.detach().mul_(0),
    "relu_inplace": lambda x, w: F.relu(x, inplace=True),
    "view_dropout_inplace": lambda x, w: F.dropout(x[1], 0.9, training=True, inplace=True),
    "out_kwarg": lambda x, w: torch.add(torch.ones(16, 4).send(w), 1, out=x),
    "batch_norm_stats": lambda x, w: F.batch_norm(
        torch.randn(8, 4).send(w), x[0], x[1], training=True
    ),
    "embedding_max_norm": lambda x, w: F.embedding(torch.tensor([0, 1]).send(w), x, max_norm=0.1),
    "module_inplace_relu": lambda x, w: w.send(nn.Sequential(nn.ReLU(inplace=True)))(x),
    "module_view_then_inplace": lambda x, w: nn.Sequential(
        nn.Identity(), nn.Sequential(nn.Flatten(0)), nn.Dropout(0.5, inplace=True)
    ).send(w)(x),
    "module_inplace_on_view": lambda x, w: w.send(nn.ELU(inplace=True))(x[2]),
    "optimizer_over_data": lambda x, w: veil.RemoteOptimizer(torch.optim.SGD, [x], lr=1.0),
    "optimizer_over_view": lambda x, w: veil.RemoteOptimizer(torch.optim.SGD, [x[0]], lr=1.0),
}


def test_dataset_data_is_read_only(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    for name, mutate in MUTATIONS.items():
        _refused((PermissionDenied, InvalidRequest), name, lambda m=mutate: m(priv, sci))

        _asset_intact(deployment, raw)
    _alive(sci)


def test_models_with_inplace_layers_after_the_first_still_run_on_private_data(setup: Any) -> None:
    raw, sci, priv = setup
    local = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 1))
    model = sci.send(copy.deepcopy(local))

    out = model(priv)

    assert out.shape == torch.Size([16, 1]) and out.private
    _denied(out)


def test_owner_may_still_work_on_a_copy(setup: Any) -> None:
    raw, sci, priv = setup

    c = priv.clone()
    c.add_(1)
    c[0] = 0.0

    assert c.private
    _denied(c)


# ------------------------------------------------------------------ taint through storage


VIEWS: dict[str, Callable[[Any], Any]] = {
    "slice": lambda a: a[:],
    "view": lambda a: a.view(2, 2),
    "T": lambda a: a.view(2, 2).T,
    "detach": lambda a: a.detach(),
    "data": lambda a: a.data,
    "narrow": lambda a: a[1:3],
    "unsqueeze": lambda a: a.unsqueeze(0),
    "expand": lambda a: a.expand(3, 4),
}


def test_views_taken_before_a_private_write_are_tainted(setup: Any) -> None:
    raw, sci, priv = setup
    for name, make_view in VIEWS.items():
        a = torch.zeros(4).send(sci)
        v = make_view(a)
        independent = a.clone()
        assert torch.equal(v.get(), torch.zeros(v.shape)), name  # readable before

        a.add_(priv[0])

        assert a.private, name
        _denied(v, name)
        _denied(a, name)
        assert torch.equal(independent.get(), torch.zeros(4)), name  # a copy shares no write
    _alive(sci)


WRITES: dict[str, Callable[[Any, Any], Any]] = {
    "setitem": lambda a, p: a.__setitem__(0, p[0, 0]),
    "setitem_index": lambda a, p: a.__setitem__(p[0].argmax(), 1.0),
    "iadd": lambda a, p: a.__iadd__(p.mean()),
    "view_write": lambda a, p: a[1:].add_(p[0, 1:]),
    "masked_fill_mask": lambda a, p: a.masked_fill_(p[0] > 0, 1.0),
    "clamp_bound": lambda a, p: a.clamp_(max=p[0]),
    "index_add_": lambda a, p: a.index_add_(0, torch.tensor([0]), p[0, :1]),
}


def test_every_kind_of_private_write_taints(setup: Any) -> None:
    raw, sci, priv = setup
    for name, write in WRITES.items():
        a = torch.zeros(4).send(sci)
        v = a.view(2, 2)

        write(a, priv)

        _denied(a, name)
        _denied(v, name)


def test_gradients_of_a_public_leaf_from_a_private_loss_are_private(setup: Any) -> None:
    raw, sci, priv = setup
    w = torch.ones(4, requires_grad=True).send(sci)
    g_before = w.grad

    (priv @ w).sum().backward()

    assert g_before is None
    _denied(w.grad)
    _denied(w)


def test_model_trained_on_private_data_is_private(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    local = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    model = sci.send(copy.deepcopy(local))
    params_before = model.parameters()
    opt = veil.RemoteOptimizer(torch.optim.SGD, model.parameters(), lr=0.1)
    assert model.get() is not None  # fetchable before it saw private data

    loss = model(priv).pow(2).mean()
    loss.backward()
    opt.step()

    with pytest.raises(PermissionDenied):
        model.get()
    for p in [*model.parameters(), *params_before]:
        _denied(p)
        _denied(p.grad)
    _denied(loss)
    owner_copy = _forge_module(deployment.owner, model)
    assert not torch.equal(owner_copy[0].weight, local[0].weight)  # the owner sees the update
    _alive(sci)


def _forge_module(worker: Any, model: Any) -> nn.Module:
    reply = worker.call(GetObject(model.id))
    assert isinstance(reply, Value) and isinstance(reply.value, ModuleSpec)
    from veil.serde import spec_to_module

    return spec_to_module(reply.value)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x: Any) -> Any:
        return self.bn(self.fc(x)).sum(1)


def test_custom_model_trained_on_private_data_is_private(setup: Any) -> None:
    raw, sci, priv = setup
    model = sci.send(Net())
    assert "params of Net" in repr(model)
    buffers = [model._shell.bn.running_mean, model._shell.bn.running_var]
    opt = veil.RemoteOptimizer(torch.optim.Adam, model.parameters(), lr=0.1)

    model(priv).mean().backward()
    opt.step()

    with pytest.raises(PermissionDenied):
        model.get()
    for p in model.parameters():
        _denied(p)
    for b in buffers:  # batch-norm statistics of private data, written by F.batch_norm
        _denied(b)


def test_batchnorm_statistics_of_private_data_are_private(setup: Any) -> None:
    raw, sci, priv = setup
    model = sci.send(nn.Sequential(nn.BatchNorm1d(4)))
    model(torch.randn(8, 4).send(sci))
    assert model.get() is not None

    with torch.no_grad():
        model(priv)

    with pytest.raises(PermissionDenied):
        model.get()


def test_training_on_own_data_stays_public(setup: Any) -> None:
    raw, sci, priv = setup
    model = sci.send(nn.Sequential(nn.Linear(4, 1)))
    opt = veil.RemoteOptimizer(torch.optim.SGD, model.parameters(), lr=0.1)
    _ = priv.mean()  # unrelated private computation must not taint the model

    model(torch.randn(8, 4).send(sci)).pow(2).mean().backward()
    opt.step()

    assert isinstance(model.get(), nn.Sequential)
    assert all(p.grad.get() is not None for p in model.parameters())


# ------------------------------------------------------------------ raw messages (rule 1)


def _session(deployment: Any, role: str = "data_scientist") -> Session:
    n = len(deployment.node._users) + 1
    info = deployment.node.create_user(f"raw{n}@test.local", "raw-password-1", role=role)
    return Session(info.id, info.email, info.role)


def _raw(deployment: Any, session: Session, frame: bytes | bytearray) -> Any:
    out = deployment.node.handle_frame(session, frame)
    assert isinstance(out, bytes | bytearray)
    return codec.decode_reply(out)


class _Payload:
    """Unpickling this runs a shell command (what a pickle-based wire format would allow)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


FORBIDDEN_OPS = [
    "builtins.eval", "builtins.exec", "os.system", "torch.load", "torch.save", "torch.from_file",
    "subprocess.run", "__import__", "Tensor.__reduce_ex__", "Tensor.__class__",
    "Tensor.register_hook", "Tensor.numpy", "Tensor.storage", "Tensor.copy_", "Tensor.set_",
    "Tensor.resize_", "Module.load_state_dict", "Module.__class__", "optim.__init__", "",
    "torch.add\x00", "torch.add ", "TORCH.ADD",
]  # fmt: skip


def test_ops_off_the_allowlist_are_refused_by_the_node(setup: Any, tmp_path: Path) -> None:
    raw, sci, priv = setup
    marker = tmp_path / "pwned"
    x = torch.ones(2).send(sci)

    for op in FORBIDDEN_OPS:  # call() skips the client's own check: the node refuses
        payload = RunOp(op, [f"import os; os.system('touch {marker}')", Ref(x.id)])
        _refused(OpNotAllowed, repr(op), lambda msg=payload: sci.call(msg))

    assert not marker.exists()
    _alive(sci)


def test_reading_non_allowlisted_attributes_is_refused(setup: Any) -> None:
    raw, sci, priv = setup
    for name in ("__class__", "__dict__", "_cdata", "storage", "untyped_storage", "__reduce__"):
        with pytest.raises(VeilError):
            sci.call(RunOp("Tensor.__getattr__", [Ref(priv.id), name]))
    _alive(sci)


def test_a_pickle_frame_is_an_error_and_never_runs(deployment: Any, tmp_path: Path) -> None:
    session = _session(deployment)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Payload(marker))
    header = struct.pack(">2sH", b"VL", WIRE_VERSION)

    for frame in (evil, header + evil, b"VL" + evil, header + pickle.dumps({"msg": "op"})):
        reply = _raw(deployment, session, frame)
        assert isinstance(reply, ErrorReply), frame[:8]
        assert isinstance(error_from_code(reply.code, reply.message), SerdeError)

    blob = TensorData("uint8", [len(evil)], memoryview(evil))  # a pickle as tensor bytes is data
    info = _raw(deployment, session, codec.encode(Call(SendObject(blob))))
    assert isinstance(info, ObjectInfo)
    got = _raw(deployment, session, codec.encode(Call(GetObject(info.id))))
    assert bytes(got.value.data) == evil
    assert not marker.exists()
    reply = _raw(deployment, session, codec.encode(Call(RunOp("torch.add", [Ref(info.id), 1]))))
    assert isinstance(reply, ObjectInfo) and reply.dtype == "uint8"


def test_refs_to_missing_objects_are_object_not_found(setup: Any) -> None:
    raw, sci, priv = setup
    for msg in (
        RunOp("torch.add", [Ref(123456789), 1]),
        RunOp("torch.add", [1, Ref(-1)]),
        RunOp("torch.stack", [ListArg([Ref(priv.id), Ref(2**62 + 5)])]),
        GetObject(987654321),
        GetObject(2**63 - 1),
    ):
        with pytest.raises(ObjectNotFound):
            sci.call(msg)
    _alive(sci)


MALFORMED: dict[str, TensorData] = {
    "float128": TensorData("float128", [2], memoryview(b"\x00" * 32)),
    "object": TensorData("object", [1], memoryview(b"\x00" * 8)),
    "torch_prefix": TensorData("torch.float32", [1], memoryview(b"\x00" * 4)),
    "empty_name": TensorData("", [], memoryview(b"")),
    "short": TensorData("float32", [1000], memoryview(b"\x00" * 8)),
    "odd_bytes": TensorData("float32", [2, 2], memoryview(b"\x00" * 15)),
    "negative": TensorData("float32", [-1], memoryview(b"\x00" * 4)),
    "overflow": TensorData("float32", [2**62, 2**62], memoryview(b"\x00" * 4)),
    "too_many_dims": TensorData("float32", [1] * 65, memoryview(b"\x00" * 4)),
    "int_grad": TensorData("int64", [1], memoryview(b"\x00" * 8), requires_grad=True),
}


def test_malformed_tensors_are_refused(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    before = deployment.node.object_count()

    for name, data in MALFORMED.items():
        _refused(SerdeError, f"send {name}", lambda d=data: sci.call(SendObject(d)))
        as_arg = RunOp("torch.add", [Ref(priv.id), data])
        _refused(SerdeError, f"arg {name}", lambda m=as_arg: sci.call(m))

    assert deployment.node.object_count() == before
    _alive(sci)


def test_bad_dtype_and_nesting_arguments_are_refused(setup: Any) -> None:
    raw, sci, priv = setup
    x = torch.ones(2).send(sci)
    deep: Any = Ref(x.id)
    for _ in range(40):
        deep = ListArg([deep])

    for msg in (
        RunOp("Tensor.to", [Ref(x.id), DTypeArg("float1024")]),
        RunOp("Tensor.to", [Ref(x.id), DTypeArg("object")]),
        RunOp("torch.stack", [deep]),
    ):
        with pytest.raises(SerdeError):
            sci.call(msg)
    _alive(sci)


def test_module_descriptions_cannot_name_arbitrary_classes(setup: Any) -> None:
    raw, sci, priv = setup
    for cls in (
        "os.system",
        "builtins.eval",
        "torch.nn.Linear",
        "Module",
        "_Payload",
        "Linear\x00",
    ):
        with pytest.raises(OpNotAllowed):
            sci.call(SendObject(ModuleSpec(cls=cls)))
    with pytest.raises(VeilError):
        sci.call(SendObject(ModuleSpec(cls="Sequential", children=[("../x", ModuleSpec("ReLU"))])))
    with pytest.raises(VeilError):  # state that does not fit the module
        sci.call(SendObject(ModuleSpec(cls="Linear", config={"in_features": 2, "out_features": 2})))
    _alive(sci)


def test_module_config_cannot_make_the_node_allocate(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, sci, priv = setup
    initialized: list[str] = []
    real_reset = nn.Linear.reset_parameters

    def spy(self: nn.Linear) -> None:
        initialized.append(self.weight.device.type)
        real_reset(self)

    monkeypatch.setattr(nn.Linear, "reset_parameters", spy)
    declared = {"in_features": 20_000, "out_features": 20_000}  # 1.6 GB if built for real

    with pytest.raises(InvalidRequest, match="state"):
        sci.call(SendObject(ModuleSpec(cls="Linear", config=declared)))
    spec = module_to_spec(nn.Linear(3, 2))
    info = sci.call(SendObject(ModuleSpec("Linear", {"in_features": 3, "out_features": 2},
                                          state=spec.state)))  # fmt: skip

    assert set(initialized) <= {"meta", "cpu"} and "meta" in initialized
    assert initialized.count("cpu") == 1  # only the local nn.Linear(3, 2) above
    assert isinstance(info, ObjectInfo) and info.kind == "module"
    _alive(sci)


HUGE: dict[str, Callable[[Any], Any]] = {
    "repeat": lambda x: x.repeat(100000, 100000),
    "tile": lambda x: torch.tile(x, (100000, 100000)),
    "expand": lambda x: x.expand(10**6, 10**6, 1).contiguous(),
    "pad": lambda x: F.pad(x, (0, 10**10)),
    "repeat_interleave": lambda x: x.repeat_interleave(10**11),
    "histc": lambda x: torch.histc(x, bins=10**11),
    "bincount": lambda x: torch.bincount(x.long(), minlength=10**11),
    "one_hot": lambda x: F.one_hot(x.long(), 10**11),
    "kron": lambda x: torch.kron(x.repeat(50000), x.repeat(50000)),
    "interpolate": lambda x: F.interpolate(x.view(1, 1, 1), scale_factor=1e10),
    "zeros_like_expand": lambda x: torch.zeros_like(x.expand(10**6, 10**6)),
}


def test_huge_allocations_are_refused_cleanly(setup: Any, deployment: Any) -> None:
    raw, sci, priv = setup
    x = torch.zeros(1).send(sci)

    for name, attack in HUGE.items():
        _refused(VeilError, name, lambda a=attack: a(x))
        _alive(sci)

    _asset_intact(deployment, raw)


def test_broadcast_and_matmul_outputs_respect_the_size_limit() -> None:
    node = veil.Node("small", owner_email="o@test.local", owner_password="owner-password",
                     max_result_bytes=4 * 1024**2)  # fmt: skip
    w = veil.VirtualWorker(node=node)
    x = torch.ones(5000).send(w)  # 20 kB in, 100 MB out

    for attack in (
        lambda: x.view(-1, 1) * x.view(1, -1),
        lambda: x.view(-1, 1) @ x.view(1, -1),
        lambda: torch.outer(x, x),
        lambda: torch.where(x.view(-1, 1) > 0, x.view(1, -1), 0.0),
        lambda: torch.cat([x.view(-1, 1).expand(5000, 5000)] * 2),
    ):
        with pytest.raises(InvalidRequest, match="limit"):
            attack()

    assert torch.equal((x.view(-1, 1)[:100] * x.view(1, -1)[:, :100]).get(), torch.ones(100, 100))
    assert node.object_count() < 20
