"""``veil models publish|list|show`` against a real node server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import veil
from veil.cli import app
from veil.device import sha256_of
from veil.node import Node
from veil.node.server import serve_in_thread

EMAIL, PASSWORD = "owner@models.cli", "owner-password-8"
SCI, SCI_PW = "ds@models.cli", "ds-password-8"
runner = CliRunner()


@pytest.fixture
def url() -> Iterator[str]:
    node = Node("cli-node", owner_email=EMAIL, owner_password=PASSWORD)
    node.create_user(SCI, SCI_PW)
    with serve_in_thread(node) as u:
        yield u


def _run(url: str, *args: str, email: str = EMAIL, password: str = PASSWORD) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--url", url],
                           env={"VEIL_EMAIL": email, "VEIL_PASSWORD": password})  # fmt: skip
    return result.exit_code, " ".join(result.output.split())  # rich wraps at 80 columns


def test_publish_list_and_show(url: str, tmp_path: Path) -> None:
    path = veil.export(torch.nn.Linear(3, 2), tmp_path / "lin.onnx", torch.zeros(1, 3))
    digest = sha256_of(path.read_bytes())

    code, out = _run(url, "models", "publish", str(path), "--name", "lin", "--version", "1",
                     "--description", "a linear layer")  # fmt: skip
    assert code == 0, out
    assert f"published lin version 1: {path.stat().st_size:,} bytes, sha256 {digest}" in out

    code, out = _run(url, "models", "list", email=SCI, password=SCI_PW)
    assert code == 0 and "lin" in out and digest[:12] in out and "a linear" in out

    code, out = _run(url, "models", "show", "lin", email=SCI, password=SCI_PW)
    assert code == 0 and f"sha256 {digest}" in out and f"{url}/api/v1/models/lin/1" in out
    assert "a linear layer" in out


def test_refusals_are_one_line_errors(url: str, tmp_path: Path) -> None:
    path = veil.export(torch.nn.Linear(3, 2), tmp_path / "lin.onnx", torch.zeros(1, 3))

    code, out = _run(url, "models", "publish", str(path), "--name", "lin", "--version", "1",
                     email=SCI, password=SCI_PW)  # fmt: skip
    assert code == 1 and "only the node's owner or admins publish models" in out
    code, out = _run(url, "models", "publish", str(tmp_path / "none.onnx"), "--name", "x",
                     "--version", "1")  # fmt: skip
    assert code == 1 and "is not an .onnx file" in out
    code, out = _run(url, "models", "show", "nope")
    assert code == 1 and "hosts no model 'nope'" in out
    assert "Traceback" not in out
