"""The plans capability on a node: storing plans, running them under the privacy rules, owner review.

A node stores a plan by its content hash after checking it (:func:`veil.plans.program.check`).
``plans.run`` runs a stored plan on the caller's objects in one message: each op goes
through the node's own op path (:meth:`~veil.node.Node.run_op`), so every privacy rule
applies to it exactly as to a single op (results of private data are private, failures on
private values are withheld, sizes are checked, DP tracks sensitivity, ops on datasets
are audited), and the objects the plan computes on the way are dropped at the end.

A plan whose inputs or state include private data runs only under an approved request of
kind ``"plan"`` of the caller's (the capability seam's request kinds): the approval binds
to the plan's hash, one dataset and a number of runs, counted on the node. The owner
reviews the plan as code, its result on the dataset's mock data, and what it could
release: nothing by itself (its results stay private on the node).
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import torch

from veil.errors import InvalidRequest, ObjectNotFound, PermissionDenied, RemoteError, VeilError
from veil.node import capability
from veil.node.capability import (
    Capability,
    CapabilityState,
    Method,
    ReleasePolicy,
    RequestKind,
)
from veil.node.extension import OpContext
from veil.node.store import RequestRow
from veil.node.users import Session
from veil.ops import OpFacts, OpSpec, default_registry
from veil.plans import program, text
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
from veil.serde.plans import (
    AskPlan,
    ListPlans,
    PlanReviewInfo,
    PlanReviews,
    PlanSettings,
    PlanSpec,
    PlanStored,
    ShowPlan,
    StorePlan,
    check_version,
    decode_plan,
    program_hash,
)
from veil.serde.tensors import dtype_name
from veil.serde.values import from_arg

#: Most runs one approval may grant, and one message may ask for.
MAX_RUNS = 1_000_000
#: Most ops one message may run (runs x ops): a plan holds the node for one message.
MAX_OPS_PER_MESSAGE = 10_000_000
#: Mock runs for a review read at most this many elements of mock data.
MAX_MOCK_ELEMENTS = 50_000_000


class PlansState(CapabilityState):
    """The plans a node holds (by hash, decoded once) and the runs used per approval."""

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self._programs: dict[str, PlanSpec] = {}
        self._running = False  # inside an approved plans.run

    @property
    def review_only(self) -> bool:
        """Does this node run code on private data only as approved plans?"""
        row = self.node.rows("plans.setting").get("review_only")
        return bool(row and row.get("enabled"))

    def before_private_op(self, session: Session, op: str) -> None:
        if self._running or op == "plans.run" or not self.review_only:
            return
        raise PermissionDenied(
            f"node {self.node.name!r} runs code on private data only as plans its owner "
            f"approved, so {op} on private data is refused: trace your code into a plan "
            "(@veil.plan), try it on the mock data, then ask with plan.request(node, "
            "dataset=..., reason=..., runs=...)"
        )

    def program(self, plan_hash: str) -> PlanSpec:
        spec = self._programs.get(plan_hash)
        if spec is None:
            row = self.node.rows("plans.program").get(plan_hash)
            if row is None:
                raise ObjectNotFound(
                    f"node {self.node.name!r} has no plan {plan_hash[:16]!r}; send it first "
                    "(plan.send(worker))"
                )
            spec = decode_plan(base64.b64decode(row["plan"]))
            self._programs[plan_hash] = spec
        return spec

    def used(self, request_id: int) -> int:
        row = self.node.rows("plans.runs").get(str(request_id))
        return int(row["used"]) if row else 0


# --------------------------------------------------------------------------- methods
def _store(state: PlansState, session: Session, msg: StorePlan) -> PlanStored:
    spec = decode_plan(msg.plan)
    check_version(spec)
    program.check(spec)
    h = program_hash(spec)
    if h not in state.node.rows("plans.program"):
        state.node.put_row(h, "plans.program", {
            "plan": base64.b64encode(msg.plan).decode(), "name": spec.name[:200],
        })  # fmt: skip
        state.node.write_audit(session, "plan.store", f"{spec.name[:100]} {h[:16]}")
    state._programs.setdefault(h, spec)
    return PlanStored(h, len(spec.ops))


def _review_key(user: int, plan_hash: str) -> str:
    return f"{user}:{plan_hash}"


def _mock_inputs(spec: PlanSpec, mocks: dict[str, torch.Tensor], bound: list[str]) -> tuple[list[torch.Tensor], list[str]]:  # fmt: skip
    values, notes = [], []
    for i, s in enumerate(spec.inputs):
        want = bound[i] if i < len(bound) else ""
        if want and want not in mocks:
            raise InvalidRequest(f"the dataset has no asset {want[:60]!r}; it has {sorted(mocks)}")
        if not want:
            fits = [n for n, m in mocks.items()
                    if dtype_name(m.dtype) == s.dtype and list(m.shape[1:]) == s.shape[1:]]  # fmt: skip
            want = fits[0] if len(fits) == 1 else ""
        if want:
            values.append(mocks[want])
            notes.append(f"{s.name} = mock of {want}")
        else:
            dtype = getattr(torch, s.dtype, torch.float32)
            values.append(torch.zeros(s.shape, dtype=dtype))
            notes.append(f"{s.name} = zeros{tuple(s.shape)} (supplied by the scientist)")
    return values, notes


def _preview(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()[:8].tolist()
        more = ", ..." if value.numel() > 8 else ""
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat)
        return f"{dtype_name(value.dtype)}{list(value.shape)} [{shown}{more}]"
    if isinstance(value, list | tuple):
        return "(" + "; ".join(_preview(v) for v in value) + ")"
    return repr(value)


def _mock_result(state: PlansState, session: Session, spec: PlanSpec, msg: AskPlan) -> str:
    mocks = state.node.dataset_mocks(msg.dataset)
    if sum(m.numel() for m in mocks.values()) > MAX_MOCK_ELEMENTS:
        return "not computed: the dataset's mock data is over the review's size limit"
    inputs, notes = _mock_inputs(spec, mocks, list(msg.inputs))
    objects: dict[int, Any] = {}
    if len(msg.state) != len(spec.state):
        return "not computed: the request names no objects for the plan's state"
    for slot, oid in zip(spec.state, msg.state):
        rec = state.node.record(session, oid)
        if rec.private:
            return f"not computed: the plan's state {slot.name or slot.id} is private data"
        objects[slot.id] = rec.value
    objects = copy.deepcopy(objects)  # the review must not change the scientist's objects
    try:
        out = program.run(spec, inputs, objects, check=state.node.check_size)
    except Exception as exc:  # mock data is public: its error may be shown
        return f"failed on the mock data ({'; '.join(notes)}): {type(exc).__name__}: {exc}"[:2000]
    return f"{_preview(out)}   with {'; '.join(notes)}"[:4000]


def _releases(dataset: str, release: bool = False) -> str:
    if release:
        return (
            f"its results: the requester asks to fetch the result of each approved run (as "
            f"on the mock data above, computed from {dataset!r}), once you turn on the release "
            "policy plan-outputs (veil plans release-outputs on); results that hold an error "
            "are never released. Anything else leaves only through a get request, a DP "
            "publish or another release policy you enabled"
        )
    return (
        f"nothing by itself: the plan's results stay on this node, private, derived from "
        f"{dataset!r}. They leave only through what you approve or enable later: a get "
        "request (you decide each), a DP publish (charged to the scientist's epsilon budget "
        "on the dataset), or a release policy you turned on (e.g. secure aggregation)"
    )


def _ask(state: PlansState, session: Session, msg: AskPlan) -> PlanReviewInfo:
    if not 1 <= msg.runs <= MAX_RUNS:
        raise InvalidRequest(f"runs must be between 1 and {MAX_RUNS}, got {msg.runs}")
    if not state.node.has_dataset(msg.dataset):
        raise ObjectNotFound(f"node {state.node.name!r} has no dataset {msg.dataset[:100]!r}")
    spec = state.program(msg.hash)
    info = PlanReviewInfo(
        msg.hash, spec.name, msg.dataset, msg.runs, text.code(spec),
        _mock_result(state, session, spec, msg), _releases(msg.dataset, msg.release),
        release=msg.release,
    )  # fmt: skip
    state.node.put_row(_review_key(session.user_id, msg.hash), "plans.review", {
        "dataset": msg.dataset, "runs": msg.runs, "mock": info.mock_result,
        "release": bool(msg.release),
    })  # fmt: skip
    return info


def _open(state: PlansState, session: Session, subject: str) -> str:
    review = state.node.rows("plans.review").get(_review_key(session.user_id, subject))
    if review is None:
        raise InvalidRequest(
            "a plan request is made with plan.request(node, dataset=..., reason=..., runs=...)"
        )
    state.program(subject)  # known here
    release = int(bool(review.get("release")))
    return f"{subject}:{review['runs']}:{release}:{review['dataset']}"


def _terms(row: RequestRow) -> tuple[str, int, bool, str]:
    """What an approval of ``row`` covers: (plan hash, runs, release results?, dataset)."""
    plan_hash, runs, release, dataset = row.digest.split(":", 3)
    return plan_hash, int(runs), release == "1", dataset


def _describe(state: PlansState, row: RequestRow) -> str:
    try:
        plan_hash, runs, release, dataset = _terms(row)
        name = state.program(plan_hash).name
    except (ValueError, VeilError):
        return row.subject
    out = ", results released" if release else ""
    return (
        f"plan {name} ({plan_hash[:12]}) on {dataset}: {runs} runs{out}, {state.used(row.id)} used"
    )


def _info(state: PlansState, row: RequestRow) -> PlanReviewInfo:
    plan_hash, runs, release, dataset = _terms(row)
    spec = state.program(plan_hash)
    review = state.node.rows("plans.review").get(_review_key(row.requester, plan_hash)) or {}
    return PlanReviewInfo(
        plan_hash, spec.name, dataset, runs, text.code(spec), str(review.get("mock", "")),
        _releases(dataset, release), state.used(row.id), row.id, row.status,
        state.node.email_of(row.requester), row.reason, release,
    )  # fmt: skip


def _configure(state: PlansState, session: Session, msg: PlanSettings) -> PlanSettings:
    if (msg.review_only is not None or msg.release_outputs is not None) and not session.is_admin:
        raise PermissionDenied("only the node's owner or admins change its plan settings")
    if msg.review_only is not None:
        state.node.put_row("review_only", "plans.setting", {"enabled": bool(msg.review_only)})
        state.node.write_audit(session, "plan.settings", f"review_only={bool(msg.review_only)}")
    if msg.release_outputs is not None:
        state.node.set_release_policy(RELEASE_POLICY, bool(msg.release_outputs))
        state.node.write_audit(session, "plan.settings", f"{RELEASE_POLICY}={msg.release_outputs}")
    return PlanSettings(state.review_only, RELEASE_POLICY in state.node.release_policies())


#: The release policy of plans, and the label of the results it may release.
RELEASE_POLICY = "plan-outputs"
OUTPUT_LABEL = "plans.out:"


def _releasable(state: PlansState, session: Session, rec: Any) -> bool:
    """``plan-outputs``: a result of an approved run of a plan whose request asked for its
    results (or an object computed from such results and public data only: it keeps the
    label), fetched by that request's requester, holding no error, derived from the
    approved dataset only."""
    if not rec.label.startswith(OUTPUT_LABEL) or rec.error:
        return False
    try:
        rid = int(rec.label.removeprefix(OUTPUT_LABEL))
    except ValueError:
        return False
    for row in state.node.requests_of("plan"):
        if row.id == rid:
            if (row.status, row.requester) != ("approved", session.user_id):
                return False
            _h, _runs, release, dataset = _terms(row)
            return release and rec.sources <= {dataset}
    return False


def _list(state: PlansState, session: Session, msg: ListPlans) -> PlanReviews:
    rows = [r for r in state.node.requests_of("plan")
            if (session.is_admin or r.requester == session.user_id)
            and (msg.status is None or r.status == msg.status)]  # fmt: skip
    return PlanReviews([_info(state, r) for r in rows])


def _show(state: PlansState, session: Session, msg: ShowPlan) -> PlanReviewInfo:
    for r in state.node.requests_of("plan"):
        if r.id == msg.request and (session.is_admin or r.requester == session.user_id):
            return _info(state, r)
    raise ObjectNotFound(f"no plan request {msg.request} that you can see")


# ----------------------------------------------------------------------------- running
def _approve_run(state: PlansState, ctx: OpContext, spec: PlanSpec, plan_hash: str,
                 repeat: int) -> RequestRow | None:  # fmt: skip
    """Refuse a run on private data that no approved request of the caller's covers; the
    request it runs under (None: no private data, or the owner's own run)."""
    private = [r for r in ctx.inputs if r.private]
    if not private or ctx.session.is_admin:
        return None
    sources = set().union(*(r.sources for r in private))
    left = []
    for row in state.node.requests_of("plan"):
        if (row.requester, row.status, row.subject) != (ctx.session.user_id, "approved", plan_hash):
            continue
        h, runs, _release, dataset = _terms(row)
        if h != plan_hash or not sources <= {dataset}:
            continue
        used = state.used(row.id)
        if used + repeat <= runs:
            state.node.put_row(str(row.id), "plans.runs", {"used": used + repeat})
            return row
        left.append(f"request {row.id}: {runs - used} of {runs} runs left")
    why = "; ".join(left) if left else "no approved request of yours covers it"
    raise PermissionDenied(
        f"plan {spec.name!r} ({plan_hash[:12]}) may not run {repeat} time(s) on private data of "
        f"{', '.join(sorted(sources)) or 'this node'}: {why}. Ask the owner with "
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
    approval = _approve_run(st, ctx, spec, plan_hash, repeat)
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
    st._running = True
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
        outs = set(program.refs(spec.outputs))
        returned = {ids[s] for s in outs}
        for oid in returned:  # inputs and state returned as they are now
            if oid not in infos:
                infos[oid] = node.info_of(node.record_by_id(oid))
        node.release(session, [oid for oid in dict.fromkeys(made) if oid not in returned])
        if approval is not None and _terms(approval)[2]:  # results the owner may release
            dataset = _terms(approval)[3]
            for oid in returned:
                rec = node.record_by_id(oid)
                if rec is not None and rec.private and rec.sources <= {dataset} and not rec.error:
                    node.set_label(rec, f"{OUTPUT_LABEL}{approval.id}")
    except BaseException:
        node.release(session, list(dict.fromkeys(made)))
        raise
    finally:
        st._running = False
    reply = _reply(spec.outputs, ids, infos)
    return Done() if reply is None else reply


def _run_public(node: Any, session: Session, spec: PlanSpec, plan_hash: str, ctx: OpContext,
                state: list[Any], args: list[Any], repeat: int) -> Any:  # fmt: skip
    """A run on public objects only (none private, none written with private data since it
    was made): no privacy rule applies, so its ops run directly on the objects' values, with
    the node's size check before each in the first run (a plan holds only ops whose result's
    shape follows from its inputs' shapes, so later runs make the same sizes); the values
    computed on the way are never stored, only the results, and the inputs and state are
    stored again (a training step wrote them)."""
    values: dict[int, Any] = {}
    recs = []
    for slot, value in zip([*spec.inputs, *spec.state], [*args, *state]):
        values[slot.id] = value
        rec = ctx.record_of(value)
        if rec is not None:
            recs.append(rec)
    node.write_audit(session, "plan.run", f"{spec.name[:80]} {plan_hash[:16]} x{repeat}")
    reg = default_registry().specs
    current = values
    reshapes = any(op.op in _RESHAPING for op in spec.ops)
    with torch.enable_grad():
        for run in range(repeat):
            # a plan's shapes follow from its inputs' and state's, which keep theirs unless an
            # op reshapes them in place: after the first runs (which may make gradients and
            # optimizer moments, of their parameters' shapes) the sizes repeat
            checking = run < 2 or reshapes
            current = dict(values)
            get = current.__getitem__
            for i, op in enumerate(spec.ops):
                opspec = reg[op.op]
                try:
                    op_args = [from_arg(a, get) for a in op.args]
                    op_kwargs = {k: from_arg(v, get) for k, v in op.kwargs.items()}
                    if checking:
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
    node.wrote(recs)
    kept = {id(r.value): r for r in recs}

    def reply(arg: Any) -> Any:
        if arg is None:
            return None
        if type(arg) is Ref:
            value = current[arg.id]
            rec = kept.get(id(value))
            if rec is None:
                if isinstance(value, bool | int | float):
                    value = torch.tensor(value)
                rec = node.store_value(session, value)
                kept[id(value)] = rec
            return node.info_of(rec)
        return Results([reply(v) for v in arg.items], "list" if type(arg) is ListArg else "")

    out = reply(spec.outputs)
    return Done() if out is None else out


#: Allowlisted ops that change a tensor's shape in place (a plan with one is size-checked
#: on every run: its later runs may make other sizes).
_RESHAPING = frozenset(
    f"Tensor.{n}" for n in ("t_", "squeeze_", "unsqueeze_", "transpose_", "swapaxes_", "swapdims_")
)


def _where(spec: PlanSpec, i: int) -> str:
    op = spec.ops[i]
    return f"plan {spec.name!r}, op {i} ({op.op}, traced at {op.line or '?'})"


def _infos(reply: Any) -> list[ObjectInfo]:
    if isinstance(reply, ObjectInfo):
        return [reply]
    if isinstance(reply, Results):
        return [i for item in reply.items if item is not None for i in _infos(item)]
    return []


CAPABILITY = Capability(
    "plans",
    state=PlansState,
    methods={
        "store": Method(StorePlan, _store),
        "ask": Method(AskPlan, _ask),
        "list": Method(ListPlans, _list),
        "show": Method(ShowPlan, _show),
        "settings": Method(PlanSettings, _configure),
    },
    ops=[
        OpSpec(
            "plans.run",
            run_plan,
            "node",
            OpFacts(size="input", pipeline="never", private_args=("state.*", "args.*")),
        ),  # fmt: skip
    ],
    request_kinds=[RequestKind("plan", _open, _describe)],
    release_policies=[
        ReleasePolicy(
            RELEASE_POLICY,
            _releasable,
            "results of approved plan runs whose request asked to fetch them, to their requester",
        ),
    ],  # fmt: skip
    info=lambda node: {"plans": {"max_ops": program.MAX_OPS, "max_runs": MAX_RUNS}},
)

if not capability.is_installed("plans"):
    capability.install(CAPABILITY)

__all__ = ["CAPABILITY", "MAX_RUNS", "RELEASE_POLICY", "PlansState", "run_plan"]
