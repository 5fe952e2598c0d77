"""Dealer randomness prepared ahead: a bounded pool of dealt groups per kind and shapes.

SPDZ-style protocols split into an *offline* phase (the dealer prepares correlated
randomness, which depends on shapes only, never on data) and an *online* phase (the
parties open masked values and compute). Without preparation the dealer's work, e.g. the
product ``a @ b`` of a matrix triple and the expansion of every party's PRG seed, runs in
series before each protocol round. :class:`Preprocessor` keeps that work off the online
path:

* **ahead of use**: after a group of some signature (kind and params, i.e. op and shapes)
  is used, the next ``ahead`` groups of the same signature are dealt in a background
  thread, so a loop of same-shaped operations finds its randomness ready;
* **on request**: :meth:`Preprocessor.add` deals ``count`` groups of given signatures
  (``MPCSession.preprocess`` builds them for an op and shapes).

Each dealt group (a fresh group id, hence fresh masks) is handed out once, then forgotten;
parties refuse to open a group id twice anyway. The pool holds at most ``max_bytes`` of
deltas (least recently used signatures are dropped first) and is discarded with the
session. All calls to the provider go through one thread, the session's *dealer lane*,
where a group needed now goes ahead of groups being prepared.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from veil.mpc.providers import kinds

Group = tuple[str, dict[str, Any]]
Dealt = tuple[int, torch.Tensor]

_NOW, _AHEAD = 0, 1  # lane priorities: groups needed now go first


def signature(kind: str, params: dict[str, Any]) -> Hashable | None:
    """A hashable key for groups that are interchangeable (same kind, same params), or
    None when params hold anything but plain values (such groups are not pooled)."""

    def norm(v: Any) -> Hashable:
        if v is None or isinstance(v, bool | int | float | str):
            return (type(v).__name__, v)
        if isinstance(v, list | tuple):
            return ("seq", tuple(norm(x) for x in v))
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return ("map", tuple(sorted((k, norm(x)) for k, x in v.items())))
        raise TypeError

    try:
        return (kind, norm(params))
    except TypeError:
        return None


def delta_bytes(kind: str, params: dict[str, Any]) -> int:
    """Bytes of the delta the driver keeps for one group (what pooling it costs)."""
    slots = kinds.get_kind(kind).slots(params)
    return 8 * sum(kinds.words(s) for s in slots if kinds.has_delta(s))


class _Lane:
    """One thread that runs calls in priority order (then FIFO); started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._q: queue.PriorityQueue[tuple[int, int, Any, Any, Future[Any]]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, prio: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        if self._closed:
            fut.set_exception(RuntimeError("the MPC session was closed"))
            return fut
        self._q.put((prio, next(self._seq), fn, args, fut))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return fut

    def _run(self) -> None:
        while True:
            _, _, fn, args, fut = self._q.get()
            if fn is None:
                return
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                    fut.set_exception(exc)
            del fn, args, fut  # hold no reference to the session while idle

    def close(self) -> None:
        """Cancel what has not started and stop the thread (it finishes the running call)."""
        self._closed = True
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            item[4].cancel()
        if self._thread is not None:
            self._q.put((-1, -1, None, None, Future()))


@dataclass
class _Entry:
    fut: Future[list[Dealt]]
    index: int
    nbytes: int

    def get(self) -> Dealt:
        return self.fut.result()[self.index]


class Preprocessor:
    """Hands out dealt groups: from the pool when one of the same signature is ready,
    else dealt now; then tops the pool up to ``ahead`` groups for the signatures used.

    Args:
        deal: deals a list of groups in one provider message (``MPCSession._deal_now``).
        ahead: groups of each used signature to prepare in the background (0: none).
        max_bytes: the most bytes of deltas the pool holds.
        min_bytes: signatures whose delta is smaller are dealt when used, never ahead (where
            the dealer runs in this process, preparing small groups in a second thread costs
            more in GIL contention than it saves).
        name: the lane thread's name.
    """

    def __init__(self, deal: Callable[[list[Group]], list[Dealt]], *, ahead: int,
                 max_bytes: int, min_bytes: int = 0, name: str = "veil-dealer") -> None:  # fmt: skip
        self._deal = deal
        self.ahead = ahead
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._lane = _Lane(name)
        self._lock = threading.Lock()
        self._ready: OrderedDict[Hashable, deque[_Entry]] = OrderedDict()
        self._bytes = 0
        self._sizes: dict[Hashable, int] = {}  # delta bytes per signature
        #: Groups handed out from the pool (hits) and dealt on demand (misses).
        self.hits = 0
        self.misses = 0

    @property
    def pooled_bytes(self) -> int:
        """Bytes of deltas the pool holds now (ready or being dealt)."""
        return self._bytes

    def pooled(self) -> int:
        """How many groups the pool holds now (ready or being dealt)."""
        with self._lock:
            return sum(len(q) for q in self._ready.values())

    def take(self, groups: list[Group]) -> list[Dealt]:
        """One dealt group for each of ``groups`` (in order), each used by nobody else."""
        with self._lock:
            got: list[_Entry | None] = []
            missing: list[Group] = []
            used: list[tuple[Hashable, Group]] = []
            for kind, params in groups:
                sig = signature(kind, params)
                q = self._ready.get(sig) if sig is not None else None
                if q:
                    entry = q.popleft()
                    self._bytes -= entry.nbytes
                    self._ready.move_to_end(sig)
                    got.append(entry)
                    self.hits += 1
                else:
                    got.append(None)
                    missing.append((kind, params))
                    self.misses += 1
                if sig is not None and self.ahead > 0:
                    used.append((sig, (kind, params)))
            now = self._lane.submit(_NOW, self._deal, missing) if missing else None
            if used:
                self._top_up(used)
        out: list[Dealt] = []
        fresh = iter(now.result() if now is not None else [])
        for got_one in got:
            out.append(got_one.get() if got_one is not None else next(fresh))
        return out

    def add(self, groups: list[Group], count: int, *, wait: bool = True) -> None:
        """Deal ``count`` groups of each of ``groups`` ahead (one provider message).

        Raises:
            ValueError: they would not fit in ``max_bytes``.
        """
        todo = [g for g in groups for _ in range(count)]
        if not todo:
            return
        need = sum(self._size(signature(k, p), (k, p)) for k, p in todo)
        with self._lock:
            if self._bytes + need > self.max_bytes:
                raise ValueError(
                    f"preprocessing {count} x {len(groups)} group(s) needs {need:,} bytes of "
                    f"deltas; the pool holds {self._bytes:,} of at most {self.max_bytes:,}: "
                    "ask for fewer or raise MPCSession(preprocess_bytes=...)"
                )
            fut = self._enqueue(todo, _NOW if wait else _AHEAD)
        if wait:
            fut.result()

    def close(self) -> None:
        """Drop the pool and stop the lane."""
        with self._lock:
            self._ready.clear()
            self._bytes = 0
        self._lane.close()

    # ------------------------------------------------------------------ internals
    def _enqueue(self, todo: list[Group], prio: int) -> Future[list[Dealt]]:
        """Deal ``todo`` in the lane and pool each group under its signature (lock held)."""
        fut: Future[list[Dealt]] = self._lane.submit(prio, self._deal, todo)
        for i, (kind, params) in enumerate(todo):
            sig = signature(kind, params)
            if sig is None:
                continue
            nb = self._size(sig, (kind, params))
            self._ready.setdefault(sig, deque()).append(_Entry(fut, i, nb))
            self._ready.move_to_end(sig)
            self._bytes += nb
        return fut

    def _size(self, sig: Hashable | None, group: Group) -> int:
        nb = self._sizes.get(sig) if sig is not None else None
        if nb is None:
            nb = delta_bytes(*group)
            if sig is not None:
                if len(self._sizes) > 4096:
                    self._sizes.clear()
                self._sizes[sig] = nb
        return nb

    def _top_up(self, used: list[tuple[Hashable, Group]]) -> None:
        """Deal, in one background message, what brings each used signature back to
        ``ahead`` groups per use in this call; drop least recently used signatures to
        stay within the cap (lock held)."""
        uses = Counter(sig for sig, _ in used)
        first = {sig: group for sig, group in reversed(used)}
        todo: list[Group] = []
        planned = 0
        for sig, group in first.items():
            nb = self._size(sig, group)
            if nb < self.min_bytes:
                continue
            for _ in range(self.ahead * uses[sig] - len(self._ready.get(sig, ()))):
                if not self._make_room(planned + nb, keep=uses.keys()):
                    break
                todo.append(group)
                planned += nb
        if todo:
            self._enqueue(todo, _AHEAD)

    def _make_room(self, extra: int, keep: Any) -> bool:
        """Evict least recently used signatures (not in ``keep``) until ``extra`` more
        bytes fit; False when they cannot."""
        if extra > self.max_bytes:
            return False
        while self._bytes + extra > self.max_bytes:
            victim = next((s for s in self._ready if s not in keep), None)
            if victim is None:
                return False
            self._bytes -= sum(e.nbytes for e in self._ready.pop(victim))
        return True
