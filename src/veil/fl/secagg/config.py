"""The public parameters of one secure-aggregation session, and checks shared by both sides."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from veil.errors import InvalidRequest
from veil.fl.secagg.encoding import FixedPoint

__all__ = ["SecAggConfig", "check_ids", "check_session"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggConfig:
    """What every participant of a session agrees on before it starts.

    Args:
        session: a session id, unique per aggregation (keys and seeds are bound to it).
        vector_length: the length of every client's input vector.
        threshold: ``t``, the shares needed to recover a client's secrets. Each client
            shares among its ``k`` neighbours, and ``k / 2 < t <= k`` is required, so that
            no two disjoint sets of neighbours can both reach ``t``.
        neighbours: ``k``, the degree of the neighbour graph; ``None`` (or ``>= n - 1``)
            means every client neighbours every other (the original SecAgg). Otherwise an
            even number, about ``2 log2 n`` (see ``suggested_degree``).
        encoding: the fixed-point ring (default ``Z_{2^64}``, 24 fractional bits).
        min_survivors: refuse to unmask a sum of fewer inputs (default: ``threshold``).

    Example:
        >>> SecAggConfig(session="r1", vector_length=10, threshold=3).degree(5)
        4
    """

    session: str
    vector_length: int
    threshold: int
    neighbours: int | None = None
    encoding: FixedPoint = field(default_factory=FixedPoint)
    min_survivors: int | None = None

    def __post_init__(self) -> None:
        if not self.session:
            raise ValueError("session must be a non-empty string")
        if self.vector_length < 1:
            raise ValueError(f"vector_length must be >= 1, got {self.vector_length}")
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")
        if self.neighbours is not None and self.neighbours < 2:
            raise ValueError(f"neighbours must be >= 2, got {self.neighbours}")
        if self.min_survivors is not None and self.min_survivors < 1:
            raise ValueError(f"min_survivors must be >= 1, got {self.min_survivors}")

    def degree(self, n: int) -> int:
        """The graph degree for ``n`` clients, checked against the threshold.

        Raises:
            InvalidRequest: too few clients for the configured degree or threshold.
        """
        if n < 2:
            raise InvalidRequest(f"secure aggregation needs at least 2 clients, got {n}")
        k = n - 1 if self.neighbours is None else min(self.neighbours, n - 1)
        if not k / 2 < self.threshold <= k:
            raise InvalidRequest(
                f"threshold {self.threshold} does not fit {n} clients of degree {k}: "
                f"need {k}/2 < threshold <= {k}; wait for more clients or lower the threshold"
            )
        return k

    @property
    def survivors_needed(self) -> int:
        """The fewest masked inputs the server may unmask a sum of."""
        return self.min_survivors if self.min_survivors is not None else self.threshold

    @property
    def data_bytes(self) -> int:
        """The byte length of one masked input."""
        return self.vector_length * self.encoding.word_bytes


def check_ids(ids: Iterable[int], what: str) -> list[int]:
    """``ids`` as a list, refusing duplicates and ids outside ``[0, 2^31 - 1)``.

    Example:
        >>> check_ids([3, 1], "the list")
        [3, 1]
        >>> check_ids([1, 1], "the list")
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: the list lists a client id twice
    """
    out = list(ids)
    if len(set(out)) != len(out):
        raise InvalidRequest(f"{what} lists a client id twice")
    bad = [i for i in out if not isinstance(i, int) or not 0 <= i < 2**31 - 1]
    if bad:
        raise InvalidRequest(f"{what} has invalid client ids {bad[:5]}; ids are in [0, 2^31-1)")
    return out


def check_session(config: SecAggConfig, session: str, what: str) -> None:
    """Refuse a message of another session.

    Example:
        >>> cfg = SecAggConfig(session="a", vector_length=1, threshold=1)
        >>> check_session(cfg, "b", "the message")
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: the message is for session 'b', not 'a'
    """
    if session != config.session:
        raise InvalidRequest(f"{what} is for session {session!r}, not {config.session!r}")
