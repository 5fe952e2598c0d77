"""Password checks: an unknown email costs the same work as a known one (no user enumeration)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from veil.errors import AuthenticationError
from veil.node import Node
from veil.node import users as users_module

EMAIL, PASSWORD = "owner@users.test", "owner-password-5"


def _scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the cost parameters of every scrypt the password checks run."""
    calls: list[dict[str, Any]] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: Any) -> bytes:
        calls.append({k: kwargs[k] for k in ("n", "r", "p")} | {"dklen": kwargs.get("dklen", 64)})
        return real(password, **kwargs)

    monkeypatch.setattr(users_module.hashlib, "scrypt", counting)
    return calls


def test_unknown_and_known_emails_cost_exactly_one_scrypt_with_the_same_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = Node("users", owner_email=EMAIL, owner_password=PASSWORD)
    calls = _scrypt_calls(monkeypatch)
    work = {}
    for label, email, password in (
        ("unknown email", "nobody@users.test", "some-password"),
        ("known email, wrong password", EMAIL, "some-password"),
    ):
        calls.clear()
        with pytest.raises(AuthenticationError, match="wrong email or password"):
            node.authenticate(email, password)
        work[label] = list(calls)
    calls.clear()
    node.authenticate(EMAIL, PASSWORD)
    work["known email, right password"] = list(calls)

    assert all(len(c) == 1 for c in work.values()), work
    assert len({str(c) for c in work.values()}) == 1, work  # same n, r, p and length


def test_the_stand_in_hash_never_matches() -> None:
    for password in ("", "password", "timing-equalizer", "\x00" * 8):
        assert not users_module.verify_password(password, users_module.STAND_IN_HASH)
