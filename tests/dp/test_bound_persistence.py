"""Tracked bounds are durable like every acknowledged object (issue 10, hole 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import veil
from veil.dp.bounds import bound_to_json
from veil.dp.sensitivity import Aggregate, Rowwise
from veil.errors import StorageError, UnboundedSensitivity
from veil.node import Node
from veil.node.store.sql import SQLStore

OWNER, OWNER_PW = "owner@persist.test", "owner-pw-123"
SCI, SCI_PW = "ds@persist.test", "scientist-pw-1"


def _node(url: str) -> Node:
    return Node("clinic", store=SQLStore(url), owner_email=OWNER, owner_password=OWNER_PW)


def _setup(node: Node) -> Any:
    owner = veil.VirtualWorker(node=node)
    data = torch.stack([torch.linspace(20, 80, 60), (torch.arange(60) % 2).float()], 1)
    owner.datasets.create("p", private=data, mock=torch.zeros(60, 2), bounds=[(0, 100), (0, 1)])
    owner.create_user(SCI, SCI_PW)
    owner.budgets.set(SCI, "p", epsilon=10.0, delta=1e-6)
    return owner.login(SCI, SCI_PW)


def _same(a: Any, b: Any) -> bool:
    return bound_to_json(a) == bound_to_json(b)


def test_bounds_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    node = _node(url)
    sci = _setup(node)
    x = sci.datasets["p"].private
    count, rows = (x[:, 1] > 0.5).sum(), x[:, 0].clamp(30, 40)
    kept = {o.id: node.capability_state("dp").bounds[o.id] for o in (count, rows)}
    assert isinstance(kept[count.id], Aggregate) and isinstance(kept[rows.id], Rowwise)
    node.close()

    node2 = _node(url)
    for oid, b in kept.items():
        assert _same(node2.capability_state("dp").bounds[oid], b)
    sci2 = veil.VirtualWorker(node=node2).login(SCI, SCI_PW)
    assert sci2.pointer(count.id).publish(epsilon=0.5).shape == ()
    assert sci2.pointer(rows.id).mean().publish(epsilon=0.5).shape == ()  # derives further
    node2.close()


def test_a_store_failure_keeps_the_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(f"sqlite:///{tmp_path / 'n.db'}")
    sci = _setup(node)
    s = sci.datasets["p"].private[:, 1].sum()
    before = node.capability_state("dp").bounds[s.id]

    def broken(batch: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(node.store, "write", broken)
    with pytest.raises(StorageError, match="rolled back"):
        sci.send(torch.ones(2))  # the node reloads its durable state
    monkeypatch.undo()
    assert _same(node.capability_state("dp").bounds[s.id], before)
    assert s.publish(epsilon=0.5).shape == ()
    node.close()


def test_a_written_object_stays_unbounded_after_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    node = _node(url)
    sci = _setup(node)
    y = sci.datasets["p"].private[:, 0].clamp(0, 1)
    y.mul_(1e6)  # past its bound: the bound goes, and so does its durable row
    assert node.rows("bound")[f"bound:{y.id}"].get("deleted")
    node.close()
    node2 = _node(url)
    assert not isinstance(node2.capability_state("dp").bounds.get(y.id), Rowwise | Aggregate)
    sci2 = veil.VirtualWorker(node=node2).login(SCI, SCI_PW)
    with pytest.raises(UnboundedSensitivity):
        sci2.pointer(y.id).sum().publish(epsilon=0.5)
    node2.close()


def test_a_row_binds_to_its_object_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    node = _node(url)
    sci = _setup(node)
    s = sci.datasets["p"].private[:, 1].sum()
    mine = sci.send(torch.ones(3))  # public: a bound row for it is never believed
    row = dict(node.rows("bound")[f"bound:{s.id}"])
    node.put_row(f"bound:{mine.id}", "bound", {**row, "object_id": mine.id})
    node._objects[s.id].created += 1.0  # as if the id had been reused by another object
    node._persist(node._objects[s.id])
    node.close()
    node2 = _node(url)
    assert mine.id not in node2.capability_state("dp").bounds
    assert not isinstance(node2.capability_state("dp").bounds.get(s.id), Rowwise | Aggregate)
    node2.close()


def test_unbounded_results_write_no_row(tmp_path: Path) -> None:
    node = _node(f"sqlite:///{tmp_path / 'n.db'}")
    sci = _setup(node)
    c = sci.datasets["p"].private.cumsum(0)
    assert not isinstance(node.capability_state("dp").bounds.get(c.id), Rowwise | Aggregate)
    assert f"bound:{c.id}" not in node.rows("bound")
    node.close()


# ------------------------------------------------------------------ a killed server
def _start(db: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, VEIL_OWNER_PASSWORD=OWNER_PW, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "veil", "node", "serve", "--name", "phoenix", "--port", "0",
           "--db", db, "--owner-email", OWNER]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "serving on " in line:
            return proc, line.split("serving on ")[1].split()[0]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail("node server did not start:\n" + "".join(lines))


@pytest.mark.slow
def test_a_killed_node_keeps_the_bounds(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'node.db'}"
    proc, url = _start(db)
    try:
        owner = veil.connect(url, email=OWNER, password=OWNER_PW)
        owner.datasets.create("vitals", private=torch.rand(50, 3) * 10, mock=torch.zeros(50, 3),
                              bounds=(0, 10))  # fmt: skip
        owner.create_user(SCI, SCI_PW)
        owner.budgets.set(SCI, "vitals", epsilon=5.0)
        sci = veil.connect(url, email=SCI, password=SCI_PW)
        means = sci.datasets["vitals"].private.mean(0)  # acknowledged when the reply arrived
        mid = means.id
    finally:
        proc.kill()  # SIGKILL: no shutdown hooks run
        proc.wait(timeout=10)
    proc, url = _start(db)
    try:
        sci = veil.connect(url, email=SCI, password=SCI_PW)
        assert sci.pointer(mid).publish(epsilon=1.0).shape == (3,)
    finally:
        proc.kill()
        proc.wait(timeout=10)
