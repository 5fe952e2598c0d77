"""Session tokens: expiry and revocation hold on open connections (WebSocket and bulk lane)."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

import veil
from veil.errors import SessionExpired
from veil.node import Node
from veil.node.framing import bulk_hello, recv_frame, send_frame
from veil.node.server import serve_in_thread
from veil.node.tokens import TokenTable
from veil.serde import codec
from veil.serde.messages import Call, Done, ErrorReply, GetInfo, NodeInfo

EMAIL, PASSWORD = "owner@tokens.test", "owner-password-4"
ADMIN, ADMIN_PASSWORD = "admin@tokens.test", "admin-password-4"
SCI, SCI_PASSWORD = "sci@tokens.test", "sci-password-4"
_LEGACY = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[tuple[Node, str]]:
    node = Node("tokens", owner_email=EMAIL, owner_password=PASSWORD)
    node.create_user(ADMIN, ADMIN_PASSWORD, role="admin")
    node.create_user(SCI, SCI_PASSWORD)
    with serve_in_thread(node) as url:
        yield node, url


def _token(url: str, email: str, password: str) -> str:
    r = httpx.post(url + "/api/v1/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _ws(url: str, token: str) -> ClientConnection:
    return ws_connect(  # type: ignore[no-any-return]
        url.replace("http://", "ws://") + "/api/v1/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
        **_LEGACY,
    )


def _ws_call(ws: ClientConnection) -> Any:
    ws.send(b"\x00" + codec.encode(Call(GetInfo())))
    return codec.decode_reply(ws.recv(timeout=10)[1:])  # type: ignore[index]


def _bulk(url: str, token: str) -> socket.socket:
    port = httpx.get(url + "/api/v1/info").json()["bulk_port"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(bulk_hello(token))
    assert isinstance(codec.decode_reply(recv_frame(sock, 2**20)), Done)
    return sock


def _bulk_call(sock: socket.socket) -> Any:
    send_frame(sock, codec.encode(Call(GetInfo())))
    return codec.decode_reply(recv_frame(sock, 2**20))


def _refused_then_closed(reply: Any, closed: Any) -> None:
    assert isinstance(reply, ErrorReply) and reply.code == "session_expired", reply
    assert "log in again" in reply.message
    with pytest.raises(Exception):  # noqa: B017 - closed: any error of the transport
        closed()


def test_token_table_expires_and_revokes() -> None:
    clock = Clock()
    tokens = TokenTable(ttl_s=60, clock=clock)
    a, b, c = tokens.issue(1), tokens.issue(1), tokens.issue(2)
    assert (tokens.user_of(a), tokens.user_of(c)) == (1, 2)
    clock.now += 61
    assert tokens.user_of(a) is None  # expired
    d = tokens.issue(1)
    assert tokens.revoke_user(1) == 1  # only d was still live
    assert tokens.user_of(d) is None and tokens.user_of(b) is None
    assert len(tokens) == 0
    with pytest.raises(ValueError, match="ttl_s"):
        TokenTable(ttl_s=0)


def test_an_open_websocket_and_bulk_connection_stop_working_when_the_token_expires(
    server: tuple[Node, str],
) -> None:
    node, url = server
    clock = Clock()
    node._tokens.clock = clock
    token = _token(url, SCI, SCI_PASSWORD)
    ws, bulk = _ws(url, token), _bulk(url, token)
    assert isinstance(_ws_call(ws), NodeInfo) and isinstance(_bulk_call(bulk), NodeInfo)

    clock.now += 12 * 3600 + 1

    _refused_then_closed(_ws_call(ws), lambda: _ws_call(ws))
    _refused_then_closed(_bulk_call(bulk), lambda: _bulk_call(bulk))
    ws.close()
    bulk.close()


def test_revoking_a_users_sessions_fails_their_open_connections(
    server: tuple[Node, str],
) -> None:
    node, url = server
    stolen = _token(url, SCI, SCI_PASSWORD)
    ws, bulk = _ws(url, stolen), _bulk(url, stolen)
    sci = veil.connect(url, email=SCI, password=SCI_PASSWORD)
    x = torch.ones(3).send(sci)
    big = torch.randn(2**21).send(sci)  # opens the client's bulk lane too
    owner = {"Authorization": f"Bearer {_token(url, EMAIL, PASSWORD)}"}

    r = httpx.post(f"{url}/api/v1/users/{SCI}/revoke-sessions", headers=owner)

    assert r.status_code == 200 and r.json() == {"email": SCI, "revoked": 2}
    _refused_then_closed(_ws_call(ws), lambda: _ws_call(ws))
    _refused_then_closed(_bulk_call(bulk), lambda: _bulk_call(bulk))
    h = {"Authorization": f"Bearer {stolen}"}
    assert httpx.get(url + "/api/v1/requests", headers=h).status_code == 401
    # a client holding the password logs in again by itself, on both lanes
    assert torch.equal((x + 1).get(), torch.full((3,), 2.0))
    assert big.get().shape == (2**21,)
    audit = [(e.action, e.detail) for e in veil.VirtualWorker(node=node).audit()]
    assert ("revoke_sessions", SCI) in audit
    ws.close()
    bulk.close()
    sci.close()


@pytest.mark.parametrize(
    ("who", "target", "status"),
    [
        ("sci", SCI, 200),  # log yourself out everywhere
        ("sci", ADMIN, 403),
        ("sci", "nobody@tokens.test", 403),  # not 404: no user enumeration
        ("admin", SCI, 200),
        ("admin", EMAIL, 403),  # an admin cannot lock the owner out
        ("admin", "nobody@tokens.test", 404),
        ("owner", ADMIN, 200),
    ],
)
def test_who_may_revoke_whose_sessions(
    server: tuple[Node, str], who: str, target: str, status: int
) -> None:
    _, url = server
    creds = {
        "sci": (SCI, SCI_PASSWORD),
        "admin": (ADMIN, ADMIN_PASSWORD),
        "owner": (EMAIL, PASSWORD),
    }
    h = {"Authorization": f"Bearer {_token(url, *creds[who])}"}
    r = httpx.post(f"{url}/api/v1/users/{target}/revoke-sessions", headers=h)
    assert r.status_code == status, r.text


def test_the_client_revokes_sessions_and_logs_itself_in_again(server: tuple[Node, str]) -> None:
    _, url = server
    stolen = _token(url, SCI, SCI_PASSWORD)
    with veil.connect(url, email=SCI, password=SCI_PASSWORD) as sci:
        assert sci.revoke_sessions(SCI) == 2  # its own and the stolen one
        assert sci.info().user == SCI  # logged in again
    with pytest.raises(SessionExpired):
        raise _error_of(
            httpx.get(url + "/api/v1/users", headers={"Authorization": f"Bearer {stolen}"})
        )


def _error_of(r: httpx.Response) -> Exception:
    from veil.errors import error_from_code

    err = r.json()["error"]
    return error_from_code(err["code"], err["message"])
