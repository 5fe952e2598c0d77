"""One protocol round as the driver runs it: open every group on every party (one message
each), combine the openings, finish; rounds that feed each other as a chain of ``mpc.step``
messages; and the MAC check of malicious mode. :class:`~veil.mpc.MPCSession` has these as
methods (:class:`Rounds`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from veil.errors import MACCheckFailed, ProtocolError, RemoteError
from veil.mpc.providers import kinds
from veil.mpc.providers.kinds import numel
from veil.mpc.providers.remote import reply_tensor
from veil.mpc.ring import prg
from veil.mpc.stats import record as record_stats
from veil.pointers import PointerTensor
from veil.serde.messages import Results


def deviation(authenticated: bool, message: str) -> Exception:
    """The error for a party whose answer breaks the protocol's form (a wrong count, shape
    or dtype): :class:`MACCheckFailed` in malicious mode, where answers are checked,
    else :class:`ProtocolError`."""
    if authenticated:
        return MACCheckFailed(
            f"{message}: a party deviated from the protocol; the result was discarded. "
            "Re-run with parties you trust"
        )
    return ProtocolError(f"{message}; check that every party runs the same veil version")


def _work(requests: list[Request]) -> int:
    """Multiply-accumulates of the matrix products and convolutions among ``requests``: what
    decides whether in-process parties compute in threads (:meth:`MPCSession.fanout`).
    Elementwise work counts 0: it is memory-bound, and one thread does it faster than two
    (2 parties in-process, Beaver mul of 10^5 to 10^6 elements: 10-20% faster serial)."""
    total = 0
    for r in requests:
        if r.kind not in ("beaver", "m_beaver") or r.params.get("op") not in ("matmul", "conv2d"):
            continue
        shapes = {s.name: s.shape for s in r.slots}
        a, b, c = shapes["a"], shapes["b"], shapes["c"]
        inner = a[-1] if r.params["op"] == "matmul" else numel(b[1:])
        total += numel(c) * inner
    return total


def _opened_words(r: Request) -> int:
    """Words a party sends back to open ``r`` (its reply's size, less a small header)."""
    return sum(numel(s.shape) for s in r.slots if s.opened)


def checked(t: Any, shape: tuple[int, ...], what: str, authenticated: bool) -> torch.Tensor:
    """``t`` if it is an int64 tensor of exactly ``shape``, else :func:`deviation`."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != shape:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise deviation(authenticated, f"{what}: expected int64 {shape}, got {got}")
    return t


@dataclass
class Request:
    """One group to open in a round: its kind, params, and each party's input pointers."""

    kind: str
    params: dict[str, Any]
    inputs: list[list[Any]]  # [party][input]: PointerTensor, or ("out", j) in chain()
    dealt: tuple[int, torch.Tensor] | None = None
    slots: list[kinds.Slot] = field(default_factory=list)


class Rounds:
    """The rounds of a session; needs ``parties``, ``n``, ``sid``, ``labels``, ``fanout``,
    ``deal`` and ``call`` from :class:`~veil.mpc.MPCSession`."""

    parties: list[Any]
    n: int
    sid: str
    labels: list[str]
    fanout: Callable[..., Any]
    deal: Callable[..., Any]
    call: Callable[..., Any]

    def round(self, requests: list[Request],
              extra: Callable[[list[list[torch.Tensor]]], list[list[torch.Tensor]]] | None = None,
              ) -> list[list[list[PointerTensor]]]:  # fmt: skip
        """Open every request's group on every party (one message per party), combine the
        openings, and finish: returns, per request, per output, each party's share.

        ``extra(openings)`` may add public values to each request's finish (the masked
        inputs of ``m_input``). Groups of authenticated (``malicious``) kinds are followed
        by the MAC check of their openings; a failed check raises :class:`MACCheckFailed`.
        """
        undealt = [r for r in requests if r.dealt is None]
        if undealt:
            for r, d in zip(undealt, self.deal([(r.kind, r.params) for r in undealt]), strict=True):
                r.dealt = d
        for r in requests:
            r.slots = kinds.get_kind(r.kind).slots(r.params)
        last = self.n - 1

        def open_on(i: int) -> torch.Tensor:
            items = []
            for r in requests:
                assert r.dealt is not None
                item: dict[str, Any] = {"gid": r.dealt[0], "kind": r.kind, "params": r.params,
                                        "inputs": r.inputs[i]}  # fmt: skip
                if i == last and any(kinds.has_delta(s) for s in r.slots):
                    item["delta"] = r.dealt[1]
                items.append(item)
            out = reply_tensor(self.call(self.parties[i], "mpc.open", self.sid, items,
                                         expect_bytes=8 * size))  # fmt: skip
            record_stats(self.labels[i], out.numel() * 8)
            return out

        authed = [any(s.domain in kinds.AUTH for s in r.slots) for r in requests]
        any_auth = any(authed)
        size = sum(numel(_opened_shape(s)) for r in requests for s in r.slots if s.opened)
        work = _work(requests)
        flats = [
            checked(f, (size,), f"the openings of party {i}", any_auth)
            for i, f in enumerate(self.fanout(open_on, range(self.n), work=work))
        ]
        opened_per_req: list[list[torch.Tensor]] = []
        off = 0
        for r in requests:
            vals = []
            for s in r.slots:
                if not s.opened:
                    continue
                shape = _opened_shape(s)
                k = numel(shape)
                parts = [f[off : off + k].reshape(shape) for f in flats]
                off += k
                dom = {"arith": "arith", "auth": "r128", "auth64": "arith"}.get(s.domain, "xor")
                vals.append(kinds.combine(dom, parts))
            opened_per_req.append(vals)
        extras = extra(opened_per_req) if extra is not None else [[] for _ in requests]
        rhos = [
            [prg(os.urandom(32), 0, 0, numel(s.shape)).reshape(s.shape) for s in r.slots if s.opened]
            if a else None
            for r, a in zip(requests, authed, strict=True)
        ]  # fmt: skip

        def finish_on(i: int) -> list[PointerTensor]:
            items = []
            for r, o, ex, rho in zip(requests, opened_per_req, extras, rhos, strict=True):
                item: dict[str, Any] = {"gid": r.dealt[0] if r.dealt else 0, "opened": o}
                if ex:
                    item["extra"] = ex
                if rho is not None:
                    item["rho"] = rho
                items.append(item)
            reply = self.call(self.parties[i], "mpc.finish", self.sid, items)
            if not isinstance(reply, Results):
                raise RemoteError(f"unexpected reply to finish: {type(reply).__name__}")
            return [PointerTensor(self.parties[i], info) for info in reply.items]  # type: ignore[arg-type]

        per_party = self.fanout(finish_on, range(self.n), work=work)
        sizes = [kinds.get_kind(r.kind).n_outputs(r.params) for r in requests]
        want = sum(sizes) + sum(authed)
        for i, results in enumerate(per_party):
            if len(results) != want:
                raise deviation(any_auth, f"party {i} finished with {len(results)} results, "
                                          f"expected {want}")  # fmt: skip
        out: list[list[list[PointerTensor]]] = []
        pos = 0
        checks: list[list[PointerTensor]] = []
        check_shapes: list[tuple[int, ...]] = []
        for r, size, a in zip(requests, sizes, authed, strict=True):
            out.append([[per_party[i][pos + j] for i in range(self.n)] for j in range(size)])
            pos += size
            if a:
                checks.append([per_party[i][pos] for i in range(self.n)])
                check_shapes.append((1,) if any(s.domain == "auth64" for s in r.slots
                                                if s.opened) else (2,))  # fmt: skip
                pos += 1
        if checks:
            self.verify(checks, check_shapes)
        return out

    def chain(self, requests: list[Request]) -> list[list[PointerTensor]]:
        """Rounds that feed each other, one message per party per round: each message
        finishes one round and opens the next (``mpc.step``). Request k's inputs may be
        ``("out", j)``: the j-th result of request k-1 on the same party. Semi-honest kinds
        only. Returns the last request's results (per output, each party's share)."""
        for r in requests:
            r.slots = kinds.get_kind(r.kind).slots(r.params)
            if any(s.domain in kinds.AUTH for s in r.slots):
                raise ValueError("chain() runs semi-honest kinds only")
        undealt = [r for r in requests if r.dealt is None]
        if undealt:
            for r, d in zip(undealt, self.deal([(r.kind, r.params) for r in undealt]), strict=True):
                r.dealt = d
        last = self.n - 1

        def item(r: Request, i: int) -> dict[str, Any]:
            assert r.dealt is not None
            ins = [list(x) if isinstance(x, tuple) else x for x in r.inputs[i]]
            it: dict[str, Any] = {
                "gid": r.dealt[0],
                "kind": r.kind,
                "params": r.params,
                "inputs": ins,
            }
            if i == last and any(kinds.has_delta(s) for s in r.slots):
                it["delta"] = r.dealt[1]
            return it

        def combine_open(r: Request, flats: list[torch.Tensor]) -> list[torch.Tensor]:
            size = sum(numel(s.shape) for s in r.slots if s.opened)
            flats = [checked(f, (size,), f"the openings of party {i}", False)
                     for i, f in enumerate(flats)]  # fmt: skip
            vals, off = [], 0
            for s in r.slots:
                if s.opened:
                    k = numel(s.shape)
                    parts = [f[off : off + k].reshape(s.shape) for f in flats]
                    off += k
                    vals.append(kinds.combine("arith" if s.domain == "arith" else "xor", parts))
            return vals

        def first(i: int) -> torch.Tensor:
            out = reply_tensor(
                self.call(
                    self.parties[i],
                    "mpc.open",
                    self.sid,
                    [item(requests[0], i)],
                    expect_bytes=8 * _opened_words(requests[0]),
                )  # fmt: skip
            )
            record_stats(self.labels[i], out.numel() * 8)
            return out

        opened = combine_open(
            requests[0], self.fanout(first, range(self.n), work=_work(requests[:1]))
        )
        for k in range(1, len(requests)):
            prev, cur = requests[k - 1], requests[k]
            fin = {"gid": prev.dealt[0] if prev.dealt else 0, "opened": opened}

            def step(i: int, fin: dict[str, Any] = fin, cur: Request = cur) -> torch.Tensor:
                reply = reply_tensor(
                    self.call(
                        self.parties[i],
                        "mpc.step",
                        self.sid,
                        [fin],
                        [item(cur, i)],
                        expect_bytes=8 * _opened_words(cur),
                    )  # fmt: skip
                )
                if reply.dim() != 1 or reply.numel() < 1 or int(reply[0]) != 0:
                    raise deviation(False, f"party {i} answered a step in another form")
                record_stats(self.labels[i], (reply.numel() - 1) * 8)
                return reply[1:]  # after the count of stored results (0)

            opened = combine_open(cur, self.fanout(step, range(self.n), work=_work([prev, cur])))
        fin = {"gid": requests[-1].dealt[0] if requests[-1].dealt else 0, "opened": opened}

        def final(i: int) -> list[PointerTensor]:
            reply = self.call(self.parties[i], "mpc.finish", self.sid, [fin])
            if not isinstance(reply, Results):
                raise RemoteError(f"unexpected reply to finish: {type(reply).__name__}")
            return [PointerTensor(self.parties[i], info) for info in reply.items]  # type: ignore[arg-type]

        per_party = self.fanout(final, range(self.n), work=_work(requests[-1:]))
        size = kinds.get_kind(requests[-1].kind).n_outputs(requests[-1].params)
        for i, results in enumerate(per_party):
            if len(results) != size:
                raise deviation(False, f"party {i} finished with {len(results)} results, "
                                       f"expected {size}")  # fmt: skip
        return [[per_party[i][j] for i in range(self.n)] for j in range(size)]

    def verify(self, checks: list[list[PointerTensor]], shapes: list[tuple[int, ...]]) -> None:
        """Sum each check's public z_i over the parties: all must be 0 (mod 2^128 for
        values, shape (2,); mod 2^64 for ``auth64`` bits, shape (1,)). Every party's z_i
        must have exactly that shape: an empty or broadcastable one would make the sum
        vanish whatever the others hold."""
        zs = self.fanout(lambda i: [c[i].get() for c in checks], range(self.n))
        for label in self.labels[:-1]:
            record_stats(label, 16 * len(checks), rounds=0)
        for j, shape in enumerate(shapes):
            parts = [checked(zs[i][j], shape, f"party {i}'s MAC check share", True)
                     for i in range(self.n)]  # fmt: skip
            total = kinds.combine("r128" if shape == (2,) else "arith", parts)
            if bool((total != 0).any()):
                raise MACCheckFailed(
                    "a MAC check failed after an opening: some party altered a share or a "
                    "message; the result was discarded. Re-run with parties you trust"
                )


def _opened_shape(s: kinds.Slot) -> tuple[int, ...]:
    """The shape of one party's opening of slot ``s`` (a value half for ``auth``)."""
    return (2, *s.shape) if s.domain == "auth" else s.shape
