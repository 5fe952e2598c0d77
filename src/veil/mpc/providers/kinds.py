"""Kinds of dealer randomness and the local protocol steps that consume them (run on the nodes).

A *group* of correlated randomness (a Beaver triple, a truncation pair, ...) is a list of
:class:`Slot` tensors. Every party derives its share of every slot from its own PRG seed
(``prg(group_key(seed, gid, layout), gid)``); the dealer, who knows all seeds, computes the true value of
each *corrected* slot (``c = a * b``) and sends the last party a *delta* that fixes its
share. A group is used in one opening round:

1. ``reveal``: the party computes operands from its shares; the node masks each operand
   with the fresh share of one *opened* slot (``operand - mask``, or XOR) and answers it
   publicly. Opened slots are never corrected slots, and a group id is opened at most once
   per party, so each mask is a one-time pad.
2. ``finish``: with the combined openings (public), the party computes its shares of the
   result from the group's slots and the operands (all private).

Everything here is plain torch on int64 words (Z_2^64, or bit vectors for XOR sharing).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from veil.errors import InvalidRequest
from veil.mpc import ring

Domain = Literal["arith", "xor", "bit", "auth", "auth64"]
#: How a party's share of a value is held: ``arith`` (Z_2^64 words), ``xor`` (XOR-shared
#: words, or single bits in bit 0), ``auth`` (value and MAC in Z_2^128, (4, *shape) words),
#: ``auth64`` (a bit and its MAC in Z_2^64, (2, *shape) words). A node labels every share
#: it makes with its session and domain, and each kind names the domains it takes.
ShareDomain = Literal["arith", "xor", "auth", "auth64"]
Inputs = list[tuple[ShareDomain, tuple[int, ...]]]
Params = dict[str, Any]
_MAX63 = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Slot:
    """One tensor of a group: its shape, how it is shared (``arith``: sum mod 2^64;
    ``xor``: XOR of words; ``bit``: XOR of single bits; ``auth``: a value and its SPDZ2k MAC
    in Z_2^128, stored as (4, *shape) int64 words; ``auth64``: a bit and its MAC in Z_2^64,
    SPDZ2k with k = 1, stored as (2, *shape) words), and its role. The last party gets a
    delta for every corrected slot and for the MAC half of every authenticated slot."""

    name: str
    shape: tuple[int, ...]
    domain: Domain = "arith"
    opened: bool = False
    corrected: bool = False


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shape(p: Params, key: str) -> tuple[int, ...]:
    v = p.get(key)
    if (
        not isinstance(v, list | tuple)
        or len(v) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in v)
    ):
        raise InvalidRequest(f"parameter {key!r} must be a shape (a list of at most 8 sizes)")
    if math.prod(max(d, 1) for d in v) >= 2**62:  # empty, but torch cannot stride it
        raise InvalidRequest(f"parameter {key!r}: a shape of over 2^62 elements, empty or not")
    return tuple(v)


def _bool(p: Params, key: str) -> bool:
    v = p.get(key, False)
    if not isinstance(v, bool):
        raise InvalidRequest(f"parameter {key!r} must be true or false")
    return v


def _int(p: Params, key: str, lo: int, hi: int) -> int:
    v = p.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InvalidRequest(f"parameter {key!r} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def combine(domain: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """Reconstruct a value from its shares in ``domain`` (``r128``: 128-bit values)."""
    from veil.mpc.ring import r128

    out = parts[0]
    for p in parts[1:]:
        if domain in ("arith", "auth64"):
            out = out + p
        elif domain == "r128":
            out = r128.add(out, p)
        elif domain == "auth":  # value and MAC as one (2, 2, *s) 128-bit tensor
            pair = r128.add(out.view(2, 2, *out.shape[1:]).transpose(0, 1),
                            p.view(2, 2, *p.shape[1:]).transpose(0, 1))  # fmt: skip
            out = pair.transpose(0, 1).reshape(out.shape)
        else:
            out = out ^ p
    return out


def has_delta(s: Slot) -> bool:
    return s.corrected or s.domain in AUTH


#: The authenticated (MAC'd) domains.
AUTH = ("auth", "auth64")


def words(s: Slot) -> int:
    return numel(s.shape) * {"auth": 4, "auth64": 2}.get(s.domain, 1)


def full_shape(s: Slot) -> tuple[int, ...]:
    if s.domain in AUTH:
        return (4 if s.domain == "auth" else 2, *s.shape)
    return s.shape


class Kind(ABC):
    """A kind of group: its slots, the shares it takes and makes, the dealer's relation,
    and the two local steps."""

    name: ClassVar[str]

    @abstractmethod
    def slots(self, p: Params) -> list[Slot]: ...

    @abstractmethod
    def inputs(self, p: Params) -> Inputs:
        """The domain and exact shape of each share ``reveal`` takes (the node checks
        both before it computes anything)."""

    def outputs(self, p: Params) -> list[ShareDomain]:
        """The domain of each result share ``finish`` returns."""
        return ["arith"]

    def n_outputs(self, p: Params) -> int:
        """How many result shares ``finish`` returns."""
        return len(self.outputs(p))

    @abstractmethod
    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dealer: true values of the corrected slots from the true values of the others."""

    @abstractmethod
    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        """Operands to open, one per opened slot, in slot order (the node masks them)."""

    @abstractmethod
    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, torch.Tensor],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        """This party's shares of the results."""


#: Every kind of dealer randomness, by name (filled by the modules that define kinds).
KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add ``kind`` to :data:`KINDS`; a second kind of the same name is refused."""
    if kind.name in KINDS:
        raise ValueError(f"a kind of dealer randomness named {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: Any) -> Kind:
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise InvalidRequest(f"unknown kind of dealer randomness {name!r}; known: {sorted(KINDS)}")
    return kind


# ------------------------------------------------------------------ shares of a group


def group_key(seed: bytes, gid: int, slots: list[Slot]) -> bytes:
    """The PRG key of group ``gid`` *as this layout of slots*: a group id the dealer dealt
    for one kind (or shape) and a party then used as another gives unrelated randomness,
    so the dealer's delta for the first says nothing about the masks of the second."""
    layout = repr([(s.name, s.shape, s.domain, s.opened, s.corrected) for s in slots])
    h = hashlib.blake2b(digest_size=32, person=b"veil-mpc-group")
    h.update(seed)
    h.update(gid.to_bytes(8, "big", signed=True))
    h.update(layout.encode())
    return h.digest()


def party_slots(seed: bytes, gid: int, slots: list[Slot]) -> dict[str, torch.Tensor]:
    """One party's PRG shares of every slot of group ``gid`` (before any delta), from the
    group's own key (:func:`group_key`).

    Example:
        >>> a = [Slot("a", (2,)), Slot("b", (2,))]; b = [Slot("a", (4,))]
        >>> x, y = party_slots(bytes(32), 7, a), party_slots(bytes(32), 7, b)
        >>> bool((torch.cat([x["a"], x["b"]]) == y["a"]).all())
        False
    """
    out = {}
    parts = ring.prg_many(group_key(seed, gid, slots), gid, [words(s) for s in slots])
    for s, t in zip(slots, parts, strict=True):
        t = t.reshape(full_shape(s))
        out[s.name] = t & 1 if s.domain == "bit" else t
    return out


def mac_key(seed: bytes) -> torch.Tensor:
    """A party's share of the session's SPDZ2k MAC key (a 128-bit scalar, group 0)."""
    return ring.prg(seed, 0, 0, 2)


def mac_key64(seed: bytes) -> torch.Tensor:
    """A party's share of the session's MAC key for bits in Z_2^64 (``auth64``; a scalar)."""
    return ring.prg(seed, 0, 1, 1)[0]


def apply_delta(slots: list[Slot], values: dict[str, torch.Tensor], delta: torch.Tensor) -> None:
    """The last party: add the dealer's delta to its corrected slots (in slot order)."""
    corrected = [s for s in slots if has_delta(s)]
    need = sum(words(s) for s in corrected)
    if delta.dtype != torch.int64 or delta.numel() != need:
        raise InvalidRequest(f"dealer delta must hold {need} int64 values, got {delta.numel()}")
    off = 0
    flat = delta.reshape(-1)
    for s in corrected:
        k = words(s)
        d = flat[off : off + k].reshape(full_shape(s))
        off += k
        if s.domain in ("arith", "auth", "auth64"):
            values[s.name] = combine(s.domain, [values[s.name], d])
        else:
            values[s.name] = values[s.name] ^ d


def dealer_delta(
    kind: Kind, p: Params, slots: list[Slot], seeds: list[bytes], gid: int
) -> torch.Tensor:
    """Dealer: the last party's delta for group ``gid`` (flat int64; uniform to anyone
    without the last party's seed)."""
    from veil.mpc.ring import r128

    shares = [party_slots(s, gid, slots) for s in seeds]
    truth = {}
    for s in slots:
        if not s.corrected:
            v = combine(s.domain, [sh[s.name] for sh in shares])
            truth[s.name] = v[0:2] if s.domain == "auth" else v[0] if s.domain == "auth64" else v
    want = kind.relation(p, truth)
    alpha: torch.Tensor | None = None
    alpha64 = combine("arith", [mac_key64(sd) for sd in seeds])
    parts = []
    for s in slots:
        if not has_delta(s):
            continue
        have = combine(s.domain, [sh[s.name] for sh in shares])
        target = want[s.name] if s.corrected else truth[s.name]
        if s.domain == "auth":
            if alpha is None:
                alpha = combine("r128", [mac_key(sd) for sd in seeds])
            a = alpha.reshape(2, *([1] * len(s.shape)))
            mac = r128.product(a.expand(2, *s.shape).contiguous(), target, "mul")
            parts.append(
                torch.cat([r128.sub(target, have[0:2]), r128.sub(mac, have[2:4])]).reshape(-1)
            )
        elif s.domain == "auth64":
            parts.append(torch.stack([target - have[0], alpha64 * target - have[1]]).reshape(-1))
        elif s.domain == "arith":
            parts.append((target - have).reshape(-1))
        else:
            parts.append((target ^ have).reshape(-1))
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
