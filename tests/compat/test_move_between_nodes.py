"""``ptr.move(alice)`` node to node (PySyft 0.2's semantics): the data goes from bob to alice
without passing through the client, under the permission ``get()`` needs, only to
destinations bob's owner approved; and what a hostile scientist can do with the new paths."""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import torch

import veil as sy
from veil.errors import DestinationNotApproved, InvalidRequest, PermissionDenied
from veil.node import Node
from veil.node.server import serve_in_thread
from veil.serde import codec
from veil.serde.messages import Call, GetObject, SendObject
from veil.serde.tensors import tensor_to_data
from veil.transfer.node import local_address, state_of

PW = "owner-password-1"


def _count_messages(worker: Any) -> list[str]:
    """Record the type of every message ``worker`` sends."""
    seen: list[str] = []
    real = worker.call

    def call(msg: Any, *a: Any, **k: Any) -> Any:
        seen.append(type(msg).__name__)
        return real(msg, *a, **k)

    worker.call = call
    return seen


# -- VirtualWorkers ------------------------------------------------------------------------
def test_a_move_between_virtual_workers_goes_node_to_node_and_keeps_requires_grad() -> None:
    bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    x = torch.tensor([1.0, -2.0, 3.0]).send(bob)
    y = x * 2
    sent = _count_messages(bob)
    moved = y.move(alice, requires_grad=True)
    assert "GetObject" not in sent  # the client never fetched the data
    assert moved.location is alice and moved.requires_grad
    out = moved.get()
    assert torch.equal(out.detach(), torch.tensor([2.0, -4.0, 6.0])) and out.requires_grad
    assert bob.node.object_count() == 1  # x stays; y moved
    actions = [e.action for e in bob.audit()]
    assert "move.out" in actions and "move.done" in actions
    ((moved * moved).sum()).backward()  # a leaf that requires grad on alice
    torch.testing.assert_close(moved.grad.get(), torch.tensor([4.0, -8.0, 12.0]))


def test_moving_private_data_needs_an_approved_request_and_then_works() -> None:
    owner, alice = sy.VirtualWorker("clinic"), sy.VirtualWorker("alice")
    owner.datasets.create("ages", private=torch.tensor([30.0, 40.0]), mock=torch.zeros(2))
    owner.create_user("ds@x.org", "pw-123456")
    sci = owner.login("ds@x.org", "pw-123456")
    derived = sci.datasets["ages"].private + 1
    with pytest.raises(PermissionDenied, match="private"):
        derived.move(alice)
    assert alice.node.object_count() == 0 and derived.location is sci  # nothing left bob
    req = derived.request("to train on alice")
    owner.requests.approve(req.id)
    moved = derived.move(alice)
    assert torch.equal(moved.get(), torch.tensor([31.0, 41.0]))


def test_a_dataset_s_data_is_never_moved_away_even_by_its_owner() -> None:
    owner, alice = sy.VirtualWorker("clinic"), sy.VirtualWorker("alice")
    owner.datasets.create("ages", private=torch.tensor([30.0, 40.0]), mock=torch.zeros(2))
    data = owner.datasets["ages"].private
    with pytest.raises(PermissionDenied, match="clone"):
        data.move(alice)
    assert alice.node.object_count() == 0
    assert torch.equal(owner.datasets["ages"].private.get(), torch.tensor([30.0, 40.0]))


def test_a_ticket_is_used_once_and_stores_into_its_user_s_account_only() -> None:
    alice = sy.VirtualWorker("alice")
    alice.create_user("a@x.org", "pw-123456")
    alice.create_user("b@x.org", "pw-123456")
    a, b = alice.login("a@x.org", "pw-123456"), alice.login("b@x.org", "pw-123456")
    t = sy.transfer.ticket(a)
    frame = codec.encode(Call(SendObject(tensor_to_data(torch.ones(2)))))
    from veil.transfer.node import receive

    info = receive(alice.node, t.ticket, frame)
    assert [o.id for o in a.objects()] == [info.id] and b.objects() == []
    with pytest.raises(PermissionDenied, match="used once"):
        receive(alice.node, t.ticket, frame)  # replayed
    with pytest.raises(PermissionDenied, match="used once"):
        receive(alice.node, "x" * 43, frame)  # forged
    expired = sy.transfer.ticket(a)
    st = state_of(alice.node)
    key = next(iter(st._tickets))
    st._tickets[key] = type(st._tickets[key])(st._tickets[key].session, time.time() - 1)
    with pytest.raises(PermissionDenied):
        receive(alice.node, expired.ticket, frame)
    private = codec.encode(Call(SendObject(tensor_to_data(torch.ones(2)), private=True)))
    with pytest.raises(InvalidRequest, match="plain data"):
        receive(alice.node, sy.transfer.ticket(alice).ticket, private)  # even the owner's
    assert len(a.objects()) == 1


def test_a_ticket_dies_with_its_user_s_sessions() -> None:
    """Ending a user's sessions (revoke_sessions: a stolen token, a user logging out
    everywhere) voids the move tickets they hold: no delivery lands in their account after."""
    alice = sy.VirtualWorker("alice")
    alice.create_user("a@x.org", "pw-123456")
    a = alice.login("a@x.org", "pw-123456")
    before = sy.transfer.ticket(a)
    alice.node.revoke_sessions(a.transport.session, "a@x.org")  # a user may end their own
    after = sy.transfer.ticket(a)  # issued after the revocation: valid
    frame = codec.encode(Call(SendObject(tensor_to_data(torch.ones(2)))))
    from veil.transfer.node import receive

    with pytest.raises(PermissionDenied, match="were ended after it was issued"):
        receive(alice.node, before.ticket, frame)
    assert a.objects() == []
    info = receive(alice.node, after.ticket, frame)
    assert [o.id for o in a.objects()] == [info.id]


def test_tickets_per_user_are_bounded() -> None:
    alice = sy.VirtualWorker("alice")
    for _ in range(32):
        sy.transfer.ticket(alice)
    with pytest.raises(InvalidRequest, match="unused move tickets"):
        sy.transfer.ticket(alice)


# -- node servers ---------------------------------------------------------------------------
@pytest.fixture()
def two_servers() -> Iterator[dict[str, Any]]:
    bob_node = Node("bob", owner_email="o@bob.org", owner_password=PW)
    alice_node = Node("alice", owner_email="o@alice.org", owner_password=PW)
    with ExitStack() as stack:
        bob_url = stack.enter_context(serve_in_thread(bob_node))
        alice_url = stack.enter_context(serve_in_thread(alice_node))
        bob_owner = sy.connect(bob_url, email="o@bob.org", password=PW)
        alice_owner = sy.connect(alice_url, email="o@alice.org", password=PW)
        for owner in (bob_owner, alice_owner):
            owner.create_user("ds@x.org", "pw-123456")
        bob = sy.connect(bob_url, email="ds@x.org", password="pw-123456")
        alice = sy.connect(alice_url, email="ds@x.org", password="pw-123456")
        for w in (bob_owner, alice_owner, bob, alice):
            stack.callback(w.close)
        yield {"bob": bob, "alice": alice, "bob_owner": bob_owner, "alice_owner": alice_owner,
               "bob_node": bob_node, "alice_node": alice_node, "bob_url": bob_url,
               "alice_url": alice_url}  # fmt: skip


def _received_bytes(worker: Any) -> list[int]:
    """Bytes of every reply ``worker``'s op stream brings back."""
    sizes: list[int] = []
    net = worker._net
    for name in ("roundtrip", "roundtrip_parts"):
        real = getattr(net, name)

        def wrapped(*a: Any, _real: Any = real, **k: Any) -> Any:
            out = _real(*a, **k)
            sizes.append(len(out))
            return out

        setattr(net, name, wrapped)
    return sizes


def test_a_move_between_node_servers_goes_node_to_node_once_the_owner_approved_it(
    two_servers: dict[str, Any],
) -> None:
    s = two_servers
    bob, alice = s["bob"], s["alice"]
    sy.transfer.peers(s["bob_owner"]).add("alice", s["alice_url"])
    big = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB
    x = bob.send(big)
    y = x + 1
    got = _received_bytes(bob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # direct: no fall-back warning
        moved = y.move(alice, requires_grad=True)
    assert sum(got) < 64 * 1024  # the 4 MiB never came to the client
    assert moved.location is alice and moved.requires_grad
    assert torch.equal(moved.get().detach(), big + 1)
    assert s["bob_node"].object_count() == 1 and s["alice_node"].object_count() == 1
    objs = alice.objects()
    assert [o.description for o in objs] == ["moved from node 'bob'"]
    assert any(e.action == "move.done" for e in s["bob_owner"].audit())


def test_without_the_owner_s_approval_a_move_passes_through_the_client_and_says_so(
    two_servers: dict[str, Any],
) -> None:
    s = two_servers
    x = s["bob"].send(torch.tensor([5.0, 6.0]))
    with pytest.warns(UserWarning, match="veil peers add"):
        moved = x.move(s["alice"])
    assert torch.equal(moved.get(), torch.tensor([5.0, 6.0]))
    assert s["bob_node"].object_count() == 0


def test_private_data_does_not_move_and_the_refusal_does_not_depend_on_its_values(
    two_servers: dict[str, Any],
) -> None:
    s = two_servers
    sy.transfer.peers(s["bob_owner"]).add("alice", s["alice_url"])
    seen = []
    for values in (torch.tensor([1.0, 2.0]), torch.tensor([1e6, -3.0])):
        name = f"d{len(seen)}"
        s["bob_owner"].datasets.create(name, private=values, mock=torch.zeros(2))
        derived = s["bob"].datasets[name].private * 3
        with pytest.raises(PermissionDenied) as err:
            derived.move(s["alice"])
        seen.append(str(err.value).replace(name, "D").replace(str(derived.id), "N"))
    assert seen[0] == seen[1]
    assert s["alice_node"].object_count() == 0


def test_a_scientist_cannot_make_a_node_connect_where_it_likes(
    two_servers: dict[str, Any],
) -> None:
    s = two_servers
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    hits: list[Any] = []

    def accept() -> None:
        try:
            hits.append(listener.accept())
        except OSError:
            pass

    th = threading.Thread(target=accept)
    th.start()
    x = s["bob"].send(torch.ones(2))
    s["bob"].flush()
    evil = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for dest in (evil, local_address(s["alice_node"]), "alice"):
        with pytest.raises(DestinationNotApproved):
            s["bob"]._authorized("POST", "/api/v1/transfer/push",
                                 json={"id": x.id, "destination": dest, "ticket": "t"})  # fmt: skip
    th.join()
    listener.close()
    assert hits == []  # bob never connected
    assert s["bob_node"].object_count() == 1
    with pytest.raises(PermissionDenied, match="owner or an admin"):
        sy.transfer.peers(s["bob"]).add("evil", evil)  # a scientist approves nothing
    with pytest.raises(PermissionDenied):
        sy.transfer.peers(s["bob"]).list()  # nor sees where the owner's node connects
    assert sy.transfer.peers(s["bob_owner"]).list() == []


def test_the_receiving_endpoint_refuses_what_a_ticket_does_not_cover(
    two_servers: dict[str, Any],
) -> None:
    s = two_servers
    url = s["alice_url"] + "/api/v1/transfer/receive"
    frame = bytes(codec.encode(Call(SendObject(tensor_to_data(torch.ones(2))))))
    r = httpx.post(url, content=frame, headers={"X-Veil-Ticket": "forged"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    t = sy.transfer.ticket(s["alice"]).ticket
    not_a_send = bytes(codec.encode(Call(GetObject(1))))
    r = httpx.post(url, content=not_a_send, headers={"X-Veil-Ticket": t})
    assert r.status_code == 400
    r = httpx.post(url, content=frame, headers={"X-Veil-Ticket": t})  # the ticket was tried
    assert r.status_code == 403
    assert s["alice_node"].object_count() == 0
    host, port = s["alice_url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:  # announced, never sent
        raw.sendall(
            b"POST /api/v1/transfer/receive HTTP/1.1\r\nHost: x\r\nX-Veil-Ticket: x\r\n"
            b"Content-Length: %d\r\n\r\n" % (s["alice_node"].max_message_bytes + 1)
        )
        assert raw.recv(64).startswith(b"HTTP/1.1 413")


def test_a_failed_delivery_deletes_nothing(two_servers: dict[str, Any]) -> None:
    s = two_servers
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{free.getsockname()[1]}"
    sy.transfer.peers(s["bob_owner"]).add("gone", dead)
    x = s["bob"].send(torch.tensor([1.0, 2.0]))
    s["bob"].flush()
    t = sy.transfer.ticket(s["alice"]).ticket
    with pytest.raises(sy.errors.TransportError, match="nothing was moved"):
        s["bob"]._authorized("POST", "/api/v1/transfer/push",
                             json={"id": x.id, "destination": dead, "ticket": t})  # fmt: skip
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))


def test_the_owner_approves_destinations_from_the_command_line(two_servers: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from veil.cli import app

    s = two_servers
    env = {"VEIL_EMAIL": "o@bob.org", "VEIL_PASSWORD": PW}
    run = lambda *a: CliRunner().invoke(app, [*a, "--url", s["bob_url"]], env=env)  # noqa: E731
    out = run("peers", "add", "alice", s["alice_url"])
    assert out.exit_code == 0 and "may move objects to alice" in out.output
    listed = run("peers", "list")
    assert "alice" in listed.output and s["alice_url"] in listed.output
    x = s["bob"].send(torch.tensor([3.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(x.move(s["alice"]).get(), torch.tensor([3.0]))
    assert run("peers", "remove", "alice").exit_code == 0
    bad = run("peers", "add", "x", "file:///etc/passwd")
    assert bad.exit_code == 1 and "base URL" in bad.output


# -- models sent in place -------------------------------------------------------------------
def test_a_model_moves_node_to_node_and_keeps_training_with_its_optimizer() -> None:
    bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    ref = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    model.send(bob)
    sent = _count_messages(bob)
    assert model.move(alice) is model and model.location is alice
    assert "GetObject" not in sent and bob.node.object_count() == 0
    for m, o, data in ((model, opt, (x.send(alice), y.send(alice))), (ref, ref_opt, (x, y))):
        o.zero_grad()
        ((m(data[0]) - data[1]) ** 2).mean().backward()
        o.step()
    model.get()
    for got, want in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(got, want)


def test_a_model_that_cannot_move_entirely_stays_where_it_was(monkeypatch: Any) -> None:
    bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    model = torch.nn.Linear(3, 2)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    model.send(bob)
    real, calls = sy.PointerTensor.move, []

    def flaky(self: Any, destination: Any, requires_grad: bool = False) -> Any:
        calls.append(destination.name)
        if len(calls) == 2:
            raise PermissionDenied("refused for the test")
        return real(self, destination, requires_grad)

    monkeypatch.setattr(sy.PointerTensor, "move", flaky)
    with pytest.raises(PermissionDenied):
        model.move(alice)
    monkeypatch.undo()
    assert model.location is bob and alice.node.object_count() == 0
    assert {k: v for k, v in model.get().state_dict().items()}.keys() == want.keys()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k])


# -- what a review of the first version found ----------------------------------------------
def test_a_write_after_the_check_does_not_reach_the_delivered_copy(monkeypatch: Any) -> None:
    import veil.transfer.node as tn

    owner, alice = sy.VirtualWorker("clinic"), sy.VirtualWorker("alice")
    owner.datasets.create("d", private=torch.full((4,), 42.0), mock=torch.zeros(4))
    owner.create_user("ds@x.org", "pw-123456")
    sci = owner.login("ds@x.org", "pw-123456")
    y = sci.send(torch.zeros(4))
    secret = sci.datasets["d"].private
    real = tn.receive

    def slow_receive(node: Any, ticket: str, frame: Any) -> Any:
        y.add_(secret)  # between the snapshot and the delivery: y is now private on clinic
        sci.flush()
        return real(node, ticket, frame)

    monkeypatch.setattr(tn, "receive", slow_receive)
    moved = y.move(alice)
    assert torch.equal(moved.get(), torch.zeros(4))  # the copy taken under the lock


def test_refused_or_indirect_moves_leave_no_tickets_behind(two_servers: dict[str, Any]) -> None:
    s = two_servers
    tickets = state_of(s["alice_node"])._tickets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(40):  # more than a user's tickets: no approved peer, so via the client
            assert s["bob"].send(torch.tensor([float(i)])).move(s["alice"]).get().item() == i
    assert tickets == {}
    sy.transfer.peers(s["bob_owner"]).add("alice", s["alice_url"])
    s["bob_owner"].datasets.create("d", private=torch.ones(2), mock=torch.zeros(2))
    for _ in range(3):
        with pytest.raises(PermissionDenied):
            (s["bob"].datasets["d"].private + 1).move(s["alice"])
    assert tickets == {}


def test_a_forged_ticket_costs_the_source_no_copy_and_no_audit_row(
    two_servers: dict[str, Any],
) -> None:
    s = two_servers
    sy.transfer.peers(s["bob_owner"]).add("alice", s["alice_url"])
    x = s["bob"].send(torch.ones(3))
    s["bob"].flush()
    with pytest.raises(PermissionDenied, match="peer 'alice'"):
        s["bob"]._authorized("POST", "/api/v1/transfer/push",
                             json={"id": x.id, "destination": "alice", "ticket": "forged"})  # fmt: skip
    assert not any(e.action.startswith("move") for e in s["bob_owner"].audit())
    assert torch.equal(x.get(), torch.ones(3))


def test_moves_at_once_are_bounded_and_one_object_moves_once() -> None:
    import veil.transfer.node as tn

    bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    st = state_of(bob.node)
    x = bob.send(torch.ones(2))
    st._pushes[bob.session.user_id] = tn.MAX_USER_PUSHES
    with pytest.raises(InvalidRequest, match="retry"):
        x.move(alice)
    st._pushes.clear()
    st._moving.add(bob.node.lookup(x.id, bob.session.user_id).id)
    with pytest.raises(InvalidRequest, match="being moved already"):
        x.move(alice)
    st._moving.clear()
    assert alice.node.object_count() == 0 and state_of(alice.node)._tickets == {}
    assert torch.equal(x.move(alice).get(), torch.ones(2))


def test_peers_reveal_neither_their_urls_nor_their_names_to_a_scientist(
    two_servers: dict[str, Any],
) -> None:
    s = two_servers
    with pytest.raises(InvalidRequest, match="user:password"):
        sy.transfer.peers(s["bob_owner"]).add("a", "http://admin:pw@10.0.0.1:8765")
    sy.transfer.peers(s["bob_owner"]).add("carol", "http://127.0.0.1:9")
    x = s["bob"].send(torch.ones(1))
    s["bob"].flush()
    said = []
    for dest in ("nobody", "http://10.1.2.3:1"):
        with pytest.raises(DestinationNotApproved) as err:
            s["bob"]._authorized("POST", "/api/v1/transfer/push",
                                 json={"id": x.id, "destination": dest, "ticket": "t"})  # fmt: skip
        said.append(str(err.value))
    assert said[0] == said[1] and "127.0.0.1:9" not in said[0]
    with pytest.raises(sy.errors.TransportError) as err:
        s["bob"]._authorized("POST", "/api/v1/transfer/push",
                             json={"id": x.id, "destination": "carol", "ticket": "t"})  # fmt: skip
    assert "127.0.0.1:9" not in str(err.value)


def test_two_logins_on_one_node_still_move_to_each_other() -> None:
    owner = sy.VirtualWorker("n")
    owner.create_user("ds@x.org", "pw-123456")
    sci = owner.login("ds@x.org", "pw-123456")
    moved = sci.send(torch.ones(2)).move(owner)
    assert moved.location is owner and torch.equal(moved.get(), torch.ones(2))
