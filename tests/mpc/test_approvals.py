"""Approved crypto providers (veil.mpc.approvals): the data owner chooses who deals.

Python API, REST, CLI and ``veil node serve --dealer``; persistence across a restart (the
approvals, and a dealer's own key); and the VirtualWorker shortcut, which only a user's own
in-process nodes get.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from typer.testing import CliRunner

import veil
from veil.cli import app
from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc import MPCSession, seal
from veil.node import Node
from veil.node.server import serve_in_thread
from veil.node.store import open_store

OWNER_PW = "owner-password-1"
DS_EMAIL, DS_PASSWORD = "ds@lab.org", "ds-password-123"


def _node(name: str, **kw: Any) -> Node:
    node = Node(name, owner_email=f"o@{name}.org", owner_password=OWNER_PW, **kw)
    if not any(u.email == DS_EMAIL for u in veil.VirtualWorker(node=node).users()):
        node.create_user(DS_EMAIL, DS_PASSWORD)
    return node


def _pair(node: Node) -> tuple[Any, Any]:
    """(the owner's worker, a data scientist's worker) on ``node``."""
    owner = veil.VirtualWorker(node=node)
    return owner, owner.login(DS_EMAIL, DS_PASSWORD)


def test_a_node_without_an_approved_dealer_says_how_to_approve_one() -> None:
    (_, alice), (_, bob), (_, carol) = (_pair(_node(n)) for n in ("alice", "bob", "carol"))
    with pytest.raises(PermissionDenied) as info:
        MPCSession([alice, bob], carol)
    message = str(info.value)
    assert "accepts no crypto provider yet" in message
    for how in ("veil dealers add NAME=URL_OR_KEY", "veil node serve --dealer",
                "veil.mpc.dealers(worker).add", "GET /api/v1/info"):  # fmt: skip
        assert how in message


def test_owners_approve_list_and_remove_dealers() -> None:
    (alice_owner, alice), (bob_owner, bob) = _pair(_node("alice")), _pair(_node("bob"))
    carol, dave = veil.VirtualWorker("carol"), veil.VirtualWorker("dave")
    d = veil.mpc.dealers(alice_owner).add("carol", carol)
    assert (d.name, d.fingerprint, d.added_by) == (
        "carol",
        veil.mpc.fingerprint(carol),
        "o@alice.org",
    )
    veil.mpc.dealers(bob_owner).add("carol", veil.mpc.session.public_key(carol).hex())
    veil.mpc.dealers(alice_owner).add("dave", veil.mpc.session.public_key(dave))  # raw bytes
    assert [x.name for x in veil.mpc.dealers(alice_owner).list()] == ["carol", "dave"]
    sess = MPCSession([alice, bob], carol)  # the scientist uses an approved dealer: it works
    x = torch.tensor([1.5, -2.0]).share(session=sess)
    # a scientist may neither approve, list nor remove dealers
    for call in (lambda: veil.mpc.dealers(alice).add("mine", seal.KeyPair.generate().public),
                 lambda: veil.mpc.dealers(alice).list(),
                 lambda: veil.mpc.dealers(alice).remove("carol")):  # fmt: skip
        with pytest.raises(PermissionDenied, match="only the owner or an admin"):
            call()
    # what an owner may not approve
    for name, key, why in [
        ("bad name!", "ab" * 32, "a dealer name is"),
        ("x", "not hex", "64 hex digits"),
        ("self", veil.mpc.session.public_key(alice_owner).hex(), "own key"),
        ("carol2", veil.mpc.session.public_key(carol).hex(), "already approved as 'carol'"),
    ]:
        with pytest.raises(InvalidRequest, match=why):
            veil.mpc.dealers(alice_owner).add(name, key)
    with pytest.raises(InvalidRequest, match="a dealer as a worker, its node's URL"):
        veil.mpc.dealers(alice_owner).add("y", "carol.example.org")
    # withdrawing an approval ends the sessions that dealer dealt for on this node
    veil.mpc.dealers(alice_owner).remove("carol")
    with pytest.raises(PermissionDenied, match="withdrew the approval of its crypto provider"):
        x * x
    with pytest.raises(PermissionDenied, match="does not accept crypto provider key"):
        MPCSession([alice, bob], carol)
    with pytest.raises(InvalidRequest, match="no approved dealer 'carol'"):
        veil.mpc.dealers(alice_owner).remove("carol")
    actions = [(e.user, e.action) for e in alice_owner.audit()]
    assert ("o@alice.org", "mpc.dealer.add") in actions
    assert ("o@alice.org", "mpc.dealer.remove") in actions


def test_the_shortcut_is_for_nodes_you_created_yourself() -> None:
    # VirtualWorkers created in this process are nodes the user owns: the provider they
    # name is approved on them, as them (audited) ...
    alice, bob, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    x = torch.tensor([1.0, 2.0]).share(alice, bob, crypto_provider=carol)
    assert torch.allclose((x * x).reconstruct(), torch.tensor([1.0, 4.0]), atol=1e-3)
    assert [d.name for d in veil.mpc.dealers(alice).list()] == ["carol"]
    assert any(e.action == "mpc.dealer.add" and e.user == alice.session.email
               for e in alice.audit())  # fmt: skip
    # ... a VirtualWorker logged in as a data scientist gets no shortcut ...
    (_, a_ds), (_, b_ds) = _pair(_node("alice2")), _pair(_node("bob2"))
    with pytest.raises(PermissionDenied, match="accepts no crypto provider yet"):
        torch.tensor([1.0]).share(a_ds, b_ds, crypto_provider=carol)
    # ... nor does a remote node, even logged in as its owner
    with contextlib.ExitStack() as stack:
        remote = []
        for name in ("alice3", "bob3"):
            url = stack.enter_context(serve_in_thread(_node(name), bulk_port=None))
            w = veil.connect(url, email=f"o@{name}.org", password=OWNER_PW)
            stack.callback(w.close)
            remote.append(w)
        with pytest.raises(PermissionDenied, match="accepts no crypto provider yet"):
            torch.tensor([1.0]).share(*remote, crypto_provider=carol)
        for w in remote:  # approved by their owners, it works
            veil.mpc.dealers(w).add("carol", carol)
        y = torch.tensor([3.0]).share(*remote, crypto_provider=carol)
        assert torch.allclose((y * 2).reconstruct(), torch.tensor([6.0]))


def test_approvals_and_the_node_key_survive_a_restart(tmp_path: Any) -> None:
    def open_nodes() -> list[Node]:
        return [
            _node(n, store=open_store(f"sqlite:///{tmp_path}/{n}.db"))
            for n in ("alice", "bob", "carol")
        ]

    nodes = open_nodes()
    carol_key = veil.mpc.session.public_key(veil.VirtualWorker(node=nodes[2]))
    for node in nodes[:2]:
        veil.mpc.dealers(veil.VirtualWorker(node=node)).add(
            "carol", veil.VirtualWorker(node=nodes[2])
        )
    for node in nodes:
        node.close()
    nodes = open_nodes()  # a restart: a dealer keeps its key, and the approvals hold
    assert veil.mpc.session.public_key(veil.VirtualWorker(node=nodes[2])) == carol_key
    (_, alice), (_, bob), (_, carol) = (_pair(n) for n in nodes)
    x = torch.tensor([2.0, -1.0]).share(alice, bob, crypto_provider=carol)  # scientist: no shortcut
    assert x.shape == torch.Size([2])
    assert [d.key for d in veil.mpc.dealers(veil.VirtualWorker(node=nodes[0])).list()] == [
        carol_key.hex()
    ]
    for node in nodes:
        node.close()


@contextlib.contextmanager
def _served(*names: str) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_in_thread(_node(n), bulk_port=None)) for n in names]


def _token(url: str, email: str, password: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/v1/login", json={"email": email, "password": password})
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_rest_shows_the_mpc_key_and_manages_dealers() -> None:
    with _served("alice", "carol") as (alice, carol):
        info = httpx.get(f"{carol}/api/v1/info").json()["mpc"]
        key = info["public_key"]
        assert info["fingerprint"] == seal.fingerprint(bytes.fromhex(key))
        owner, ds = _token(alice, "o@alice.org", OWNER_PW), _token(alice, DS_EMAIL, DS_PASSWORD)
        r = httpx.post(f"{alice}/api/v1/dealers", json={"name": "carol", "key": key,
                                                       "url": carol}, headers=owner)  # fmt: skip
        assert r.status_code == 200 and r.json()["fingerprint"] == info["fingerprint"]
        items = httpx.get(f"{alice}/api/v1/dealers", headers=owner).json()["items"]
        assert [(d["name"], d["key"], d["url"]) for d in items] == [("carol", key, carol)]
        assert httpx.get(f"{alice}/api/v1/dealers", headers=ds).status_code == 403
        bad = httpx.post(f"{alice}/api/v1/dealers", json={"name": "x", "key": "zz"}, headers=owner)
        assert bad.status_code == 400 and "64 hex digits" in bad.json()["error"]["message"]
        assert httpx.post(f"{alice}/api/v1/dealers", json={"name": "y", "key": key},
                          headers=ds).status_code == 403  # fmt: skip
        assert httpx.delete(f"{alice}/api/v1/dealers/carol", headers=owner).status_code == 200
        assert httpx.get(f"{alice}/api/v1/dealers", headers=owner).json()["items"] == []
        assert httpx.delete(f"{alice}/api/v1/dealers/carol", headers=owner).status_code == 400


runner = CliRunner()


def _cli(*args: str, ok: bool = True) -> str:
    result = runner.invoke(
        app, list(args), env={"VEIL_EMAIL": "o@alice.org", "VEIL_PASSWORD": OWNER_PW}
    )
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_the_cli_approves_lists_and_removes_dealers() -> None:
    with _served("alice", "carol", "dave") as (alice, carol, dave):
        out = _cli("dealers", "add", f"carol={carol}", "--url", alice)
        fp = httpx.get(f"{carol}/api/v1/info").json()["mpc"]["fingerprint"]
        assert "accepts crypto provider carol" in out and fp in out
        dave_key = httpx.get(f"{dave}/api/v1/info").json()["mpc"]["public_key"]
        _cli("dealers", "add", f"dave={dave_key}", "--url", alice)
        listed = _cli("dealers", "list", "--url", alice)
        assert "carol" in listed and "dave" in listed and fp in listed
        _cli("dealers", "remove", "carol", "--url", alice)
        assert "carol" not in _cli("dealers", "list", "--url", alice)
        assert "NAME=URL" in _cli("dealers", "add", "carol", "--url", alice, ok=False)
        assert "could not read the MPC key" in _cli(
            "dealers", "add", "x=http://127.0.0.1:9", "--url", alice, ok=False
        )
        assert "--dealer" in _cli("node", "serve", "--help")


def test_serve_approves_the_dealers_it_is_given() -> None:
    from veil.cli import _approve_dealers

    node = _node("alice")
    carol = veil.VirtualWorker("carol")
    key = veil.mpc.session.public_key(carol).hex()
    bob_node = _node("bob")
    for n in (node, bob_node):
        _approve_dealers(n, [f"carol={key}"])
    assert [d.key for d in veil.mpc.dealers(veil.VirtualWorker(node=node)).list()] == [key]
    audit = veil.VirtualWorker(node=node).audit()
    assert any(e.action == "mpc.dealer.add" and "carol" in e.detail for e in audit)
    (_, alice), (_, bob) = _pair(node), _pair(bob_node)  # scientists: no shortcut needed
    x = torch.tensor([1.0, 2.0]).share(alice, bob, crypto_provider=carol)
    assert x.shape == torch.Size([2])
