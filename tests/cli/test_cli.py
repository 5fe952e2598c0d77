"""The ``veil`` command against a real node server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from typer.testing import CliRunner

import veil
from veil.cli import app
from veil.node import Node
from veil.node.server import serve_in_thread

EMAIL, PASSWORD = "owner@cli.test", "owner-password-7"
runner = CliRunner()


@pytest.fixture
def url() -> Iterator[str]:
    node = Node("cli-node", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node) as u:
        yield u


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"VEIL_EMAIL": EMAIL, "VEIL_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.output
    return result.output


def test_help_of_every_command_explains_it() -> None:
    assert "serve" in _run("--help") or "node" in _run("--help")
    out = _run("node", "serve", "--help")
    assert "--db" in out and "--port" in out and "--name" in out
    for sub in (
        ("user", "create"),
        ("requests", "list"),
        ("requests", "approve"),
        ("requests", "deny"),
        ("user", "sessions", "revoke"),
        ("users", "sessions", "revoke"),
    ):
        assert "--url" in _run(*sub, "--help")


def test_serve_help_shows_the_abuse_limits() -> None:
    out = _run("node", "serve", "--help")
    for option in (
        "--login-attempts",
        "--login-window",
        "--login-account-attempts",
        "--login-address-attempts",
        "--max-body-bytes",
        "--bulk-max-connections",
        "--bulk-idle-timeout",
    ):
        assert option in out, option


def test_serve_refuses_a_bad_limit_with_a_clear_message() -> None:
    result = runner.invoke(app, ["node", "serve", "--db", "memory", "--login-attempts", "0"])
    assert result.exit_code == 1
    assert "login_attempts must be >= 1" in result.output and "Traceback" not in result.output


def test_version() -> None:
    assert veil.__version__ in _run("version")


def test_user_create_and_list(url: str) -> None:
    _run(
        "user",
        "create",
        "--url",
        url,
        "--new-email",
        "ds@cli.test",
        "--new-password",
        "ds-password-1",
    )
    out = _run("user", "list", "--url", url)
    assert "ds@cli.test" in out and "data_scientist" in out
    with veil.connect(url, email="ds@cli.test", password="ds-password-1") as c:
        assert c.role == "data_scientist"


@pytest.mark.parametrize("group", ["user", "users"])
def test_sessions_revoke_ends_a_users_open_sessions(url: str, group: str) -> None:
    with veil.connect(url, email=EMAIL, password=PASSWORD) as owner:
        owner.create_user("ds@cli.test", "ds-password-1")
    token = httpx.post(
        url + "/api/v1/login", json={"email": "ds@cli.test", "password": "ds-password-1"}
    ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(url + "/api/v1/requests", headers=headers).status_code == 200

    out = _run(group, "sessions", "revoke", "ds@cli.test", "--url", url)

    assert "ended 1 session of ds@cli.test" in out
    assert httpx.get(url + "/api/v1/requests", headers=headers).status_code == 401


def test_requests_list_approve_and_deny(url: str) -> None:
    with veil.connect(url, email=EMAIL, password=PASSWORD) as owner:
        owner.datasets.create("d", private=torch.arange(4.0), mock=torch.zeros(4))
        owner.create_user("sci@cli.test", "sci-password-1")
    with veil.connect(url, email="sci@cli.test", password="sci-password-1") as sci:
        x = sci.datasets["d"].private
        a, b = x.sum(), x.max()
        ra, rb = a.request("need the sum"), b.request("need the max")
        out = _run("requests", "list", "--url", url, "--status", "pending")
        assert "need the sum" in out and "need the max" in out
        assert "approved" in _run("requests", "approve", str(ra.id), "--url", url)
        assert "denied" in _run("requests", "deny", str(rb.id), "--url", url, "--note", "no")
        assert a.get().item() == 6.0
        with pytest.raises(veil.PermissionDenied):
            b.get()
        assert "need the max" not in _run("requests", "list", "--url", url, "--status", "pending")


def test_errors_are_reported_without_a_traceback(url: str) -> None:
    result = runner.invoke(
        app,
        ["requests", "approve", "999", "--url", url],
        env={"VEIL_EMAIL": EMAIL, "VEIL_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 1
    assert "no request 999" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app,
        ["requests", "list", "--url", url],
        env={"VEIL_EMAIL": EMAIL, "VEIL_PASSWORD": "wrong-one"},
    )
    assert result.exit_code == 1 and "wrong email or password" in result.output
