"""Capability node ops (effect ``node``): argument checks before they run, failures withheld."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from veil.errors import (
    InvalidRequest,
    PermissionDenied,
    RemoteError,
    VeilError,
)
from veil.node.base import NodeBase
from veil.node.objects import (
    ObjectRecord,
)
from veil.node.users import Session
from veil.node.writes import (
    signature_of,
)
from veil.ops import OpSpec
from veil.serde.messages import (
    DictArg,
    ListArg,
    ObjectInfo,
    Ref,
    Reply,
    RunOp,
    SliceArg,
    TupleArg,
)
from veil.serde.values import from_arg

if TYPE_CHECKING:
    from veil.node.node import Node

log = logging.getLogger("veil.node")


def _path_allowed(path: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    """Does an argument path (``("items", "0", "inputs", "1")``) match a pattern of
    :attr:`~veil.ops.OpFacts.private_args` (``"items.*.inputs.*"``)?"""
    for pattern in patterns:
        parts = pattern.split(".")
        if len(parts) == len(path) and all(p in ("*", q) for p, q in zip(parts, path)):
            return True
    return False


class NodeOpsMixin(NodeBase):
    """Runs node ops (``veil.mpc``'s protocol steps...) through the same rules as torch ops."""

    def _run_node_op(self, session: Session, spec: OpSpec, msg: RunOp) -> Reply:
        """Run an extension op: it gets an :class:`OpContext` (the caller's session, the
        records behind its ``Ref`` arguments, helpers to store results with explicit
        privacy) and returns its own reply. It never sees another user's objects.

        The seam applies the same rules as to torch ops: a private object passed where the
        op's facts do not accept one (``OpFacts.private_args``) is refused before the op
        runs, naming only the argument; an unexpected failure with private inputs has its
        message withheld."""
        from veil.node.extension import OpContext

        inputs: list[ObjectRecord] = []
        if not session.is_admin:
            self._check_private_args(session, spec, msg)

        def resolve(oid: int) -> Any:
            rec = self._record(session, oid)
            inputs.append(rec)
            return rec.value

        args = [from_arg(a, resolve) for a in msg.args]
        kwargs = {k: from_arg(v, resolve) for k, v in msg.kwargs.items()}
        if not session.is_admin and any(r.private for r in inputs):
            for cap in self._caps.values():
                cap.before_private_op(session, msg.op)
        ctx = OpContext(cast("Node", self), session, inputs)
        sig = signature_of(spec.fn)
        if sig is not None:  # missing or unknown arguments: say which, never a traceback
            try:
                sig.bind(ctx, *args, **kwargs)
            except TypeError as exc:
                raise InvalidRequest(f"{msg.op}: {exc}") from None
        try:
            reply = spec.fn(ctx, *args, **kwargs)
        except VeilError:
            raise
        except Exception as exc:
            if any(r.private for r in inputs) and not session.is_admin:
                raise RemoteError(
                    f"{msg.op} failed on node {self.name!r} ({type(exc).__name__}); the message "
                    "is withheld because it could quote private data"
                ) from None
            raise RemoteError(
                f"{msg.op} failed on node {self.name!r}: {type(exc).__name__}: {exc}"
            ) from None
        if ctx.sources:
            self._audit_row(session, "op", msg.op, [r.id for r in inputs], ctx.sources)
        if msg.out:  # a pipelined call named its single new result (veil.plans)
            rec = self._objects.get(reply.id) if isinstance(reply, ObjectInfo) else None
            if rec is None or rec.owner != session.user_id or rec.alias or rec in inputs:
                raise InvalidRequest(
                    f"{msg.op} did not create the single object its pipelined call expected; "
                    "run it with the pipeline off (worker.flush() first)"
                )
            rec.alias = msg.out
            self._aliases[(session.user_id, msg.out)] = rec.id
            if self.store.persistent:
                self._persist(rec)
            return rec.info(session.email)
        return reply  # type: ignore[no-any-return]

    def _check_private_args(self, session: Session, spec: OpSpec, msg: RunOp) -> None:
        """Refuse a private object anywhere a node op does not accept one, before it runs."""
        allowed = spec.facts.private_args if spec.facts is not None else ()
        sig = signature_of(spec.fn)
        names = list(sig.parameters)[1:] if sig is not None else []  # after ctx
        found: list[str] = []

        def walk(arg: Any, path: tuple[str, ...], depth: int) -> None:
            if depth > 40:
                return
            if type(arg) is Ref:
                rec = self._record(session, arg.id)
                if rec.private and not _path_allowed(path, allowed or ()):
                    found.append(".".join(path))
            elif isinstance(arg, ListArg | TupleArg):
                for i, v in enumerate(arg.items):
                    walk(v, (*path, str(i)), depth + 1)
            elif isinstance(arg, DictArg):
                for k, v in arg.items.items():
                    walk(v, (*path, k), depth + 1)
            elif isinstance(arg, SliceArg):
                for k in ("start", "stop", "step"):
                    walk(getattr(arg, k), (*path, k), depth + 1)

        for i, a in enumerate(msg.args):
            walk(a, (names[i] if i < len(names) else f"arg{i}",), 0)
        for k, v in msg.kwargs.items():
            walk(v, (k,), 0)
        if found:
            raise PermissionDenied(
                f"{msg.op}: argument {', '.join(found[:5])} must be public, and it refers to a "
                "private object; pass a public value (only the op's share/data arguments may "
                "be private)"
            )
