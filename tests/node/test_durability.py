"""A node's memory never runs ahead of its store, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from torch import nn

import veil
from veil.errors import InvalidRequest, StorageError
from veil.node import Node
from veil.node.store import Batch
from veil.node.store.sql import SQLStore, metadata
from veil.serde.messages import (
    AssetSpec,
    Call,
    CreateDataset,
    CreateUser,
    DeleteObjects,
    ErrorReply,
    RequestAccess,
)
from veil.serde.tensors import tensor_to_data

EMAIL, PASSWORD = "owner@dur.test", "owner-password-3"


def test_a_failed_store_write_rolls_the_node_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(
        "n",
        store=SQLStore(f"sqlite:///{tmp_path / 'n.db'}"),
        owner_email=EMAIL,
        owner_password=PASSWORD,
    )
    owner = veil.VirtualWorker(node=node)
    kept = owner.send(torch.arange(3.0))
    before = node.object_count()

    def broken(batch: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(node.store, "write", broken)
    with pytest.raises(StorageError, match="rolled back"):
        owner.send(torch.ones(2))
    with pytest.raises(StorageError):
        owner.create_user("new@dur.test", "new-password-1")
    assert node.object_count() == before
    assert "new@dur.test" not in {u.email for u in node._users.values()}
    monkeypatch.undo()
    assert torch.equal(owner.pointer(kept.id).get(), torch.arange(3.0))  # still served
    owner.create_user("new@dur.test", "new-password-1")  # and the refused change can be retried
    node.close()


def test_node_state_survives_a_restart_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(postgres_url)
    metadata.drop_all(engine)
    engine.dispose()
    blobs = str(tmp_path / "blobs")
    node = Node(
        "pg",
        store=SQLStore(postgres_url, blob_dir=blobs),
        owner_email=EMAIL,
        owner_password=PASSWORD,
    )
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("d", private=torch.arange(10.0), mock=torch.zeros(10), bounds=(0, 10))
    owner.create_user("sci@dur.test", "sci-password-1")
    sci = owner.login("sci@dur.test", "sci-password-1")
    total = sci.datasets["d"].private.sum()
    big = sci.send(torch.randn(400_000))  # over the inline limit: a blob file
    req = total.request("a total")
    node.close()

    node = Node("pg", store=SQLStore(postgres_url, blob_dir=blobs))
    owner = veil.VirtualWorker(node=node)
    owner.requests.approve(req.id)
    sci = owner.login("sci@dur.test", "sci-password-1")
    assert sci.pointer(total.id).get().item() == 45.0
    assert sci.pointer(big.id).shape == (400_000,)
    assert [d.name for d in owner.datasets.list()] == ["d"]
    node.close()


# ---------------------------------------------------------------------- helpers
@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A fresh database URL and blob directory: a SQLite file, and PostgreSQL (a throwaway
    cluster or ``VEIL_TEST_POSTGRES_URL``; skipped when neither is there)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'n.db'}", str(tmp_path / "n.db.blobs")
        return
    url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    yield url, str(tmp_path / "blobs")


def _open(db: tuple[str, str], **kw: Any) -> Node:
    url, blobs = db
    return Node("n", store=SQLStore(url, blob_dir=blobs), **kw)


def _fail_next_write(monkeypatch: pytest.MonkeyPatch, node: Node) -> None:
    """Make the node's next store write fail (once), as a full disk or a lost database would."""
    store = node.store
    real = store.write

    def once(batch: Batch) -> None:
        monkeypatch.setattr(store, "write", real)
        raise OSError("disk full (injected)")

    monkeypatch.setattr(store, "write", once)


def _slots(value: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [("", value)]
    if isinstance(value, nn.Module):
        return [*value.named_parameters(), *value.named_buffers()]
    return []


Snapshot = Callable[[Node], dict[str, Any]]


# ---------------------------------------------------------------------- text at the door
BAD = "\x00"


def test_text_a_database_cannot_keep_is_refused_at_the_door_naming_the_field(
    db: tuple[str, str], snapshot: Snapshot
) -> None:
    node = _open(db, owner_email=EMAIL, owner_password=PASSWORD)
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("d", private=torch.arange(6.0), mock=torch.zeros(6), bounds=(0, 6))
    owner.create_user("sci@dur.test", "sci-password-1")
    sci = owner.login("sci@dur.test", "sci-password-1")
    x = sci.send(torch.ones(3))
    total = sci.datasets["d"].private.sum()
    req = total.request("a total")
    data = tensor_to_data(torch.ones(2))
    before = snapshot(node)
    cases = {
        "SendObject.description": lambda: sci.send(torch.ones(2), description=f"a{BAD}"),
        "RequestAccess.reason": lambda: x.request(f"why{BAD}"),
        "DecideRequest.note": lambda: owner.requests.approve(req.id, note=f"ok{BAD}"),
        "CreateDataset.name": lambda: owner.datasets.create(
            f"e{BAD}", private=torch.ones(2), mock=torch.zeros(2)
        ),
        "CreateDataset.description": lambda: owner.datasets.create(
            "e", private=torch.ones(2), mock=torch.zeros(2), description=BAD
        ),
        "CreateDataset.assets[0].name": lambda: owner.datasets.create(
            "e", private={f"a{BAD}": torch.ones(2)}, mock={f"a{BAD}": torch.zeros(2)}
        ),
        "CreateDataset.assets[0].description": lambda: owner.call(
            CreateDataset("e", "", [AssetSpec("a", data, data, description=BAD)])
        ),
        "CreateDataset.assets[0].columns[1]": lambda: owner.datasets.create(
            "e", private=torch.ones(3, 2), mock=torch.zeros(3, 2), columns=["a", f"b{BAD}"]
        ),
        "CreateUser.email": lambda: owner.create_user(f"new{BAD}@dur.test", "new-password-1"),
        "CreateUser.name": lambda: owner.call(
            CreateUser("new@dur.test", "new-password-1", name=f"N{BAD}")
        ),
        "SetBudget.dataset": lambda: owner.budgets.set("sci@dur.test", f"d{BAD}", epsilon=1),
        "SetBudget.user": lambda: owner.budgets.set(f"sci{BAD}@dur.test", "d", epsilon=1),
    }
    for field, call in cases.items():
        with pytest.raises(InvalidRequest, match=re.escape(field) + ".*NUL") as info:
            call()
        assert "remove it" in str(info.value)
    assert snapshot(node) == before  # nothing changed, nothing was rolled back or reloaded
    with pytest.raises(InvalidRequest, match="name"):  # the Python API checks the same fields
        node.create_user("py@dur.test", "py-password-1", name=f"N{BAD}")
    assert snapshot(node) == before
    node.close()


def test_a_lone_surrogate_is_refused_where_a_message_skips_the_decoder(
    tmp_path: Path, snapshot: Snapshot
) -> None:
    """REST bodies are built into messages without msgpack's UTF-8 check (JSON allows
    ``"\\ud800"``): the node checks the text itself."""
    node = _open((f"sqlite:///{tmp_path / 'n.db'}", str(tmp_path / "b")),
                 owner_email=EMAIL, owner_password=PASSWORD)  # fmt: skip
    owner = node.login(EMAIL, PASSWORD)
    x = veil.VirtualWorker(node=node).send(torch.ones(2))
    before = snapshot(node)
    reply = node.handle(owner, Call(RequestAccess(x.id, "why \ud800")))
    assert isinstance(reply, ErrorReply) and reply.code == "invalid_request"
    assert "RequestAccess.reason" in reply.message and "surrogate" in reply.message
    with pytest.raises(InvalidRequest, match="password"):
        node.create_user("s@dur.test", "password-\udc00-1")
    with pytest.raises(veil.errors.AuthenticationError):  # a wrong password, not a crash
        node.login(EMAIL, "owner-\udc00-3")
    assert snapshot(node) == before
    node.close()


def test_capability_rows_are_checked_before_anything_changes(tmp_path: Path) -> None:
    node = _open((f"sqlite:///{tmp_path / 'n.db'}", str(tmp_path / "b")),
                 owner_email=EMAIL, owner_password=PASSWORD)  # fmt: skip
    node.put_row("cap:1", "cap", {"ok": [1, "two", None, 3.5]})
    for key, kind, value, field in [
        (f"cap:{BAD}", "cap", {}, "key"),
        ("cap:2", f"c{BAD}", {}, "kind"),
        ("cap:2", "cap", {"a": [1, f"x{BAD}"]}, "value['a'][1]"),
        ("cap:2", "cap", {f"k{BAD}": 1}, "value"),
        ("cap:2", "cap", {"a": float("nan")}, "value['a']"),
        ("cap:2", "cap", {"a": object()}, "value['a']"),
    ]:
        with pytest.raises(InvalidRequest, match=re.escape(field)):
            node.put_row(key, kind, value)
    assert node.rows("cap") == {"cap:1": {"ok": [1, "two", None, 3.5]}}
    assert not node._batch
    node.close()


# ---------------------------------------------------------------------- one failed write
def test_a_failed_write_undoes_that_message_only(
    db: tuple[str, str], monkeypatch: pytest.MonkeyPatch, snapshot: Snapshot
) -> None:
    node = _open(db, owner_email=EMAIL, owner_password=PASSWORD)
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("d", private=torch.arange(10.0), mock=torch.zeros(10), bounds=(0, 10))
    for who in ("a", "b"):
        owner.create_user(f"{who}@dur.test", f"{who}-password-1")
    a = owner.login("a@dur.test", "a-password-1")
    b = owner.login("b@dur.test", "b-password-1")
    owner.budgets.set("b@dur.test", "d", epsilon=100.0)
    # user a trains a model with a momentum optimizer; user b derives a bounded total
    model = a.send(nn.Linear(3, 1))
    params = model.parameters()
    opt = veil.RemoteOptimizer(torch.optim.SGD, params, lr=0.1, momentum=0.9)
    xa = a.send(torch.ones(4, 3))
    model(xa).sum().backward()
    opt.step()
    mine = b.send(torch.arange(4.0))
    view = mine[1:3]
    total = b.datasets["d"].private.clamp(0, 10).sum()
    req = total.request("the total")
    a.flush()
    b.flush()
    token = node.issue_token(node.login("a@dur.test", "a-password-1"))
    probe = node.capability_state("dp")  # a capability's state object
    node.put_row("cap:1", "cap", {"v": 1})
    records = dict(node._objects)
    tensors = {oid: [t for _, t in _slots(r.value)] for oid, r in records.items()}
    bounds = dict(node.capability_state("dp").bounds)
    before = snapshot(node)

    def backward() -> None:
        model(xa).sum().backward()
        a.flush()

    nothing: Callable[[], object] = lambda: None  # noqa: E731
    failing: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("send", nothing, lambda: b.send(torch.ones(2))),
        ("in-place op", nothing, lambda: (mine.add_(1), b.flush())),
        ("write through a view", nothing, lambda: (view.mul_(0), b.flush())),
        ("optimizer step", backward, opt.step),
        ("delete", nothing, lambda: b.call(DeleteObjects([mine.id]))),
        ("create user", nothing, lambda: owner.create_user("c@dur.test", "c-password-1")),
        ("approve", nothing, lambda: owner.requests.approve(req.id)),
        ("budget", nothing, lambda: owner.budgets.set("a@dur.test", "d", epsilon=1.0)),
        ("publish", nothing, lambda: total.publish(epsilon=1.0)),
        ("dataset", nothing,
         lambda: owner.datasets.create("e", private=torch.ones(2), mock=torch.ones(2))),
    ]  # fmt: skip
    for what, prepare, action in failing:
        prepare()
        _fail_next_write(monkeypatch, node)
        with pytest.raises(StorageError, match="rolled back"):
            action()
        # the refused change is gone and nothing else moved: every record, tensor, token,
        # capability row, extension state and DP bound is the very object it was
        assert snapshot(node) == before, what
        assert all(node._objects[oid] is rec for oid, rec in records.items()), what
        assert all(
            all(t is u for (_, t), u in zip(_slots(node._objects[oid].value), ts, strict=True))
            for oid, ts in tensors.items()
        ), what
        assert node.capability_state("dp").bounds.keys() == bounds.keys(), what
        assert all(node.capability_state("dp").bounds[k] is b for k, b in bounds.items()), what
        assert node.session_for_token(token).email == "a@dur.test"
        assert node.capability_state("dp") is probe
    monkeypatch.undo()

    # the node still works, from where it was: training continues, the bound is still there
    model(xa).sum().backward()
    opt.step()
    assert total.publish(epsilon=1.0).shape == ()
    mine.add_(1)
    assert torch.equal(view.get(), torch.tensor([2.0, 3.0]))
    after = snapshot(node)
    node.close()
    assert snapshot(_open(db)) == after  # and memory equals the store


def test_a_store_that_cannot_even_be_read_leaves_nothing_unacknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If restoring from the store fails too, what the failed write named is dropped from
    memory (it comes back when the node restarts): memory never runs ahead of the store."""
    db = (f"sqlite:///{tmp_path / 'n.db'}", str(tmp_path / "b"))
    node = _open(db, owner_email=EMAIL, owner_password=PASSWORD)
    owner = veil.VirtualWorker(node=node)
    kept = owner.send(torch.ones(2))
    x = owner.send(torch.zeros(3))

    def unreadable(**keys: Any) -> Any:
        raise OSError("database gone (injected)")

    monkeypatch.setattr(node.store, "load_keys", unreadable)
    _fail_next_write(monkeypatch, node)
    with pytest.raises(StorageError, match="restart"):
        x.add_(1)
        owner.flush()
    assert node.lookup(x.id) is None and node.lookup(kept.id) is not None
    monkeypatch.undo()
    node.close()
    again = _open(db)
    assert torch.equal(veil.VirtualWorker(node=again).pointer(x.id).get(), torch.zeros(3))
    again.close()


def test_running_statistics_moved_by_a_public_forward_are_stored(
    tmp_path: Path, snapshot: Snapshot
) -> None:
    db = (f"sqlite:///{tmp_path / 'n.db'}", str(tmp_path / "b"))
    node = _open(db, owner_email=EMAIL, owner_password=PASSWORD)
    owner = veil.VirtualWorker(node=node)
    model = owner.send(nn.BatchNorm1d(3))
    model(owner.send(torch.randn(8, 3) * 5 + 2))  # training mode: running mean and var move
    owner.flush()
    after = snapshot(node)
    node.close()
    again = _open(db)
    assert snapshot(again) == after
    assert not torch.equal(again.lookup(model.id).value.running_mean, torch.zeros(3))  # type: ignore[union-attr]
    again.close()
