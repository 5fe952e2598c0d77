"""Running a stored plan on a node (the ``plans.run`` op) under the privacy rules and its approval.

Every op of a run on private data goes through the node's own op path
(:meth:`~veil.node.Node.run_op`), so every privacy rule applies to it exactly as to a
single op, and the objects the plan computes on the way are dropped at the end. A run on
public objects only is interpreted directly (:func:`_run_public`), with the node's size
checks. A run on private data needs an approved request of the caller's covering the plan's
hash, its dataset and enough runs; one that asked to release results also binds the inputs
(the reviewed dataset assets) and the state (its content as reviewed, then as the approved
runs left it), and labels each result with a digest of its content for the release policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied, RemoteError, VeilError
from veil.node.extension import OpContext
from veil.node.store import RequestRow
from veil.node.users import Session
from veil.ops import default_registry
from veil.plans import program
from veil.plans.state import (
    AUTHORIZERS,
    MAX_OPS_PER_MESSAGE,
    MAX_PUBLIC_SECONDS,
    MAX_RUNS,
    OUTPUT_LABEL,
    OUTPUTS,
    REQUESTS,
    RUNS,
    PlansState,
    Terms,
    terms,
)
from veil.serde.messages import (
    DictArg,
    Done,
    ListArg,
    ObjectInfo,
    Ref,
    Results,
    RunOp,
    SliceArg,
    TupleArg,
)
from veil.serde.modules import hollow_spec
from veil.serde.plans import PlanSpec
from veil.serde.tensors import dtype_name
from veil.serde.values import from_arg

#: Allowlisted ops that change a tensor's shape in place (a plan with one is size-checked
#: on every run: its later runs may make other sizes).
_RESHAPING = frozenset(
    f"Tensor.{n}" for n in ("t_", "squeeze_", "unsqueeze_", "transpose_", "swapaxes_", "swapdims_")
)


def _where(spec: PlanSpec, i: int) -> str:
    op = spec.ops[i]
    return f"plan {spec.name!r}, op {i} ({op.op}, traced at {op.line or '?'})"


def _bound(state: PlansState, ctx: OpContext, row: RequestRow, spec: PlanSpec,
           args: list[Any], values: list[Any]) -> str:  # fmt: skip
    """Why a release approval does not cover these inputs and state ('' if it does)."""
    frozen = state.frozen(row.id)
    t = terms(row)
    for slot, name, value in zip(spec.inputs, frozen.get("inputs", []), args):
        rec = ctx.record_of(value)
        private = rec is not None and rec.private
        if name and (rec is None or rec.id != state.node.asset_id(t.dataset, name)):
            return f"input {slot.name} must be the reviewed asset {name!r} of {t.dataset!r}"
        if not name and private:
            return f"input {slot.name} was reviewed as yours, not as private data"
    recs = [ctx.record_of(v) for v in values]
    held = [r for r in recs if r is not None]
    if (
        len(held) != len(recs)
        or [r.id for r in held] != frozen.get("state")
        or [state.node.content_digest(r) for r in held] != frozen.get("custody")
    ):
        return "the plan's state is not the reviewed state (or what the approved runs made of it)"
    return ""


def _approval(state: PlansState, ctx: OpContext, spec: PlanSpec, plan_hash: str, repeat: int,
              args: list[Any], values: list[Any]) -> RequestRow | None:  # fmt: skip
    """The approved request of the caller's a run on private data runs under; refuses a run
    none covers (None: no private data, or the owner's own run)."""
    private = [r for r in ctx.inputs if r.private]
    if not private or ctx.session.is_admin:
        return None
    sources = set().union(*(r.sources for r in private))
    why = []
    rows: list[tuple[RequestRow, Callable[[RequestRow], Terms]]] = [
        (row, terms) for row in state.node.requests_of("plan")
    ]
    for kind, read in AUTHORIZERS.items():
        rows += [(row, read) for row in state.node.requests_of(kind)]
    for row, read in rows:
        if (row.requester, row.status) != (ctx.session.user_id, "approved"):
            continue
        if row.kind == "plan" and row.subject != plan_hash:
            continue
        try:
            t = read(row)
        except (ValueError, KeyError):
            continue
        if row.kind != "plan" and t.release:
            continue  # other kinds release through their own policies
        if t.hash != plan_hash or not sources <= {t.dataset}:
            continue
        used = state.used(row.id)
        if used + repeat > t.runs:
            why.append(f"request {row.id}: {t.runs - used} of {t.runs} runs left")
            continue
        unbound = _bound(state, ctx, row, spec, args, values) if t.release else ""
        if unbound:
            why.append(f"request {row.id}: {unbound}")
            continue
        return row
    raise PermissionDenied(
        f"plan {spec.name!r} ({plan_hash[:12]}) may not run {repeat} time(s) on private data of "
        f"{', '.join(sorted(sources)) or 'this node'}: "
        f"{'; '.join(why) or 'no approved request of yours covers it'}. Ask the owner with "
        "plan.request(node, dataset=..., reason=..., runs=...)"
    )


def _check_state(spec: PlanSpec, values: list[Any]) -> None:
    if len(values) != len(spec.state):
        raise InvalidRequest(
            f"plan {spec.name!r} has {len(spec.state)} state slots, got {len(values)}"
        )
    for slot, v in zip(spec.state, values):
        if slot.kind == "module":
            ok = isinstance(v, torch.nn.Module) and hollow_spec(v) == slot.module
        elif slot.kind == "optimizer":
            ok = isinstance(v, torch.optim.Optimizer) and type(v).__name__ == slot.optimizer.cls  # type: ignore[union-attr]
        else:
            ok = (
                isinstance(v, torch.Tensor)
                and list(v.shape) == slot.shape
                and dtype_name(v.dtype) == slot.dtype
            )
        if not ok:
            raise InvalidRequest(
                f"plan {spec.name!r}: state {slot.name or slot.id} is not the {slot.kind} the plan "
                "was traced with (a plan runs with the model, tensors and optimizer it was built on)"
            )


def _remap(arg: Any, ids: dict[int, int]) -> Any:
    """An op argument with the plan's slots replaced by the node's object ids."""
    t = type(arg)
    if t is Ref:
        return Ref(ids[arg.id])
    if t is ListArg or t is TupleArg:
        return t([_remap(v, ids) for v in arg.items])
    if t is DictArg:
        return DictArg({k: _remap(v, ids) for k, v in arg.items.items()})
    if t is SliceArg:
        return SliceArg(*(_remap(v, ids) for v in (arg.start, arg.stop, arg.step)))
    return arg


def _bind(out: Any, reply: Any, ids: dict[int, int], op: str) -> None:
    if out is None:
        return
    if type(out) is Ref:
        if not isinstance(reply, ObjectInfo):
            raise InvalidRequest(f"plan op {op} did not give the object it was traced to give")
        ids[out.id] = reply.id
        return
    if not isinstance(reply, Results) or len(reply.items) != len(out.items):
        raise InvalidRequest(f"plan op {op} did not give the results it was traced to give")
    for o, r in zip(out.items, reply.items):
        _bind(o, r, ids, op)


def _reply(arg: Any, ids: dict[int, int], infos: dict[int, ObjectInfo]) -> Any:
    if arg is None:
        return None
    if type(arg) is Ref:
        return infos[ids[arg.id]]
    items = [_reply(v, ids, infos) for v in arg.items]
    return Results(items, "list" if type(arg) is ListArg else "")


def _infos(reply: Any) -> list[ObjectInfo]:
    if isinstance(reply, ObjectInfo):
        return [reply]
    if isinstance(reply, Results):
        return [i for item in reply.items if item is not None for i in _infos(item)]
    return []


def run_plan(ctx: OpContext, plan_hash: str, state: list[Any], args: list[Any],
             repeat: int = 1) -> Any:  # fmt: skip
    """``plans.run``: run stored plan ``plan_hash`` on the caller's ``state`` objects and
    ``args`` (pointers, or tensors sent with the call), ``repeat`` times; answers the
    plan's results as pointers (see the module docstring)."""
    node: Any = ctx.node
    st: PlansState = node.capability_state("plans")
    spec = st.program(str(plan_hash))
    if type(repeat) is not int or not 1 <= repeat <= MAX_RUNS:
        raise InvalidRequest(f"repeat must be an int between 1 and {MAX_RUNS}, got {repeat!r}")
    if repeat * max(len(spec.ops), 1) > MAX_OPS_PER_MESSAGE:
        raise InvalidRequest(
            f"{repeat} runs of plan {spec.name!r} ({len(spec.ops)} ops) are more than "
            f"{MAX_OPS_PER_MESSAGE} ops in one message; run it in several messages"
        )
    try:
        program.check_inputs(spec, args)
    except TypeError as exc:
        raise InvalidRequest(str(exc)) from None
    _check_state(spec, state)
    approval = _approval(st, ctx, spec, plan_hash, repeat, args, state)
    session = ctx.session
    if not any(r.private for r in ctx.inputs) and not node.tainted_late(session.user_id):
        return _run_public(node, session, spec, plan_hash, ctx, state, args, repeat)
    base: dict[int, int] = {}
    for slot, value in zip([*spec.inputs, *spec.state], [*args, *state]):
        rec = ctx.record_of(value)
        if rec is None:  # a tensor sent with the call
            if not isinstance(value, torch.Tensor):
                raise InvalidRequest(f"plan input {slot.name} must be a tensor or a pointer")
            rec = node.store_value(session, value)
        elif slot in spec.inputs and rec.kind != "tensor":
            raise InvalidRequest(f"plan input {slot.name} must be a tensor")
        base[slot.id] = rec.id
    keep = set(base.values())
    made: list[int] = []
    infos: dict[int, ObjectInfo] = {}
    node.write_audit(session, "plan.run", f"{spec.name[:80]} {plan_hash[:16]} x{repeat}")
    st._running = approval is not None  # review-only nodes: its ops may touch private data
    try:
        for run in range(repeat):
            ids = dict(base)
            for i, op in enumerate(spec.ops):
                msg = RunOp(op.op, [_remap(a, ids) for a in op.args],
                            {k: _remap(v, ids) for k, v in op.kwargs.items()})  # fmt: skip
                try:
                    reply = node.run_op(session, msg)
                except VeilError as exc:
                    raise type(exc)(f"{_where(spec, i)}: {exc}") from None
                _bind(op.out, reply, ids, op.op)
                for leaf in _infos(reply):
                    infos[leaf.id] = leaf
                    if leaf.id not in keep:
                        made.append(leaf.id)
            if run < repeat - 1:
                node.release(session, list(dict.fromkeys(made)))
                made.clear()
        returned = {ids[s] for s in program.refs(spec.outputs)}
        for oid in returned:  # inputs and state returned as they are now
            if oid not in infos:
                infos[oid] = node.info_of(node.record_by_id(oid))
        node.release(session, [oid for oid in dict.fromkeys(made) if oid not in returned])
        if approval is not None:
            _account(st, approval, repeat, returned, [node.record_by_id(base[s.id])
                                                      for s in spec.state])  # fmt: skip
    except BaseException:
        node.release(session, list(dict.fromkeys(made)))
        raise
    finally:
        st._running = False
    reply = _reply(spec.outputs, ids, infos)
    return Done() if reply is None else reply


def _account(state: PlansState, approval: RequestRow, repeat: int, returned: set[int],
             held: list[Any]) -> None:  # fmt: skip
    """After a successful approved run: count its runs; for a release approval, record the
    state's new content (the next run starts from it) and label the results it releases."""
    node = state.node
    node.put_row(str(approval.id), RUNS, {"used": state.used(approval.id) + repeat})
    t = terms(approval)
    if not t.release:
        return
    frozen = state.frozen(approval.id)
    frozen["custody"] = [node.content_digest(r) for r in held]
    node.put_row(str(approval.id), REQUESTS, frozen)
    for oid in returned:
        rec = node.record_by_id(oid)
        if rec is not None and rec.private and rec.sources <= {t.dataset} and not rec.error:
            node.set_label(rec, f"{OUTPUT_LABEL}{approval.id}")
            node.put_row(str(rec.id), OUTPUTS, {
                "request": approval.id, "digest": node.content_digest(rec),
            })  # fmt: skip


def _run_public(node: Any, session: Session, spec: PlanSpec, plan_hash: str, ctx: OpContext,
                state: list[Any], args: list[Any], repeat: int) -> Any:  # fmt: skip
    """A run on public objects only (none private, none written with private data since it
    was made): no privacy rule applies, so its ops run directly on the objects' values with
    the node's size check before each: on the first two runs (later ones make the same sizes:
    a plan's shapes follow from its inputs' and state's, which after those runs hold their
    gradients and optimizer moments), and on every run for ops whose result's size depends
    on values, and for all ops when one reshapes a tensor in place. A run holds the node for
    at most :data:`MAX_PUBLIC_SECONDS`. The values computed on the way are never stored,
    only the results, and the inputs and state are stored again (a training step wrote them)."""
    values: dict[int, Any] = {}
    recs = []
    for slot, value in zip([*spec.inputs, *spec.state], [*args, *state]):
        values[slot.id] = value
        rec = ctx.record_of(value)
        if rec is not None:
            recs.append(rec)
    node.write_audit(session, "plan.run", f"{spec.name[:80]} {plan_hash[:16]} x{repeat}")
    reg = default_registry().specs
    every = any(op.op in _RESHAPING for op in spec.ops)
    by_value = [reg[op.op].facts is not None and (reg[op.op].facts.value_size is not None  # type: ignore[union-attr]
                or reg[op.op].facts.shape_values is not None) for op in spec.ops]  # type: ignore[union-attr]  # fmt: skip
    deadline = time.monotonic() + MAX_PUBLIC_SECONDS
    current = values
    with torch.enable_grad():
        for run in range(repeat):
            checking = run < 2 or every
            current = dict(values)
            get = current.__getitem__
            for i, op in enumerate(spec.ops):
                opspec = reg[op.op]
                try:
                    op_args = [from_arg(a, get) for a in op.args]
                    op_kwargs = {k: from_arg(v, get) for k, v in op.kwargs.items()}
                    if checking or by_value[i]:
                        node.check_size(opspec, op_args, op_kwargs)
                    result = opspec.fn(*op_args, **op_kwargs)
                    program.bind(op.out, result, current)
                except VeilError as exc:
                    raise type(exc)(f"{_where(spec, i)}: {exc}") from None
                except Exception as exc:
                    raise RemoteError(
                        f"{_where(spec, i)} failed on node {node.name!r}: "
                        f"{type(exc).__name__}: {str(exc)[:2000]}"
                    ) from None
            if time.monotonic() > deadline and run < repeat - 1:
                raise InvalidRequest(
                    f"plan {spec.name!r} ran {run + 1} of {repeat} runs in the "
                    f"{MAX_PUBLIC_SECONDS:.0f} s one message may hold node {node.name!r}; "
                    "run it with fewer repeats per message"
                )
    node.wrote(recs)
    kept = {id(r.value): r for r in recs}

    def reply(arg: Any) -> Any:
        if arg is None:
            return None
        if type(arg) is Ref:
            value = current[arg.id]
            rec = kept.get(id(value))
            if rec is None:
                rec = node.store_value(session, value)
                kept[id(value)] = rec
            return node.info_of(rec)
        return Results([reply(v) for v in arg.items], "list" if type(arg) is ListArg else "")

    out = reply(spec.outputs)
    return Done() if out is None else out


__all__ = ["run_plan"]
