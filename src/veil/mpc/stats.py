"""Communication counters: bytes each party sends and protocol rounds, per party.

Every opening counts, for each party, the bytes of the masked values it contributes (what
it would broadcast to the other parties in a peer-to-peer network) and one round. The
dealer's traffic is counted under its own name. Compare with the theoretical minimum of a
protocol, e.g. 16 bytes per element and one round for a Beaver multiplication.

Example:
    >>> reset_stats()
    >>> record("alice", 160)
    >>> stats()["alice"]
    {'bytes': 160, 'rounds': 1, 'messages': 1}
"""

from __future__ import annotations

import threading
from collections import defaultdict

_lock = threading.Lock()
_bytes: dict[str, int] = defaultdict(int)
_rounds: dict[str, int] = defaultdict(int)
_messages: dict[str, int] = defaultdict(int)


def record(party: str, nbytes: int, *, rounds: int = 1) -> None:
    """Count ``nbytes`` sent by ``party`` in ``rounds`` rounds (one message)."""
    with _lock:
        _bytes[party] += nbytes
        _rounds[party] += rounds
        _messages[party] += 1


def stats() -> dict[str, dict[str, int]]:
    """Bytes, rounds and messages per party since the last :func:`reset_stats`."""
    with _lock:
        return {
            p: {"bytes": _bytes[p], "rounds": _rounds[p], "messages": _messages[p]}
            for p in sorted(set(_bytes) | set(_rounds))
        }


def reset_stats() -> None:
    """Zero every counter."""
    with _lock:
        _bytes.clear()
        _rounds.clear()
        _messages.clear()
