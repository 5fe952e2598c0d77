"""Abuse limits of a node server: the settings, the login rate limiter, and the request body limit.

Login guessing is limited by three counters of failed logins, all in memory:

* per (account, client address): ``login_attempts`` failures in ``login_window_s``, then a
  lockout of one window that doubles with each further failure (up to a day); a success
  clears it. This is the limit an owner who mistypes meets.
* per account, from any address (looser): ``login_account_attempts``. It stops guessing
  spread over many addresses, at a price: such an attacker can keep the account's *new*
  logins locked out, owner included (tokens already issued keep working, and a node
  restart clears the limiter). Set it to 0 to prefer availability.
* per client address, over any accounts: ``login_address_attempts`` (password spraying).

Every attempt counts before the password is checked (so parallel guesses cannot pass the
limit) and a success takes its own count back. Unknown emails count exactly like known
ones, and a refused attempt is refused before any password work: a 429 says nothing about
whether an account exists, and a correct password during a lockout is refused too (else
the lockout would be an oracle). The address is the TCP peer's (uvicorn honours
``X-Forwarded-For`` only from the addresses in ``FORWARDED_ALLOW_IPS``, 127.0.0.1 by
default): behind a proxy, configure that, or every client shares the proxy's address.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veil.errors import RateLimited

#: The longest lockout, however many failures.
MAX_LOCKOUT_S = 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Limits a node server enforces against abuse (``veil node serve --help`` shows them).

    Args:
        login_attempts: failed logins per (account, client address) before a lockout.
        login_window_s: the window those failures are counted in, and the first lockout's
            length (each further failure doubles it, up to a day).
        login_account_attempts: failed logins per account from any address (0: no limit).
        login_address_attempts: failed logins per client address over any accounts (0: no
            limit).
        max_body_bytes: the largest REST request body (JSON; tensors travel over the
            WebSocket and the bulk lane, which have their own frame limit).
        bulk_max_connections: open bulk-lane connections at once; more are refused.
        bulk_idle_timeout_s: a bulk connection idle this long is closed (the client
            reconnects by itself).

    Example:
        >>> ServerLimits(login_attempts=5).login_window_s
        900.0
        >>> ServerLimits(max_body_bytes=10)
        Traceback (most recent call last):
        ...
        ValueError: max_body_bytes must be >= 1024, got 10; the default 65536 fits every REST request
    """

    login_attempts: int = 10
    login_window_s: float = 900.0
    login_account_attempts: int = 100
    login_address_attempts: int = 100
    max_body_bytes: int = 64 * 1024
    bulk_max_connections: int = 64
    bulk_idle_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        problems = []
        if self.login_attempts < 1:
            problems.append(f"login_attempts must be >= 1, got {self.login_attempts}")
        if not self.login_window_s > 0:
            problems.append(f"login_window_s must be > 0 seconds, got {self.login_window_s}")
        for name in ("login_account_attempts", "login_address_attempts"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (0: no limit), got {getattr(self, name)}")
        if self.max_body_bytes < 1024:
            problems.append(
                f"max_body_bytes must be >= 1024, got {self.max_body_bytes}; the default "
                "65536 fits every REST request"
            )
        if self.bulk_max_connections < 1:
            problems.append(f"bulk_max_connections must be >= 1, got {self.bulk_max_connections}")
        if not self.bulk_idle_timeout_s > 0:
            problems.append(
                f"bulk_idle_timeout_s must be > 0 seconds, got {self.bulk_idle_timeout_s}"
            )
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(slots=True)
class _Counter:
    fails: int = 0
    last: float = 0.0  # time of the last counted attempt
    until: float = 0.0  # locked until then


class LoginLimiter:
    """Counts failed logins per (account, address), per account and per address.

    Thread-safe; the state lives in memory and is bounded by ``max_entries`` (the oldest
    counters are forgotten first).

    Example:
        >>> limiter = LoginLimiter(ServerLimits(login_attempts=2))
        >>> for _ in range(2):
        ...     limiter.attempt("me@x.org", "10.0.0.7")  # then the password turns out wrong
        >>> limiter.attempt("me@x.org", "10.0.0.7")
        Traceback (most recent call last):
        ...
        veil.errors.RateLimited: too many failed logins for this account from this address; try again in 900 s
    """

    def __init__(self, limits: ServerLimits | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000) -> None:  # fmt: skip
        self.limits = limits or ServerLimits()
        self._clock = clock
        self._max_entries = max_entries
        self._counters: OrderedDict[tuple[str, ...], _Counter] = OrderedDict()
        self._lock = threading.Lock()

    def _keys(self, account: str, address: str) -> list[tuple[tuple[str, ...], int, str]]:
        lim = self.limits
        keys: list[tuple[tuple[str, ...], int, str]] = [
            (("pair", account, address), lim.login_attempts, "this account from this address")
        ]
        if lim.login_account_attempts:
            keys.append((("account", account), lim.login_account_attempts, "this account"))
        if lim.login_address_attempts:
            keys.append((("address", address), lim.login_address_attempts, "this address"))
        return keys

    def attempt(self, account: str, address: str) -> None:
        """Count a login attempt before its password is checked.

        Raises:
            RateLimited: a counter is locked; ``retry_after`` says for how many seconds.
        """
        account = account.strip().lower()
        now, window = self._clock(), self.limits.login_window_s
        keys = self._keys(account, address)
        with self._lock:
            wait, why = 0.0, ""
            for key, _, what in keys:
                c = self._counters.get(key)
                if c is not None and c.until - now > wait:
                    wait, why = c.until - now, what
            if wait > 0:
                raise RateLimited(
                    f"too many failed logins for {why}; try again in {math.ceil(wait)} s",
                    retry_after=wait,
                )
            for key, limit, _ in keys:
                c = self._counters.pop(key, None) or _Counter()
                if now - max(c.last, c.until) > window:
                    c.fails = 0  # a quiet window forgives
                c.fails += 1
                c.last = now
                if c.fails >= limit:
                    c.until = now + min(window * 2.0 ** (c.fails - limit), MAX_LOCKOUT_S)
                self._counters[key] = c  # newest last
            self._prune(now)

    def succeeded(self, account: str, address: str) -> None:
        """Take back a successful attempt's count; the (account, address) pair starts afresh."""
        account = account.strip().lower()
        with self._lock:
            for key, limit, _ in self._keys(account, address):
                c = self._counters.get(key)
                if c is None:
                    continue
                if key[0] == "pair":
                    del self._counters[key]
                    continue
                c.fails = max(0, c.fails - 1)
                if c.fails < limit:
                    c.until = 0.0  # the lockout this very attempt set

    def _prune(self, now: float) -> None:
        if len(self._counters) <= self._max_entries:
            return
        window = self.limits.login_window_s
        for key in [k for k, c in self._counters.items() if now - max(c.last, c.until) > window]:
            del self._counters[key]
        while len(self._counters) > self._max_entries:
            self._counters.popitem(last=False)

    def __len__(self) -> int:
        return len(self._counters)


class BodyLimit:
    """ASGI middleware: an HTTP request body over ``max_bytes`` is answered with 413 before
    it is read (by its ``Content-Length``, or as soon as a chunked body passes the limit).

    Example:
        >>> from fastapi import FastAPI
        >>> app = FastAPI()
        >>> app.add_middleware(BodyLimit, max_bytes=65536)
    """

    def __init__(self, app: Any, max_bytes: int, paths: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        #: paths with a limit of their own (a delivery of a moved object: a frame's limit)
        self.paths = dict(paths or {})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope.get("path", ""), self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False  # the server itself rejects a malformed length
                if too_large:
                    await self._refuse(send, limit)
                    return
        received = 0
        refused = started = False

        async def limited_receive() -> Any:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await self._refuse(send, limit)
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if refused:  # the 413 went out instead
                return
            started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Any, limit: int) -> None:
        body = (
            b'{"error":{"code":"message_too_large","message":"request body over the limit of '
            + str(limit).encode()
            + b" bytes; REST requests are small JSON: send tensors with veil.connect (its "
            b'WebSocket and bulk lane), or ask the owner to raise --max-body-bytes"}}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
