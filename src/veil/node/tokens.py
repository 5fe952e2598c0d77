"""Bearer tokens of network sessions: issued at login, expired after a TTL, revoked per user."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from veil.node.users import new_token, token_key

#: How long a token is valid (seconds).
TOKEN_TTL_S = 12 * 3600


class TokenTable:
    """Tokens -> user ids, kept as SHA-256 digests (never the tokens), in memory only: a
    node restart ends every session.

    Thread-safe with a lock of its own, so checking a token on every message never waits
    for the node's lock.

    Args:
        ttl_s: how long a token is valid.
        clock: the time source (``time.time``; tests pass a fake one).

    Example:
        >>> tokens = TokenTable(ttl_s=60)
        >>> t = tokens.issue(7)
        >>> tokens.user_of(t)
        7
        >>> tokens.revoke_user(7)
        1
        >>> tokens.user_of(t) is None
        True
    """

    def __init__(self, ttl_s: float = TOKEN_TTL_S, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 seconds, got {ttl_s}; the default is 12 hours")
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[int, float]] = {}  # digest -> (user id, expiry)
        self._revoked: dict[int, float] = {}  # user id -> when their sessions were last ended
        self._lock = threading.Lock()

    def issue(self, user_id: int) -> str:
        """A fresh token for ``user_id``, valid for ``ttl_s`` seconds (expired ones go)."""
        token = new_token()
        now = self.clock()
        with self._lock:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            self._entries[token_key(token)] = (user_id, now + self.ttl_s)
        return token

    def user_of(self, token: str) -> int | None:
        """The user a token stands for; None if it is unknown, expired or revoked."""
        entry = self._entries.get(token_key(token))
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def revoke_user(self, user_id: int) -> int:
        """End every session of ``user_id``; returns how many live tokens it had."""
        now = self.clock()
        with self._lock:
            mine = [k for k, (uid, _) in self._entries.items() if uid == user_id]
            live = sum(1 for k in mine if self._entries[k][1] > now)
            for k in mine:
                del self._entries[k]
            self._revoked[user_id] = now
        return live

    def revoked_since(self, user_id: int, t: float) -> bool:
        """Were ``user_id``'s sessions ended at or after time ``t`` (what a grant issued to
        one of them at ``t``, such as a move ticket, must not outlive)?

        Example:
            >>> tokens = TokenTable(ttl_s=60)
            >>> tokens.revoked_since(7, 0.0)
            False
            >>> _ = tokens.revoke_user(7)
            >>> tokens.revoked_since(7, 0.0)
            True
        """
        return self._revoked.get(user_id, float("-inf")) >= t

    def __len__(self) -> int:
        return len(self._entries)
