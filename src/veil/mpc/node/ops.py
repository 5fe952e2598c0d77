"""The ops a node runs for MPC, and the privacy rule they enforce.

The rule: a party's share of anything is a private object on its node; a data scientist
who drives the computation sees only values *masked with fresh dealer randomness*, and only
a dealer its node's owner approved can know those masks:

* a node joins a session only with a crypto provider (dealer) its owner approved
  (:mod:`veil.mpc.approvals`); dealer randomness reaches it as one PRG seed, sealed by the
  dealer's node key for the party's node key and bound to the session's party keys
  (:mod:`veil.mpc.seal`); the scientist relays a box it cannot open;
* ``mpc.open`` opens only *shares*: objects this node labelled as shares of that session
  when it made them (results of torch ops on such shares alone keep the label; see
  :func:`~veil.mpc.state.share_label`), of the domain and shape the group takes. Never a
  dataset, nor anything else computed from private data;
* it masks each operand with the party's share of a slot of group ``gid`` (derived from
  the seed, never stored as an object, never usable by any other op) and answers the
  masked value publicly. A group id is opened at most once per party session, so a mask is
  never reused; a node never accepts the same seed twice;
* ``mpc.finish`` turns the public openings and the group's slots into new *private* shares;
* the dealer (``mpc.deal``) takes only shapes: it never receives a share of data;
* a data owner's node shares its own data itself (:mod:`veil.mpc.inputs`).

Every op takes typed arguments (:mod:`veil.mpc.typed`); a private object is accepted only
where :data:`PRIVATE_ARGS` declares one, and refused anywhere else before the op runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veil.mpc.node import approvals, inputs, local_ops, rounds, state, zero
from veil.mpc.node.setup import op_deal, op_dealer_setup, op_join, op_public_key
from veil.mpc.node.typed import typed
from veil.node import capability
from veil.node.capability import Capability
from veil.ops import OpFacts, OpSpec

NODE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.public_key": op_public_key,
    "mpc.dealer_setup": op_dealer_setup,
    "mpc.join": op_join,
    "mpc.deal": op_deal,
    "mpc.open": rounds.op_open,
    "mpc.finish": rounds.op_finish,
    "mpc.step": rounds.op_step,
    "mpc.a128.add_public": rounds.op_add_public,
    "mpc.a128.check": rounds.op_check_value,
    **inputs.NODE_OPS,
    **approvals.NODE_OPS,
    **zero.NODE_OPS,
}

#: Where each node op accepts private objects (its shares, or a data owner's own data); a
#: private object in any other argument is refused by the node before the op runs.
PRIVATE_ARGS: dict[str, tuple[str, ...]] = {
    "mpc.open": ("items.*.inputs.*",),
    "mpc.step": ("open_.*.inputs.*",),
    "mpc.split": ("x",),
    "mpc.a128.add_public": ("x",),
    "mpc.a128.check": ("x",),
    "mpc.a128.owner_input": ("x",),
    "mpc.masked_input": ("x",),
}


def specs() -> list[OpSpec]:
    """The allowlist entries of the MPC ops: node ops (typed, with their private
    arguments) and the local steps on shares (typed torch-path ops)."""
    out = []
    for name, fn in NODE_OPS.items():
        facts = OpFacts(size="input", pipeline="never", private_args=PRIVATE_ARGS.get(name, ()))
        out.append(OpSpec(name, typed(name, fn, context=True), "node", facts))
    for name, fn in local_ops.OPS.items():
        out.append(OpSpec(name, typed(name, fn), facts=OpFacts(size="product")))
    return out


#: MPC as a node capability (:mod:`veil.node.capability`): its ops, its per-node state (the
#: node's key pair and sessions) and its public info (the node's MPC key).
CAPABILITY = Capability("mpc", state=state.MPCState, ops=tuple(specs()), info=state.public_info)


def register() -> None:
    """Install the MPC capability on every node of this process (its ops in the default
    allowlist, its state, the node's MPC key in its public info); idempotent. Each op runs
    behind :func:`~veil.mpc.node.typed.typed`: a missing or mistyped argument is an
    InvalidRequest that names it."""
    if not capability.is_installed("mpc"):
        capability.install(CAPABILITY)


#: The protocol-round ops as the allowlist runs them (arguments decoded and checked first),
#: under the names ``veil.mpc.node_ops`` had.
op_open = typed("mpc.open", rounds.op_open, context=True)
op_finish = typed("mpc.finish", rounds.op_finish, context=True)
op_step = typed("mpc.step", rounds.op_step, context=True)
