"""Abuse limits of the node server: login guessing (429) and request body size (413)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
import torch

import veil
from veil.errors import AuthenticationError, RateLimited
from veil.node import Node
from veil.node.server import ServerLimits, serve_in_thread
from veil.node.server.limits import LoginLimiter

EMAIL, PASSWORD = "owner@limits.test", "owner-password-3"
SCI, SCI_PASSWORD = "sci@limits.test", "sci-password-3"


@pytest.fixture
def server() -> Iterator[tuple[Node, str]]:
    node = Node("limits", owner_email=EMAIL, owner_password=PASSWORD)
    node.create_user(SCI, SCI_PASSWORD)
    limits = ServerLimits(login_attempts=3, max_body_bytes=4096)
    with serve_in_thread(node, limits=limits) as url:
        yield node, url


def _login(url: str, email: str, password: str) -> httpx.Response:
    return httpx.post(url + "/api/v1/login", json={"email": email, "password": password})


# ------------------------------------------------------------------ login guessing
def test_password_guessing_gets_429_with_retry_after_and_the_right_password_waits_too(
    server: tuple[Node, str],
) -> None:
    _, url = server
    codes = [_login(url, EMAIL, f"guess-{i}").status_code for i in range(3)]
    assert codes == [401, 401, 401]

    refused = _login(url, EMAIL, "guess-4")
    right = _login(url, EMAIL, PASSWORD)  # an oracle otherwise: the lockout holds for it too

    for r in (refused, right):
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) > 0
        assert "try again" in r.json()["error"]["message"]
    assert _login(url, SCI, SCI_PASSWORD).status_code == 200  # other accounts are unaffected


def test_an_unknown_email_is_limited_like_a_known_one(server: tuple[Node, str]) -> None:
    _, url = server
    for email in (EMAIL, "nobody@limits.test"):
        codes = [_login(url, email, f"guess-{i}").status_code for i in range(4)]
        assert codes == [401, 401, 401, 429], email  # no way to tell which one exists


def test_the_client_says_when_to_retry(server: tuple[Node, str]) -> None:
    _, url = server
    for _ in range(3):
        with pytest.raises(AuthenticationError, match="wrong email or password"):
            veil.connect(url, email=EMAIL, password="not-it-at-all")
    with pytest.raises(RateLimited, match=r"retry after \d+ s") as err:
        veil.connect(url, email=EMAIL, password=PASSWORD)
    assert err.value.retry_after is not None and err.value.retry_after > 0
    assert isinstance(err.value, AuthenticationError)  # callers that catch login failures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(limiter: LoginLimiter, email: str, address: str) -> None:
    limiter.attempt(email, address)  # counted before the password is checked


def test_lockouts_double_and_are_forgiven_after_a_quiet_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(ServerLimits(login_attempts=3, login_window_s=60), clock=clock)
    for _ in range(3):
        _fail(limiter, "a@x", "10.0.0.1")
    lockouts = []
    for _ in range(3):
        with pytest.raises(RateLimited) as err:
            _fail(limiter, "a@x", "10.0.0.1")
        assert err.value.retry_after is not None
        lockouts.append(err.value.retry_after)
        clock.now += err.value.retry_after  # wait it out, then fail once more
        _fail(limiter, "a@x", "10.0.0.1")
    assert lockouts == [60, 120, 240]  # exponential backoff

    with pytest.raises(RateLimited):
        _fail(limiter, "a@x", "10.0.0.1")
    clock.now += 480 + 60 + 1  # the last lockout, then a quiet window
    for _ in range(3):
        _fail(limiter, "a@x", "10.0.0.1")  # forgiven: a fresh allowance


def test_a_success_clears_the_account_and_address_pair() -> None:
    limiter = LoginLimiter(ServerLimits(login_attempts=3), clock=Clock())
    for _ in range(2):
        _fail(limiter, "a@x", "10.0.0.1")
    limiter.attempt("a@x", "10.0.0.1")
    limiter.succeeded("a@x", "10.0.0.1")
    for _ in range(3):
        _fail(limiter, "a@x", "10.0.0.1")


def test_concurrent_guesses_cannot_exceed_the_limit() -> None:
    limiter = LoginLimiter(ServerLimits(login_attempts=3), clock=Clock())
    for _ in range(3):  # three guesses in flight, none answered yet
        limiter.attempt("a@x", "10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.attempt("a@x", "10.0.0.1")


def test_guessing_from_many_addresses_hits_the_looser_account_limit() -> None:
    limits = ServerLimits(login_attempts=3, login_account_attempts=6, login_address_attempts=1000)
    limiter = LoginLimiter(limits, clock=Clock())
    for i in range(6):
        _fail(limiter, "a@x", f"10.0.0.{i}")
    with pytest.raises(RateLimited, match="this account"):
        _fail(limiter, "a@x", "10.0.9.9")
    _fail(limiter, "b@x", "10.0.9.9")  # other accounts can still log in


def test_spraying_one_address_over_many_accounts_hits_the_address_limit() -> None:
    limits = ServerLimits(login_attempts=3, login_account_attempts=100, login_address_attempts=5)
    limiter = LoginLimiter(limits, clock=Clock())
    for i in range(5):
        _fail(limiter, f"user{i}@x", "10.0.0.1")
    with pytest.raises(RateLimited, match="this address"):
        _fail(limiter, "other@x", "10.0.0.1")
    _fail(limiter, "other@x", "10.0.0.2")


def test_the_limiter_forgets_the_oldest_entries_past_its_size_bound() -> None:
    limiter = LoginLimiter(ServerLimits(), clock=Clock(), max_entries=100)
    for i in range(1000):
        _fail(limiter, f"user{i}@x", f"10.0.{i // 250}.{i % 250}")
    assert len(limiter) <= 100


@pytest.mark.parametrize(
    ("field", "value"),
    [("login_attempts", 0), ("login_window_s", 0.0), ("max_body_bytes", 10),
     ("bulk_max_connections", 0), ("bulk_idle_timeout_s", -1.0)],
)  # fmt: skip
def test_limits_are_checked_at_the_door(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ServerLimits(**{field: value})  # type: ignore[arg-type]


# ------------------------------------------------------------------ request bodies
def _raw_http(url: str, head: bytes, body_chunks: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the node may stop reading and close: the answer is what counts
            pass
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)  # times out (a failure) if the node waits for the body
            if not data:
                break
            answer += data
        return answer


def test_a_huge_body_is_refused_with_413_before_it_is_read(server: tuple[Node, str]) -> None:
    _, url = server
    head = (
        b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 67108864\r\n\r\n"
    )
    answer = _raw_http(url, head)  # no byte of the 64 MiB body is ever sent

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert _login(url, EMAIL, PASSWORD).status_code == 200  # the node keeps serving


def test_a_chunked_body_over_the_limit_is_refused_with_413(server: tuple[Node, str]) -> None:
    _, url = server
    head = (
        b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (1024, b" " * 1024)
    answer = _raw_http(url, head, [chunk] * 8)  # 8 KiB, never terminated

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    r = httpx.post(url + "/api/v1/login", content=b"x" * 5000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "message_too_large"
    assert "4096" in r.json()["error"]["message"]
    assert _login(url, EMAIL, PASSWORD).status_code == 200


def test_normal_requests_pass_the_body_limit(server: tuple[Node, str]) -> None:
    _, url = server
    with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
        assert torch.equal(c.send(torch.ones(2**16)).get(), torch.ones(2**16))  # ops: no limit
        c.create_user("new@limits.test", "new-password-1")
