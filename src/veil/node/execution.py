"""Op execution: running an allowlisted op under the privacy rules (see :mod:`veil.node.kernel`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from veil.errors import (
    InvalidRequest,
    PermissionDenied,
    RemoteError,
    VeilError,
)
from veil.node import kernel
from veil.node.base import NodeBase
from veil.node.objects import (
    ObjectRecord,
    autograd_graph,
    kind_of,
    storage_keys,
    tensors_of,
)
from veil.node.users import Session
from veil.node.writes import (
    elements,
    may_write,
    module_may_write,
    private_in,
    span,
    tensor_args,
    versions,
    written_args,
)
from veil.ops import OpFacts, OpSpec
from veil.ops.facts import shape_values_of
from veil.serde.messages import (
    CLIENT_IDS,
    Done,
    ObjectInfo,
    Ref,
    Reply,
    Results,
    RunOp,
)
from veil.serde.values import SCALAR_TYPES, from_arg

log = logging.getLogger("veil.node")


def _failure(op: str, exc: BaseException) -> str:
    """The error an op that failed on private values leaves in its result."""
    return f"{op} failed on private values: {type(exc).__name__}: {str(exc)[:2000]}"


def _label_of(inputs: list[ObjectRecord]) -> str:
    """The capability label a result keeps: the one all its private inputs carry, if any."""
    labels = {r.label for r in inputs if r.private}
    return labels.pop() if len(labels) == 1 else ""


#: ``_predict``'s answer when the op has no public prediction (it then runs as before:
#: its failures are reported with their message withheld).
_UNPREDICTED: Any = object()


_NO_FACTS = OpFacts()


#: Held while a node runs with torch's generator switched to its private stream.
_RNG_LOCK = threading.RLock()


class ExecutionMixin(NodeBase):
    """Runs ``RunOp`` messages: permissions, predictions, size limits, effects, results."""

    def _run_op(self, session: Session, msg: RunOp) -> Reply:
        spec = self._specs.get(msg.op) or self.registry.get(msg.op)  # get() explains a refusal
        if msg.out and (
            msg.out not in CLIENT_IDS or (session.user_id, msg.out) in self._aliases
        ):  # ids a client names are its own: nothing about other users' ids is revealed
            raise InvalidRequest(
                f"{msg.op}: result id {msg.out} is not free; a client names results only with "
                f"ids in [2**62, 2**63) that it has not used (veil's client does this itself)"
            )
        if spec.effect == "node":
            return self._run_node_op(session, spec, msg)
        inputs: list[ObjectRecord] = []

        def resolve(oid: int) -> Any:
            rec = self._record(session, oid)
            inputs.append(rec)
            return rec.value

        objects, uid = self._objects, session.user_id
        args: list[Any] = []
        private = nested = False
        a: Any
        for a in msg.args:
            t = type(a)
            if t is Ref:  # the common case inline; _record explains any refusal
                rec = objects.get(a.id)
                if rec is None or not (rec.owner == uid or rec.asset_of is not None):
                    rec = self._record(session, a.id)
                inputs.append(rec)
                args.append(rec.value)
                private = private or rec.private
            elif t in SCALAR_TYPES:
                args.append(a)
            else:
                args.append(from_arg(a, resolve))
                nested = True
        kwargs: dict[str, Any] = {}
        if msg.kwargs:
            kwargs = {k: from_arg(v, resolve) for k, v in msg.kwargs.items()}
            if kwargs.get("out") is not None:  # would write behind the privacy bookkeeping
                raise InvalidRequest(f"{msg.op}: out= is not supported on a node; use the result")
            nested = True
        if nested:  # records resolved inside lists or keywords count too
            private = any(r.private for r in inputs)
        target = inputs[0] if inputs and args and args[0] is inputs[0].value else None
        if spec.effect != "none" and target is not None and spec.effect in ("inplace", "step"):
            self._check_mutable(session, target)
        declared = (
            [r for w in written_args(spec, args, kwargs) for r in inputs if r.value is w]
            if may_write(spec)
            else []
        )
        for rec in declared:
            self._check_mutable(session, rec)
        if (
            not private
            and spec.effect in ("backward", "step")
            and self._late_taints.get(uid)
            and args
        ):  # written with private data after it was made: what backward or step reads
            hidden = self._private_behind(spec.effect, args[0], uid)
            if hidden:
                private = True
                inputs = [*inputs, *hidden]
        guarded = private and not session.is_admin
        if guarded:  # e.g. veil.plans: a node that runs code on private data only as reviewed plans
            for cap in self._caps.values():
                cap.before_private_op(session, msg.op)
        prediction: Any = _UNPREDICTED
        if guarded:  # the privacy kernel: the reply depends on public facts only
            with self._private_rng():
                prediction = self._predict(spec, args, kwargs, inputs)
        else:
            self._check_size(spec, args, kwargs, inputs, nested)
        error = next((r.error for r in inputs if r.error), "") if private else ""
        before = [versions(r.value) for r in inputs] if private else []
        try:
            if guarded:  # randomness it draws comes from a stream no public op sees
                with self._private_rng():
                    result = spec.fn(*args, **kwargs)
            else:
                result = spec.fn(*args, **kwargs)
        except Exception as exc:
            if guarded and prediction is not _UNPREDICTED:  # it failed on private values
                error = error or _failure(msg.op, exc)
                result = self._placeholder(spec, prediction, args, target)
                if spec.effect == "backward" and args and isinstance(args[0], torch.Tensor):
                    self._fill_grads(args[0])
            elif isinstance(exc, VeilError):
                raise
            elif guarded:  # torch's message may quote private values
                raise RemoteError(
                    f"{msg.op} failed on node {self.name!r} ({type(exc).__name__}); the message "
                    "is withheld because it could quote private data: try the same code on the "
                    "dataset's mock to see it"
                ) from None
            else:
                raise RemoteError(
                    f"{msg.op} failed on node {self.name!r}: {type(exc).__name__}: {exc}"
                ) from None
        else:
            if (
                guarded
                and spec.facts is not None
                and spec.facts.index_arg >= 0
                and spec.effect == "none"
                and isinstance(result, torch.Tensor)
                and private_in(args[spec.facts.index_arg : spec.facts.index_arg + 1], inputs)
                and storage_keys([result]) & storage_keys(tensor_args(args))
            ):  # a view picked by a private index: a copy, as a failed pick would be
                result = result.clone()
            if (
                guarded
                and prediction is not _UNPREDICTED
                and spec.effect not in ("backward", "step")
                and not kernel.matches(prediction, result)
            ):
                error = error or (
                    f"{msg.op}: the result's shape or dtype depended on private values"
                )
                result = self._placeholder(spec, prediction, args, target)
        if len(inputs) == 1:
            sources = inputs[0].sources
        else:
            sources = frozenset().union(*(r.sources for r in inputs)) if inputs else frozenset()
        label = _label_of(inputs) if private else ""
        if spec.effect != "none":
            self._apply_effects(spec, target, args, private, sources, error, label)
        if private:  # any input the op wrote into (e.g. batch-norm running stats) is tainted
            written = declared + [r for r, v in zip(inputs, before) if versions(r.value) != v]
            if error and target is not None and spec.effect == "inplace":
                written.append(target)  # a failed in-place op leaves its target unknown
            if (
                spec.effect == "module_call"
                and target is not None
                and isinstance(target.value, nn.Module)
                and module_may_write(target.value)
            ):  # whether or not this call wrote it (or failed first): the same taint
                written.append(target)
            if written:
                keys = storage_keys(t for r in written for t in tensors_of(r.value))
                self._taint(keys, sources, error, label)
                for r in written:
                    if error and r.asset_of is None:
                        r.error = r.error or error
                for cap in self._caps.values():  # e.g. veil.dp: written data loses its bounds
                    cap.on_write(keys)
        if sources:  # ops on dataset-derived data are audited (uploads, gets and requests always)
            self._audit_row(session, "op", msg.op, [r.id for r in inputs], sources)
        if msg.out:
            reply = self._named_result(session, msg, result, private, sources, error, label)
        elif type(result) is torch.Tensor and target is None and not error and not label:
            reply = self._store(session, result, private=private, sources=sources).info(
                session.email
            )  # _wrap_result's first case, inline
        else:
            reply = self._wrap_result(session, result, target, private, sources, error, label)
        if private:  # veil.dp: sensitivity tracking of what derives from private data
            for cap in self._caps.values():
                cap.after_op(msg.op, args, kwargs, inputs, reply)
        if spec.name == "Tensor.retain_grad" and target is not None:
            self._retaining.add(target.id)
        return reply

    def _predict(self, spec: OpSpec, args: list[Any], kwargs: dict[str, Any],
                 inputs: list[ObjectRecord]) -> Any:  # fmt: skip
        """What the scientist may learn of an op on private data before it runs (see
        :mod:`veil.node.kernel`): refused if a private value decides the result's shape;
        the failure of its meta run, with torch's message; else its predicted result."""
        ids = {id(r.value) for r in inputs if r.private}
        for v in shape_values_of(spec.facts or _NO_FACTS, args, kwargs):
            if isinstance(v, torch.Tensor) and id(v) in ids:
                raise PermissionDenied(
                    f"{spec.name} on private data is refused: the shape of its result would "
                    "depend on private values (a mask, a count, a slice bound or a size), and "
                    "shapes are public. Keep shapes fixed instead, e.g. torch.where(mask, x, 0) "
                    "or (x * mask).sum() / mask.sum() for a masked mean"
                )
        if spec.effect in ("backward", "step"):
            if spec.effect == "backward" and args and isinstance(args[0], torch.Tensor):
                root = args[0]
                gradient = args[1] if len(args) > 1 else kwargs.get("gradient")
                if not root.requires_grad:
                    raise RemoteError(
                        "Tensor.backward failed: element 0 of tensors does not require grad "
                        "and does not have a grad_fn"
                    )
                if gradient is None and root.numel() != 1:
                    raise RemoteError(
                        "Tensor.backward failed: grad can be implicitly created only for "
                        "scalar outputs; pass a gradient of the tensor's shape"
                    )
            return None
        try:
            prediction = kernel.predict(spec, args, kwargs)
        except kernel.Unpredictable:
            return _UNPREDICTED
        except kernel.NeedsValues:
            raise PermissionDenied(
                f"{spec.name} on private data is refused: it would read private values as "
                "numbers (a size, count, bound or index), and what it returns, or whether it "
                "fails, would reveal them. Keep shapes and sizes public: use fixed-shape "
                "alternatives such as torch.where(mask, x, 0), x * mask, or one_hot(k, n)"
            ) from None
        except RemoteError as exc:
            raise RemoteError(f"{exc} (on node {self.name!r}, from shapes and dtypes)") from None
        size = kernel.result_bytes(prediction)
        if size > self.max_result_bytes:
            raise InvalidRequest(
                f"{spec.name} would create {size} bytes, over this node's limit of "
                f"{self.max_result_bytes}"
            )
        return prediction

    @contextlib.contextmanager
    def _private_rng(self) -> Iterator[None]:
        """Run with torch's generator switched to a stream of its own: how many random
        numbers an op on private data draws may depend on the data, and the public stream
        (which a scientist can clone from her own random tensors) must not show it.

        torch's generator is one per process: nodes that run in one process (VirtualWorkers
        driven from several threads, as a federation does) take turns here, so that no op
        draws from another node's private stream and no two threads swap the state at once
        (which deadlocked torch's generator lock against the GIL)."""
        with _RNG_LOCK:
            public = torch.get_rng_state()
            torch.set_rng_state(self._rng)
            try:
                yield
            finally:
                self._rng = torch.get_rng_state()
                torch.set_rng_state(public)

    def _fill_grads(self, root: torch.Tensor) -> None:
        """After a backward that failed on private values: give every tensor it would have
        written a gradient (zeros; the taint that follows carries the error), so whether a
        ``.grad`` exists afterwards does not tell the scientist that it failed."""
        leaves, nodes = autograd_graph(root)
        targets = [t for t in leaves if t.requires_grad and t.is_leaf]
        for oid in self._retaining:
            rec = self._objects.get(oid)
            if rec is not None and isinstance(rec.value, torch.Tensor):
                if rec.value.grad_fn is not None and rec.value.grad_fn in nodes:
                    targets.append(rec.value)
        for t in targets:
            if t.grad is None:
                t.grad = torch.zeros_like(t)

    def _placeholder(self, spec: OpSpec, prediction: Any, args: list[Any],
                     target: ObjectRecord | None) -> Any:  # fmt: skip
        """What an op that failed on private values leaves as its result."""
        if target is not None and spec.effect == "inplace":
            return target.value  # in-place ops answer with their target
        if spec.effect in ("backward", "step"):
            return None
        return kernel.placeholder(prediction, args)

    def _check_size(self, spec: OpSpec, args: list[Any], kwargs: dict[str, Any],
                    inputs: list[ObjectRecord], nested: bool) -> None:  # fmt: skip
        """Refuse an op on public data whose result would pass ``max_result_bytes``."""
        rule = spec.facts.size if spec.facts is not None else "meta"
        limit = self.max_result_bytes
        if rule == "input":
            biggest = max((elements(v) for v in (*args, *kwargs.values())), default=0)
            if 16 * biggest <= limit:
                return
        elif rule == "product" and not self._may_exceed(args, kwargs):
            return
        bound = spec.facts.value_size if spec.facts is not None else None
        try:
            prediction = kernel.predict(spec, args, kwargs, public=True)
        except (kernel.NeedsValues, kernel.Unpredictable, RemoteError) as exc:
            if rule == "product" and bound is None and isinstance(exc, kernel.Unpredictable):
                raise InvalidRequest(  # its inputs' product passed the limit: no proof it fits
                    f"{spec.name} could create more than this node's limit of {limit} bytes "
                    "(the product of its inputs' sizes); split the work into smaller pieces"
                ) from None
            if bound is None and not isinstance(exc, kernel.NeedsValues):
                # the op will fail (torch explains why) or has no meta form: bound sizes
                ints = [v for v in list(args) + list(kwargs.values()) if isinstance(v, int)]
                if any(abs(v) > limit // 8 for v in ints):
                    raise InvalidRequest(
                        f"{spec.name}: size argument over the node's limit"
                    ) from None
                return
            if bound is None:
                raise InvalidRequest(
                    f"{spec.name}: its result's size depends on tensor values this node cannot "
                    "bound before running it; pass sizes as plain numbers"
                ) from None
            try:
                size = 16 * int(bound(args, kwargs))
            except (TypeError, ValueError, RuntimeError, IndexError):
                return  # the op itself will fail and say why
            if size > limit:
                raise InvalidRequest(
                    f"{spec.name} could create {size} bytes, over this node's limit of {limit}"
                ) from None
            return
        size = kernel.result_bytes(prediction)
        if size > limit:
            raise InvalidRequest(
                f"{spec.name} would create {size} bytes, over this node's limit of {limit}"
            )

    def _named_result(self, session: Session, msg: RunOp, result: Any, private: bool,
                      sources: frozenset[str], error: str = "", label: str = "") -> Reply:  # fmt: skip
        """Store a pipelined op's result under the id its client chose (an alias: client
        ids belong to their user, and name nothing of anyone else's)."""
        if result is None:
            return Done()
        if isinstance(result, bool | int | float | torch.Size):
            result = torch.tensor(result)
        if kind_of(result) is None:  # several objects: the client predicted one
            raise InvalidRequest(
                f"{msg.op} returned a {type(result).__name__}, not the single object its "
                "pipelined call expected; run it with the pipeline off (worker.flush() first)"
            )
        rec = self._store(session, result, private=private, sources=sources, error=error,
                          label=label, alias=msg.out)  # fmt: skip
        return rec.info(session.email)

    def _may_exceed(self, args: list[Any], kwargs: dict[str, Any]) -> bool:
        """Could an op whose output is at most the product of its inputs' sizes pass the
        limit? Each tensor counts as the product of its dimensions with empty ones taken as 1
        (an ``(n, 0) @ (0, n)`` product is ``n * n``), and at least 2 (concatenations)."""
        bound, limit = 16, self.max_result_bytes  # 16: bytes per element of the widest dtype
        for v in (*args, *kwargs.values()) if kwargs else args:
            if type(v) in SCALAR_TYPES:
                continue
            if isinstance(v, torch.Tensor):
                bound *= span(v)
            elif isinstance(v, list | tuple):
                for t in v:
                    if isinstance(t, torch.Tensor):
                        bound *= span(t)
            if bound > limit:
                return True
        return False

    def _apply_effects(self, spec: OpSpec, target: ObjectRecord | None, args: list[Any],
                       private: bool, sources: frozenset[str], error: str = "",
                       label: str = "") -> None:  # fmt: skip
        effect = spec.effect
        if effect == "inplace" and target is not None:
            if private:
                self._taint(storage_keys(tensors_of(target.value)), sources, error, label)
            self._persist(target)
        elif effect == "backward" and args and isinstance(args[0], torch.Tensor):
            if private:  # the graph walk costs ~0.1 ms a step: only when there is taint to spread
                leaves, nodes = autograd_graph(args[0])
                self._taint(storage_keys(leaves), sources, error)
                # non-leaf tensors that retain their gradient got one from private data too
                for oid in list(self._retaining):
                    rec = self._objects.get(oid)
                    if rec is None or not isinstance(rec.value, torch.Tensor):
                        self._retaining.discard(oid)
                    elif rec.value.grad_fn is not None and rec.value.grad_fn in nodes:
                        self._mark(rec, sources, error)
        elif effect == "step" and target is not None:
            if target.private or self.store.persistent:
                keys = storage_keys(tensors_of(target.value))
                if target.private:
                    self._taint(keys, target.sources, error)
                self._persist_storages(keys)
        elif effect == "module_call" and target is not None and private:
            module = target.value
            if (
                isinstance(module, nn.Module)
                and module.training
                and any(True for _ in module.buffers())
            ):
                self._taint(storage_keys(tensors_of(module)), sources, error)
        elif effect == "module_call" and target is not None and self.store.persistent:
            module = target.value  # a forward in training mode moves running statistics
            if (
                isinstance(module, nn.Module)
                and module.training
                and next(module.buffers(), None) is not None
            ):
                self._persist(target)

    def _wrap_result(self, session: Session, result: Any, target: ObjectRecord | None,
                     private: bool, sources: frozenset[str], error: str = "",
                     label: str = "") -> Reply:  # fmt: skip
        if type(result) is torch.Tensor and (target is None or result is not target.value):
            rec = self._store(session, result, private=private, sources=sources, error=error,
                              label=label)  # fmt: skip
            return rec.info(session.email)
        if result is None:
            return Done()
        if target is not None and result is target.value:
            return self._info_of(target)
        if isinstance(result, list | tuple) and not isinstance(result, torch.Size):
            return self._results(session, result, private, sources, 0, error, label)
        return self._new_result(session, result, private, sources, error, label)

    def _results(self, session: Session, result: list[Any] | tuple[Any, ...], private: bool,
                 sources: frozenset[str], depth: int, error: str = "",
                 label: str = "") -> Results:  # fmt: skip
        if depth > 8:
            raise RemoteError("op returned results nested too deeply")
        items: list[ObjectInfo | Results | None] = []
        for item in result:
            if item is None:
                items.append(None)
            elif isinstance(item, list | tuple) and not isinstance(item, torch.Size):
                items.append(
                    self._results(session, item, private, sources, depth + 1, error, label)
                )
            else:
                items.append(self._new_result(session, item, private, sources, error, label))
        tname = "list" if isinstance(result, list) else ""
        if type(result).__module__ == "torch.return_types":
            tname = type(result).__name__
        return Results(items, tname)

    def _new_result(self, session: Session, value: Any, private: bool,
                    sources: frozenset[str], error: str = "", label: str = "") -> ObjectInfo:  # fmt: skip
        if isinstance(value, bool | int | float | torch.Size):
            value = torch.tensor(value)
        rec = self._store(session, value, private=private, sources=sources, error=error,
                          label=label)  # fmt: skip
        return rec.info(session.email)  # the caller owns what its op created
