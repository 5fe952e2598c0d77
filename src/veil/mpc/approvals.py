"""Approved crypto providers: a node joins an MPC session only with a dealer its owner chose.

Whoever deals the correlated randomness can unmask every opening, so the data owner picks
it, never the scientist (DESIGN.md, rule 4). A node keeps its owner's approvals in its
store (``Node.put_row``, kind ``mpc.dealer``): a name, the dealer node's MPC public key, and
who approved it when. A node with no approved dealer refuses ``mpc.join`` and says how to
approve one:

* when serving: ``veil node serve --dealer carol=http://carol.example:8765`` (the node reads
  the key from that node's ``GET /api/v1/info``) or ``--dealer carol=<64 hex digits>``;
* on a running node, as its owner: ``veil dealers add carol=URL|KEY``, ``veil dealers
  list``, ``veil dealers remove carol``; REST ``GET/POST/DELETE /api/v1/dealers``;
* in Python, as its owner: ``veil.mpc.dealers(worker).add("carol", carol_worker)``.

A VirtualWorker you created yourself is a node you own (its session is the owner's): an
MPC session approves the crypto provider you name on it for you, audited as yours, so
``x.share(alice, bob, crypto_provider=carol)`` keeps working in one process. A
VirtualWorker logged in as a data scientist, or a remote node, gets no such shortcut.

Removing a dealer ends the sessions it dealt for on that node.

Example:
    >>> import veil
    >>> hospital, carol = veil.VirtualWorker("hospital"), veil.VirtualWorker("carol")
    >>> d = dealers(hospital).add("carol", carol)
    >>> [(x.name, x.fingerprint == veil.mpc.fingerprint(carol)) for x in dealers(hospital).list()]
    [('carol', True)]
    >>> dealers(hospital).remove("carol")
    >>> dealers(hospital).list()
    []
"""

from __future__ import annotations

import builtins
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from veil.errors import ConnectError, InvalidRequest, PermissionDenied
from veil.mpc import seal
from veil.mpc.state import PartySession, party_of, public_key_of, state_of, u8
from veil.node.extension import OpContext
from veil.serde.messages import Reply

#: ``Node.rows`` kind of the approvals; each row's key is ``mpc.dealer:<name>``.
KIND = "mpc.dealer"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")

HOW = (
    "its owner approves one with `veil dealers add NAME=URL_OR_KEY --url <this node's URL>` "
    "(or `veil node serve --dealer NAME=URL_OR_KEY`, or in Python "
    "`veil.mpc.dealers(worker).add(name, provider)`); a node's MPC key is in its "
    "GET /api/v1/info"
)


@dataclass(frozen=True, slots=True)
class Dealer:
    """One approved crypto provider of a node.

    Attributes:
        name: the owner's name for it.
        key: its MPC public key (64 hex digits).
        fingerprint: the short form of the key (``veil.mpc.fingerprint(worker)``).
        url: where its key was read from, if it was given by URL.
        added_by: the user who approved it.
        added: when (seconds since the epoch).
    """

    name: str
    key: str
    fingerprint: str
    url: str
    added_by: str
    added: float


# ------------------------------------------------------------------------ on the node


def approved(node: Any) -> dict[str, Dealer]:
    """The dealers ``node``'s owner approved, by name."""
    out = {}
    for key, v in node.rows(KIND).items():
        if v.get("removed") or "key" not in v:
            continue
        name = key.split(":", 1)[1]
        out[name] = Dealer(name, v["key"], seal.fingerprint(bytes.fromhex(v["key"])),
                           v.get("url", ""), v.get("by", ""), float(v.get("at", 0.0)))  # fmt: skip
    return out


def approved_keys(node: Any) -> set[bytes]:
    """The keys of the approved dealers (checked on every party step: kept cheap)."""
    return {bytes.fromhex(v["key"]) for v in node.rows(KIND).values() if "key" in v}


def check_dealer(ctx: OpContext, dealer: bytes) -> None:
    """Refuse a dealer key that the node's owner did not approve, saying how to approve one
    (admins also see which ones are approved)."""
    known = approved(ctx.node)
    if any(bytes.fromhex(d.key) == dealer for d in known.values()):
        return
    fp = seal.fingerprint(dealer)
    if not known:
        raise PermissionDenied(
            f"node {ctx.node.name!r} accepts no crypto provider yet (offered: key {fp}); {HOW}"
        )
    which = (
        ": " + ", ".join(f"{d.name} ({d.fingerprint})" for d in known.values())
        if ctx.session.is_admin
        else f" ({len(known)})"
    )
    raise PermissionDenied(
        f"node {ctx.node.name!r} does not accept crypto provider key {fp}; its owner approved "
        f"other providers{which}. Use one of them, or ask the owner to approve this one: {HOW}"
    )


def party(ctx: OpContext, sid: str) -> PartySession:
    """The caller's party session ``sid``, while its dealer is still approved."""
    sess = party_of(ctx, sid)
    if sess.dealer not in approved_keys(ctx.node):  # e.g. the approval was replaced
        raise PermissionDenied(
            f"the crypto provider of MPC session {sid} (key {seal.fingerprint(sess.dealer)}) is "
            f"no longer approved on node {ctx.node.name!r}; start a new session with an "
            "approved one"
        )
    return sess


def _admin(ctx: OpContext, what: str) -> None:
    if not ctx.session.is_admin:
        raise PermissionDenied(
            f"only the owner or an admin of node {ctx.node.name!r} {what} crypto providers"
        )


def _json(value: Any) -> Reply:
    return OpContext.value(u8(json.dumps(value).encode()))


def _as_dict(d: Dealer) -> dict[str, Any]:
    return {"name": d.name, "key": d.key, "fingerprint": d.fingerprint, "url": d.url,
            "added_by": d.added_by, "added": d.added}  # fmt: skip


def op_add(ctx: OpContext, name: str, key: str, url: str = "") -> Reply:
    """Owners and admins: approve the dealer with MPC public key ``key`` (64 hex digits) as
    ``name`` (replacing an approval of that name); ``url`` records where the key came
    from. Answers the approval (JSON)."""
    _admin(ctx, "approve")
    if not _NAME.match(name):
        raise InvalidRequest(
            f"a dealer name is 1-64 letters, digits or _.@- (starting with a letter or digit), "
            f"got {name[:80]!r}"
        )
    if not _HEX_KEY.match(key):
        raise InvalidRequest(
            "a dealer key is an MPC public key: 64 hex digits (GET /api/v1/info of its node, "
            "field mpc.public_key)"
        )
    raw = bytes.fromhex(key)
    if raw == public_key_of(ctx.node):
        raise InvalidRequest(
            f"that is node {ctx.node.name!r}'s own key: a node cannot deal for a session it "
            "is a party of"
        )
    other = next((d for d in approved(ctx.node).values() if d.key == raw.hex() and d.name != name),
                 None)  # fmt: skip
    if other is not None:
        raise InvalidRequest(f"key {other.fingerprint} is already approved as {other.name!r}")
    row = {"key": raw.hex(), "url": url[:2000], "by": ctx.session.email, "at": time.time()}
    ctx.node.put_row(f"{KIND}:{name}", KIND, row)
    ctx.audit("mpc.dealer.add", f"{name} {seal.fingerprint(raw)} {url[:200]}".strip())
    return _json(_as_dict(approved(ctx.node)[name]))


def op_list(ctx: OpContext) -> Reply:
    """Owners and admins: the approved dealers (JSON list)."""
    _admin(ctx, "list")
    return _json([_as_dict(d) for d in approved(ctx.node).values()])


def op_remove(ctx: OpContext, name: str) -> Reply:
    """Owners and admins: withdraw the approval of dealer ``name``; sessions it dealt for
    on this node end."""
    _admin(ctx, "remove")
    gone = approved(ctx.node).get(name)
    if gone is None:
        raise InvalidRequest(f"node {ctx.node.name!r} has no approved dealer {name[:80]!r}")
    ctx.node.put_row(f"{KIND}:{name}", KIND, {"removed": True, "by": ctx.session.email,
                                              "at": time.time()})  # fmt: skip
    st = state_of(ctx.node)
    raw = bytes.fromhex(gone.key)
    for k in [k for k, s in st.parties.items() if s.dealer == raw]:
        del st.parties[k]
        st.ended[k] = (
            f"MPC session {k[1]} ended on node {ctx.node.name!r}: its owner withdrew the "
            f"approval of its crypto provider {name!r} ({gone.fingerprint}); start a new "
            "session with an approved one"
        )
    ctx.audit("mpc.dealer.remove", f"{name} {gone.fingerprint}")
    return _json(_as_dict(gone))


NODE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.dealers.add": op_add,
    "mpc.dealers.list": op_list,
    "mpc.dealers.remove": op_remove,
}


# ------------------------------------------------------------------------ for owners (client side)


def fetch_key(url: str, *, timeout: float = 10.0) -> bytes:
    """The MPC public key of the node serving at ``url`` (from its ``GET /api/v1/info``).

    Raises:
        ConnectError: the node cannot be reached or shows no MPC key.
    """
    base = url.rstrip("/")
    try:
        info = httpx.get(f"{base}/api/v1/info", timeout=timeout).json()
        key = bytes.fromhex(info["mpc"]["public_key"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ConnectError(
            f"could not read the MPC key of the node at {base} ({type(exc).__name__}); is it a "
            "veil node, and running? Give its key instead: NAME=<64 hex digits>"
        ) from None
    if len(key) != 32:
        raise ConnectError(f"the node at {base} shows an MPC key of {len(key)} bytes, not 32")
    return key


def resolve(dealer: Any) -> tuple[bytes, str]:
    """(key, url) of a dealer given as a worker, a URL, 64 hex digits or 32 raw bytes."""
    from veil.mpc.session import public_key

    if isinstance(dealer, bytes | bytearray):
        if len(dealer) != 32:
            raise InvalidRequest(f"a dealer key is 32 bytes, got {len(dealer)}")
        return bytes(dealer), ""
    if isinstance(dealer, str):
        if dealer.startswith(("http://", "https://")):
            return fetch_key(dealer), dealer
        if _HEX_KEY.match(dealer):
            return bytes.fromhex(dealer), ""
        raise InvalidRequest(
            f"give a dealer as a worker, its node's URL (http://...) or its MPC key (64 hex "
            f"digits), got {dealer[:80]!r}"
        )
    return public_key(dealer), str(getattr(dealer, "url", ""))


class Dealers:
    """A node's approved crypto providers, as its owner (or an admin) manages them; see the
    module docstring. Use :func:`dealers`."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker

    def _call(self, op: str, *args: Any) -> Any:
        from veil.mpc.session import node_call, reply_tensor

        return json.loads(reply_tensor(node_call(self._worker, op, *args)).numpy().tobytes())

    def add(self, name: str, dealer: Any) -> Dealer:
        """Approve ``dealer`` (a worker, its node's URL, or its MPC key: 64 hex digits or 32
        bytes) as ``name``."""
        key, url = resolve(dealer)
        return Dealer(**self._call("mpc.dealers.add", name, key.hex(), url))

    def list(self) -> builtins.list[Dealer]:
        """The approved dealers."""
        return [Dealer(**d) for d in self._call("mpc.dealers.list")]

    def remove(self, name: str) -> None:
        """Withdraw an approval (sessions it dealt for on this node end)."""
        self._call("mpc.dealers.remove", name)

    def __repr__(self) -> str:
        return f"Dealers({self._worker.name!r})"


def dealers(worker: Any) -> Dealers:
    """The approved crypto providers of ``worker``'s node (owners and admins).

    Example:
        >>> import veil
        >>> clinic = veil.VirtualWorker("clinic")
        >>> veil.mpc.dealers(clinic)
        Dealers('clinic')
    """
    return Dealers(worker)


def approve_for_owner(party: Any, provider: Any, provider_key: bytes) -> None:
    """The VirtualWorker shortcut: on a node the user created in this process (its session
    is the owner's or an admin's), approve the provider the user names, as that user
    (audited). Anything else gets no shortcut."""
    from veil.node.worker import VirtualWorker

    if not (isinstance(party, VirtualWorker) and party.session.is_admin):
        return
    node = party.node
    known = approved(node)
    if any(bytes.fromhex(d.key) == provider_key for d in known.values()):
        return
    name = str(provider.name) if _NAME.match(str(provider.name)) else "provider"
    if name in known:
        name = f"{name}-{seal.fingerprint(provider_key)[:8]}"
    Dealers(party).add(name, provider_key)
