"""MPCSession: the parties, the crypto provider and the rounds between them, as the driver sees them.

The data scientist's program drives; every message goes from the driver to one node and
back. One protocol *round* is: the dealer's randomness for the round (one message, or
none when dealt ahead), one ``mpc.open`` per party (its masked values, all groups of the
round batched in one message), and one ``mpc.finish`` per party (the public openings in,
private result shares out). Rounds that feed each other directly (the comparison's carry
tree) run through :meth:`MPCSession.chain`: one ``mpc.step`` message per party per round,
finishing one round and opening the next. Calls to the parties run in parallel threads.
"""

from __future__ import annotations

import secrets
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import torch

from veil.errors import InvalidRequest
from veil.mpc.protocols.groups import product_groups
from veil.mpc.protocols.rounds import Request, Rounds, checked, deviation  # noqa: F401  (kept names)
from veil.mpc.providers.base import CryptoProvider
from veil.mpc.providers.dealer import DealerFree, as_provider
from veil.mpc.providers.preprocessing import Preprocessor
from veil.mpc.providers.remote import _u8, fingerprint, node_call, public_key, reply_tensor  # noqa: F401  (veil.mpc.session kept these names)
from veil.mpc.ring import FixedPoint
from veil.node.transports import InProcessTransport
from veil.node.worker import Worker

T = TypeVar("T")

#: Multiply-accumulates per party (matrix products, convolutions) from which in-process
#: parties compute in parallel threads (:meth:`MPCSession.fanout`); remote parties always
#: do. Measured, 2 parties: matmul 512 (2^27) 38-42 ms threaded, 46-52 ms serial; matmul
#: 256 (2^24) the same either way.
PARALLEL_MIN = 1 << 25
#: Bytes of a group's delta from which an in-process dealer prepares it ahead of use.
PREFETCH_MIN = 1 << 18
Security = Literal["semi-honest", "malicious"]


def _in_this_process(worker: Any) -> bool:
    """Is ``worker`` a node in this process (a VirtualWorker's transport)?"""
    return isinstance(getattr(worker, "transport", None), InProcessTransport)


class MPCSession(Rounds):
    """Parties (>= 2 workers), a crypto provider (a worker that is none of them), the
    fixed-point encoding and the security mode; set up once per party set.

    Args:
        parties: the workers holding shares, in party order.
        provider: the trusted dealer's worker, or a
            :class:`~veil.mpc.providers.base.CryptoProvider` (e.g.
            :class:`~veil.mpc.providers.dealer.DealerFree`: no dealer, linear work only).
        frac_bits: fixed-point fractional bits.
        security: ``"semi-honest"`` (default, fast) or ``"malicious"``.
        truncation: ``"auto"`` (local for 2 semi-honest parties, else dealer pairs),
            ``"local"`` (2 parties: free, but a product z fails with probability about
            |z| / 2^63 per element, z at scale 2^(2 frac_bits)) or ``"dealer"`` (one more
            round, exact to one unit in the last place for any |z| < 2^62).
        parallel: run the parties' steps in parallel threads (default; where every party is
            a node in this process, only rounds of shared x shared matrix products or
            convolutions of at least :data:`PARALLEL_MIN` multiply-accumulates: the rest runs
            faster in one thread).
        prefetch: after a group of dealer randomness of some kind and shapes is used, deal
            this many more of the same in a background thread, so a loop of same-shaped
            operations finds them ready (default 1; 0 turns it off). See :meth:`preprocess`.
        prefetch_min_bytes: only groups with at least this many bytes of delta are dealt
            ahead. Default: :data:`PREFETCH_MIN` where the parties and the dealer all run
            in this process (small groups are dealt faster when used than by a second
            thread competing for the interpreter), else 0 (a remote dealer's latency is
            worth hiding whatever the size).
        preprocess_bytes: the most bytes of dealt randomness (the last party's deltas) kept
            ready on the driver (default 64 MiB; least recently used shapes go first).

    Example:
        >>> import veil
        >>> alice, bob, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
        >>> MPCSession([alice, bob], carol)
        MPCSession(parties=['alice', 'bob'], provider='carol', frac_bits=16, security='semi-honest')
    """

    def __init__(self, parties: Sequence[Worker], provider: Worker | CryptoProvider, *, frac_bits: int = 16,
                 security: Security = "semi-honest", truncation: str = "auto",
                 parallel: bool = True, prefetch: int = 1, preprocess_bytes: int = 64 << 20,
                 prefetch_min_bytes: int | None = None) -> None:  # fmt: skip
        parties = list(parties)
        crypto = as_provider(provider)
        problems = []
        checks = [("prefetch", prefetch), ("preprocess_bytes", preprocess_bytes)]
        if prefetch_min_bytes is not None:
            checks.append(("prefetch_min_bytes", prefetch_min_bytes))
        for name, v in checks:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                problems.append(f"{name} must be an integer >= 0, got {v!r}")
        if len(parties) < 2:
            problems.append(f"secret sharing needs at least 2 parties, got {len(parties)}")
        if len({id(p) for p in parties}) != len(parties):
            problems.append("each party must appear once")
        if any(p is provider for p in parties):
            problems.append("the crypto provider must not be one of the parties")
        if crypto.worker is None and security == "malicious":
            problems.append("malicious mode authenticates shares with MAC keys a dealer deals: "
                            "configure a dealer (crypto_provider=carol)")  # fmt: skip
        if security not in ("semi-honest", "malicious"):
            problems.append(f"security must be 'semi-honest' or 'malicious', got {security!r}")
        if truncation not in ("auto", "local", "dealer"):
            problems.append(f"truncation must be 'auto', 'local' or 'dealer', got {truncation!r}")
        elif truncation == "local" and (len(parties) != 2 or security != "semi-honest"):
            problems.append("local truncation works for 2 parties in semi-honest mode only")
        if problems:
            raise ValueError("; ".join(problems))
        self._truncation = truncation
        self.parties: list[Worker] = parties
        #: The crypto provider (:class:`~veil.mpc.providers.base.CryptoProvider`).
        self.crypto = crypto
        #: The dealer's worker, or the provider itself where there is no dealer node.
        self.provider: Any = crypto.worker if crypto.worker is not None else crypto
        names = [p.name for p in [*parties, self.provider]]
        #: Names used in :func:`veil.mpc.stats` (``name#i`` where node names repeat).
        self.labels = [nm if names.count(nm) == 1 else f"{nm}#{i}" for i, nm in enumerate(names)]
        self.encoding = FixedPoint(frac_bits)
        self.security: Security = security
        self.n = len(parties)
        self._lock = threading.RLock()
        # Parties compute in parallel threads (torch releases the GIL), as separate machines
        # would; ``parallel=False`` runs them one after the other.
        self._pool: ThreadPoolExecutor | None = None
        #: Every party is a node in this process: threads pay off only for large rounds.
        self.in_process = all(_in_this_process(w) for w in parties)
        if parallel:
            self._pool = ThreadPoolExecutor(max_workers=self.n + 1, thread_name_prefix="veil-mpc")
        ref = weakref.ref(self)

        def deal_now(groups: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, torch.Tensor]]:
            sess = ref()  # weak: the dealer lane must not keep the session alive
            if sess is None:
                raise RuntimeError("the MPC session was closed")
            return sess._deal_now(groups)

        if prefetch_min_bytes is None:
            dealer_here = crypto.worker is None or _in_this_process(crypto.worker)
            prefetch_min_bytes = PREFETCH_MIN if self.in_process and dealer_here else 0
        self._pre = Preprocessor(deal_now, ahead=prefetch, max_bytes=preprocess_bytes,
                                 min_bytes=prefetch_min_bytes)  # fmt: skip
        self.keys = self.fanout(public_key, self.parties)
        self.provider_key: bytes | None = None  # the dealer's node key (set by a dealer)
        self.sid = self.crypto.start(self)

    def close(self) -> None:
        """Stop the session's worker threads and drop the randomness dealt ahead (also done
        when it is garbage-collected)."""
        pre = getattr(self, "_pre", None)
        if pre is not None:
            pre.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: S110 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return (
            f"MPCSession(parties={[p.name for p in self.parties]}, provider={self.provider.name!r}, "
            f"frac_bits={self.encoding.frac_bits}, security={self.security!r})"
        )

    # ---------------------------------------------------------------- plumbing
    def call(self, worker: Any, op: str, *args: Any, expect_bytes: int = 0) -> Any:
        """Run MPC op ``op`` on ``worker``'s node and return its raw reply (the rounds send
        every protocol message through here; ``expect_bytes``: the size of a large reply,
        such as a party's openings, so that it takes a node server's bulk lane)."""
        return node_call(worker, op, *args, expect_bytes=expect_bytes)

    def fanout(self, fn: Callable[[Any], T], items: Any, *, work: int = 0) -> list[T]:
        """``[fn(i) for i in items]``, in parallel threads when parties are remote, or when
        they are in this process and each one's ``work`` (multiply-accumulates of matrix
        products) is at least :data:`PARALLEL_MIN`: below that, handing work to threads and
        the GIL contention of many small Python steps cost more than the second core saves
        (measured: relu on 10^4 elements, 9 rounds, 15-17 ms in one thread, 26-34 ms
        threaded)."""
        items = list(items)
        if self._pool is None or len(items) < 2 or (self.in_process and work < PARALLEL_MIN):
            return [fn(i) for i in items]
        return list(self._pool.map(fn, items))

    @property
    def truncation(self) -> str:
        """``"local"`` for 2 parties in semi-honest mode, else ``"dealer"``."""
        if self._truncation != "auto":
            return self._truncation
        return "local" if self.n == 2 and self.security == "semi-honest" else "dealer"

    def deal(self, groups: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, torch.Tensor]]:
        """Groups of dealer randomness, (gid, delta) for each: prepared ahead where one of
        the same kind and params is ready, else dealt now (one provider message).

        Raises:
            UnsupportedError: the provider deals no such groups (a dealer-free session).
        """
        self.crypto.require(groups)
        return self._pre.take(groups)

    def preprocess(self, op: str, x_shape: Sequence[int], y_shape: Sequence[int] | None = None,
                   *, count: int = 1, frac_bits: int | None = None, stride: int = 1,
                   padding: int = 0, wait: bool = True) -> None:  # fmt: skip
        """Deal the randomness of ``count`` future products ahead (the *offline phase*):
        ``op`` is ``"mul"``, ``"matmul"``, ``"conv2d"`` (shared x shared, shapes of both
        operands) or ``"square"`` (one shape); the truncation by ``frac_bits`` (default: the
        session's) is included. Later products of these shapes take their groups from the
        pool, each group once. Prepared randomness depends on shapes only, never on data.

        Args:
            wait: return once it is dealt (default); False deals in the background.

        Raises:
            ValueError: an unknown op, more than ``preprocess_bytes`` in the pool, or a
                malicious-mode session.

        Example:
            >>> import torch, veil
            >>> alice, bob, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
            >>> sess = MPCSession([alice, bob], carol)
            >>> sess.preprocess("matmul", (4, 3), (3, 2), count=2)
            >>> x = torch.ones(4, 3).share(session=sess)
            >>> w = torch.ones(3, 2).share(session=sess)
            >>> (x @ w).reconstruct()[0]
            tensor([3., 3.])
        """
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        if self.security != "semi-honest":
            raise ValueError(
                "preprocess() prepares semi-honest products; in malicious mode the session "
                "prepares groups ahead as they are used (prefetch=)"
            )
        f = self.encoding.frac_bits if frac_bits is None else frac_bits
        groups = product_groups(self, op, list(x_shape),
                                          None if y_shape is None else list(y_shape),
                                          f=f, stride=stride, padding=padding)  # fmt: skip
        self.crypto.require(groups)
        self._pre.add(groups, count, wait=wait)

    def _deal_now(self, groups: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, torch.Tensor]]:
        """Ask the provider for groups of randomness; returns (gid, delta) for each."""
        return self.crypto.deal(self, groups)


# ------------------------------------------------------------------ session cache

#: Live sessions by (parties, provider, options); a session lives while a tensor uses it.
_SESSIONS: weakref.WeakValueDictionary[tuple[Any, ...], MPCSession] = weakref.WeakValueDictionary()


def session_for(parties: Sequence[Worker], provider: Worker | CryptoProvider | None, *, frac_bits: int = 16,
                security: Security = "semi-honest") -> MPCSession:  # fmt: skip
    """The session for these parties and provider (created once, then reused)."""
    if provider is None:
        raise InvalidRequest(
            "share() needs a crypto provider: x.share(alice, bob, crypto_provider=carol); "
            "it deals the correlated randomness and never sees your data"
        )
    free = isinstance(provider, DealerFree)  # every DealerFree() is the same provider
    key = (tuple(id(p) for p in parties), "dealer-free" if free else id(provider), frac_bits,
           security)  # fmt: skip
    sess = _SESSIONS.get(key)
    if (
        sess is None
        or any(a is not b for a, b in zip(sess.parties, parties, strict=True))
        or (sess.provider is not provider and not (free and isinstance(sess.crypto, DealerFree)))
    ):
        sess = MPCSession(parties, provider, frac_bits=frac_bits, security=security)
        _SESSIONS[key] = sess
    return sess


def new_tag() -> str:
    return secrets.token_hex(8)
