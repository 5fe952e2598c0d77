"""Node ops of a protocol round: open (mask operands with the group's slots), finish (new
private shares from the public openings), step (both in one message), and the two
authenticated-share ops that need the party's MAC key share."""

from __future__ import annotations

from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc.messages import FinishItem, OpenItem
from veil.mpc.node import local_ops
from veil.mpc.node.approvals import party
from veil.mpc.node.state import (
    MAX_PENDING,
    Pending,
    check_share,
    share_label,
    state_of,
)
from veil.mpc.node.typed import describe
from veil.mpc.providers import kinds
from veil.mpc.providers.kinds import ShareDomain, Slot, numel
from veil.mpc.ring import mac as spdz
from veil.node.extension import OpContext
from veil.serde.messages import Reply

# ------------------------------------------------------------------------ party steps


def group(
    name: str, params: dict[str, Any], where: str
) -> tuple[kinds.Kind, dict[str, Any], list[Slot]]:
    """A kind of dealer randomness, its params and its slots, checked (``where`` names the
    position in the message)."""
    if name not in kinds.KINDS:  # the types were checked as the message was decoded
        raise InvalidRequest(f"{where}.kind: unknown kind of dealer randomness {name[:80]!r}; "
                             f"known: {sorted(kinds.KINDS)}")  # fmt: skip
    kind = kinds.KINDS[name]
    try:
        return kind, params, kind.slots(params)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}.params: {exc}") from None


def _apply_delta(slots: list[Slot], masks: dict[str, torch.Tensor], delta: torch.Tensor | None,
                 where: str) -> None:  # fmt: skip
    """The last party: add the dealer's delta (relayed by the driver) to its slots."""
    if delta is None:
        raise InvalidRequest(f"{where}: the last party needs the dealer's delta (an int64 tensor)")
    try:
        kinds.apply_delta(slots, masks, delta)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc}") from None


#: Results of a step's finish fed to its opening, by identity: (domain, session id).
Own = dict[int, tuple[ShareDomain, str]]


def _inputs(ctx: OpContext, sid: str, kind: kinds.Kind, params: dict[str, Any], inputs: Any,
            where: str, own: Own | None = None) -> list[torch.Tensor]:  # fmt: skip
    """The shares a kind takes, checked: their count, dtype and exact shapes, and that each
    is a share of this session's right domain (a labelled object, or a result of this
    step's finish)."""
    want = kind.inputs(params)
    if not isinstance(inputs, list) or len(inputs) != len(want):
        raise InvalidRequest(f"{where}: {kind.name} takes {len(want)} shares, in a list")
    for j, (t, (domain, shape)) in enumerate(zip(inputs, want, strict=True)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != shape:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else describe(t)
            raise InvalidRequest(f"{where}.{j}: {kind.name} takes an int64 share of shape "
                                 f"{shape} here, got {got}")  # fmt: skip
        mine = (own or {}).get(id(t))
        if mine is None:
            check_share(ctx, t, sid, domain, f"{where}.{j}")
        elif mine != (domain, sid):
            raise PermissionDenied(f"{where}.{j}: {kind.name} takes a {domain} share here, and "
                                   f"this step's result is a {mine[0]} share")  # fmt: skip
    return inputs


def op_open(ctx: OpContext, sid: str, items: list[OpenItem]) -> Reply:
    """Party: for each item ``{gid, kind, params, inputs, delta}`` derive the group's
    slots, compute the operands from ``inputs`` (this user's shares of this session) and
    answer them masked with the opened slots, all concatenated (int64, public)."""
    return ctx.value(_open(ctx, sid, items))


def _open(ctx: OpContext, sid: str, items: list[OpenItem], own: Own | None = None) -> torch.Tensor:
    st = state_of(ctx.node)
    sess = party(ctx, sid)
    if not items:
        raise InvalidRequest("open needs a non-empty list of items")
    out: list[torch.Tensor] = []
    staged: list[tuple[int, Pending]] = []
    total = 0
    for k, it in enumerate(items):
        gid = it.gid
        if gid in sess.used or any(g == gid for g, _ in staged):
            raise PermissionDenied(
                f"dealer randomness {gid} was already opened on node {ctx.node.name!r}: a mask "
                "is used once (reusing it would unmask a share)"
            )
        kind, params, slots = group(it.kind, it.params, f"items.{k}")
        total += sum(numel(s.shape) for s in slots)
        ctx.check_elements(total)
        ins = _inputs(ctx, sid, kind, params, it.inputs, f"items.{k}.inputs", own)
        masks = kinds.party_slots(sess.dealer_seed, gid, slots)
        if sess.index == sess.n - 1 and any(kinds.has_delta(s) for s in slots):
            _apply_delta(slots, masks, it.delta, f"items.{k}.delta")
        if any(s.domain in kinds.AUTH for s in slots):
            masks["__alpha"] = kinds.mac_key(sess.dealer_seed)
            masks["__alpha64"] = kinds.mac_key64(sess.dealer_seed)
            params = {**params, "__alpha": masks["__alpha"], "__alpha64": masks["__alpha64"]}
        operands = kind.reveal(params, ins, sess.index)
        opened = [s for s in slots if s.opened]
        macs = []
        for s, v in zip(opened, operands, strict=True):
            if tuple(v.shape) != kinds.full_shape(s):
                raise InvalidRequest(
                    f"{kind.name}: operand of shape {tuple(v.shape)}, expected {kinds.full_shape(s)}"
                )
            m = masks[s.name]
            if s.domain == "auth":  # reveal the value half; keep the MAC share for the check
                masked = spdz.r128.sub(v[0:2], m[0:2])
                macs.append(spdz.r128.sub(v[2:4], m[2:4]))
            elif s.domain == "auth64":
                masked = v[0] - m[0]
                macs.append(v[1] - m[1])
            elif s.domain == "arith":
                masked = v - m
            else:
                masked = (v & 1) ^ m if s.domain == "bit" else v ^ m
            out.append(masked.reshape(-1))
        staged.append((gid, Pending(kind, params, slots, masks, ins, macs)))
    for gid, p in staged:  # commit only when every item was valid
        sess.used.add(gid)
        st.pending[(ctx.session.user_id, sid, gid)] = p
    while len(st.pending) > MAX_PENDING:
        st.pending.pop(next(iter(st.pending)))
    return torch.cat(out)


def _opened(s: Slot) -> tuple[int, ...]:
    """The shape of an opening of slot ``s`` (the value half of an ``auth`` slot)."""
    return (2, *s.shape) if s.domain == "auth" else s.shape


def op_finish(ctx: OpContext, sid: str, items: list[FinishItem]) -> Reply:
    """Party: for each item ``{gid, opened: [public tensors]}`` compute this party's
    shares of the results; answers them as new private objects (a flat list; in malicious
    mode each group's public MAC check share follows its results)."""
    return ctx.results([info for info, _, _ in _finish(ctx, sid, items)])


def op_step(ctx: OpContext, sid: str, finish: list[FinishItem], open_: list[OpenItem]) -> Reply:
    """Party: ``finish`` one round and ``open`` the next in one message. Inputs of the
    open items may be ``["out", k]``: the k-th result of this finish. The finish's results
    feed this opening only and are not stored (semi-honest groups only). Answers (int64,
    public): the number of stored results (0), then the masked values of the opening."""
    done = _finish(ctx, sid, finish, store=False)
    own: Own = {}
    for k, it in enumerate(open_):
        ins = it.inputs
        for j, v in enumerate(ins):
            if isinstance(v, list) and len(v) == 2 and v[0] == "out":
                r = v[1]
                if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < len(done):
                    raise InvalidRequest(
                        f"open_.{k}.inputs.{j}: no result {r!r} of this step's finish"
                    )
                ins[j] = done[r][1]
                own[id(ins[j])] = (done[r][2], sid)
    masked = _open(ctx, sid, open_, own)
    return ctx.value(torch.cat([torch.zeros(1, dtype=torch.int64), masked]))


def _finish(ctx: OpContext, sid: str, items: list[FinishItem], *,
            store: bool = True) -> list[tuple[Any, torch.Tensor, ShareDomain]]:  # fmt: skip
    """Finish opened groups: every item is checked first, so a malformed message finishes
    nothing and leaves its groups pending. Returns (stored object or None, tensor, domain)
    for each result."""
    st = state_of(ctx.node)
    sess = party(ctx, sid)
    if not items:
        raise InvalidRequest("finish needs a non-empty list of items")
    todo: list[tuple[tuple[int, str, int], Pending, list[torch.Tensor], list[Any], Any]] = []
    for k, it in enumerate(items):
        gid = it.gid
        key = (ctx.session.user_id, sid, gid)
        pend = st.pending.get(key)
        if pend is None or any(key == t[0] for t in todo):
            raise InvalidRequest(f"no opened group {gid!r} to finish on node {ctx.node.name!r}")
        if pend.macs and not store:
            raise InvalidRequest("authenticated groups finish with mpc.finish (their MAC check)")
        opened = it.opened
        want = [s for s in pend.slots if s.opened]
        if len(opened) != len(want) or not all(
            t.dtype == torch.int64 and tuple(t.shape) == _opened(s)
            for t, s in zip(opened, want, strict=False)
        ):
            raise InvalidRequest(
                f"items.{k}.opened: {pend.kind.name} needs {len(want)} int64 openings of shapes "
                f"{[_opened(s) for s in want]}"
            )
        extra = it.extra
        if not all(t.dtype == torch.int64 for t in extra):
            raise InvalidRequest(f"items.{k}.extra must be a list of int64 tensors")
        rho = it.rho
        if pend.macs:
            if rho is None or len(rho) != len(opened):
                raise InvalidRequest(f"items.{k}.rho: a MAC check needs one coefficient tensor "
                                     "per opening")  # fmt: skip
            for j, (r, y) in enumerate(zip(rho, opened, strict=True)):
                if r.dtype != torch.int64 or (
                    tuple(r.shape) != tuple(y.shape[1:] if want[j].domain == "auth" else y.shape)
                ):
                    raise InvalidRequest(f"items.{k}.rho.{j}: an int64 tensor shaped like the "
                                         "opened value")  # fmt: skip
        todo.append((key, pend, opened, extra, rho))
    results: list[tuple[Any, torch.Tensor, ShareDomain]] = []
    for key, pend, opened, extra, rho in todo:
        del st.pending[key]
        if pend.macs:
            pend.masks["__extra"] = extra  # type: ignore[assignment]
        outs = pend.kind.finish(pend.params, opened, pend.masks, pend.inputs, sess.index, sess.n)
        domains = pend.kind.outputs(pend.params)
        for o, domain in zip(outs, domains, strict=True):
            info = (
                ctx.new(o.contiguous(), private=True, label=share_label(sid, domain))
                if store
                else None
            )
            results.append((info, o, domain))
        if pend.macs:  # SPDZ2k check share: sum rho * (mac(y) - alpha_i y), public
            if any(s.domain == "auth64" for s in pend.slots if s.opened):
                z = spdz.check_share64(pend.masks["__alpha64"], pend.macs, opened, rho)
            else:
                z = spdz.check_share(pend.masks["__alpha"], pend.macs, opened, rho)
            results.append((ctx.new(z, private=False), z, "arith"))
    return results


# ------------------------------------------------------------------------ authenticated shares


def op_add_public(ctx: OpContext, sid: str, x: torch.Tensor, c: torch.Tensor) -> Reply:
    """Malicious mode: add the public 128-bit value ``c`` (shape (2, *shape)) to the
    authenticated share ``x`` (party 0 adds to the value; every party adds alpha_i c to
    its MAC share)."""
    sess = party(ctx, sid)
    local_ops.check_auth("mpc.a128.add_public", x=x)
    check_share(ctx, x, sid, "auth", "x")
    if c.dtype != torch.int64 or tuple(c.shape) != (2, *x.shape[1:]):
        raise InvalidRequest(
            f"mpc.a128.add_public: argument 'c' must be a public 128-bit value of the share's "
            f"shape, int64 {(2, *x.shape[1:])}; got {c.dtype} {tuple(c.shape)}"
        )
    share = spdz.add(x, spdz.const(c, kinds.mac_key(sess.dealer_seed), sess.index))
    return ctx.new(share, private=True, label=share_label(sid, "auth"))


def op_check_value(ctx: OpContext, sid: str, x: torch.Tensor, y: torch.Tensor,
                   rho: torch.Tensor) -> Reply:  # fmt: skip
    """Malicious mode: this party's MAC check share for a value ``y`` the caller
    reconstructed from shares it may read (it reveals nothing the caller does not hold)."""
    sess = party(ctx, sid)
    local_ops.check_auth("mpc.a128.check", x=x)
    check_share(ctx, x, sid, "auth", "x")
    for rec in ctx.inputs:
        ctx.node.check_readable(ctx.session, rec)
    if y.dtype != torch.int64 or tuple(y.shape) != (2, *x.shape[1:]):
        raise InvalidRequest("mpc.a128.check: argument 'y' must be the reconstructed 128-bit "
                             f"value, int64 {(2, *x.shape[1:])}")  # fmt: skip
    try:
        z = spdz.check_share(kinds.mac_key(sess.dealer_seed), [x[2:4]], [y], [rho])
    except InvalidRequest as exc:
        raise InvalidRequest(f"mpc.a128.check: argument 'rho': {exc}") from None
    return ctx.new(z, private=False)
