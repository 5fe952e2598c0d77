"""A node server killed with SIGKILL and started again has everything it acknowledged."""

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

EMAIL, PASSWORD = "owner@restart.test", "owner-password-5"
SCI, SCI_PW = "sci@restart.test", "sci-password-5"


def _start(db: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, VEIL_OWNER_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "veil", "node", "serve", "--name", "phoenix", "--port", "0",
           "--db", db, "--owner-email", EMAIL]  # fmt: skip
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
def test_kill_and_restart_keeps_datasets_objects_requests_and_audit(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'node.db'}"
    proc, url = _start(db)
    try:
        owner = veil.connect(url, email=EMAIL, password=PASSWORD)
        secret = torch.randn(50, 3)
        owner.datasets.create("vitals", private=secret, mock=torch.zeros(50, 3), bounds=(-10, 10))
        owner.create_user(SCI, SCI_PW)
        big = torch.randn(600_000)  # 2.4 MB: stored as a blob file
        sci = veil.connect(url, email=SCI, password=SCI_PW)
        mine = sci.send(big)
        doubled = mine * 2  # an op result, acknowledged when the reply arrived
        means = sci.datasets["vitals"].private.mean(0)
        req = means.request("per-column means")
        ids = (mine.id, doubled.id, means.id)
        owner_audit_before = len(owner.audit(1000))
    finally:
        proc.kill()  # SIGKILL: no shutdown hooks run
        proc.wait(timeout=10)

    proc, url = _start(db)
    try:
        owner = veil.connect(url, email=EMAIL, password=PASSWORD)
        assert [d.name for d in owner.datasets.list()] == ["vitals"]
        assert torch.equal(owner.datasets["vitals"].private.get(), secret)
        pending = owner.requests.list("pending")
        assert [r.id for r in pending] == [req.id] and pending[0].reason == "per-column means"
        assert len(owner.audit(1000)) >= owner_audit_before
        assert {"send", "op", "request", "create_dataset"} <= {e.action for e in owner.audit(1000)}

        sci = veil.connect(url, email=SCI, password=SCI_PW)
        assert {o.id for o in sci.objects()} >= set(ids)
        assert torch.equal(sci.pointer(ids[0]).get(), big)
        assert torch.equal(sci.pointer(ids[1]).get(), big * 2)
        with pytest.raises(veil.PermissionDenied):
            sci.pointer(ids[2]).get()  # still private after the restart
        owner.requests.approve(req.id)
        torch.testing.assert_close(sci.pointer(ids[2]).get(), secret.mean(0))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_training_resumes_after_kill_and_restart_as_if_uninterrupted(tmp_path: Path) -> None:
    """A model, its parameter records and its momentum optimizer come back from a SIGKILL
    sharing their tensors: training continues where the acknowledged steps left it."""
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    torch.manual_seed(5)
    local = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    init = {k: v.clone() for k, v in local.state_dict().items()}
    x, y = torch.randn(12, 4), torch.randint(0, 2, (12,))

    def step(model: Any, opt: Any, xs: Any, ys: Any) -> None:
        opt.zero_grad()
        F.cross_entropy(model(xs), ys).backward()
        opt.step()

    local_opt = torch.optim.SGD(local.parameters(), lr=0.2, momentum=0.9)
    for _ in range(4):
        step(local, local_opt, x, y)

    db = f"sqlite:///{tmp_path / 'node.db'}"
    proc, url = _start(db)
    try:
        owner = veil.connect(url, email=EMAIL, password=PASSWORD)
        owner.create_user(SCI, SCI_PW)
        sci = veil.connect(url, email=SCI, password=SCI_PW)
        start = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        start.load_state_dict(init)
        model = sci.send(start)
        params = model.parameters()
        opt = veil.RemoteOptimizer(torch.optim.SGD, params, lr=0.2, momentum=0.9)
        xs, ys = sci.send(x), sci.send(y)
        for _ in range(2):
            step(model, opt, xs, ys)
        sci.flush()
        ids = model.id, opt.id, xs.id, ys.id, params[0].id
    finally:
        proc.kill()  # SIGKILL: no shutdown hooks run
        proc.wait(timeout=10)

    proc, url = _start(db)
    try:
        sci = veil.connect(url, email=SCI, password=SCI_PW)
        model, opt, xs, ys, weight = (sci.pointer(i) for i in ids)
        for _ in range(2):
            step(model, opt, xs, ys)
        got = model.get()
        for name, want in local.state_dict().items():
            torch.testing.assert_close(got.state_dict()[name], want, atol=1e-6, rtol=0)
        torch.testing.assert_close(weight.get(), local[0].weight.detach(), atol=1e-6, rtol=0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
