"""A node's memory never runs ahead of its store, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

import veil
from veil.errors import StorageError
from veil.node import Node
from veil.node.store.sql import SQLStore, metadata

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
