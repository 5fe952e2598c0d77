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
from dataclasses import dataclass
from typing import Any

import httpx

from veil.errors import ConnectError, InvalidRequest
from veil.mpc.providers import seal
from veil.mpc.providers.remote import node_call, public_key, reply_tensor

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
