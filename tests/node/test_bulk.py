"""The bulk lane: large frames over plain TCP beside the WebSocket, and attacks on it."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

import veil
from veil.node import Node
from veil.node.framing import BULK_HELLO, BULK_MAGIC, bulk_hello, recv_frame, send_frame
from veil.node.server import ServerLimits, serve_in_thread
from veil.node.server import bulk as bulk_module
from veil.serde import codec
from veil.serde.messages import Call, Done, ErrorReply, GetInfo, NodeInfo
from veil.version import WIRE_VERSION

EMAIL, PASSWORD = "owner@bulk.test", "owner-password-9"
BIG = 2**21  # 8 MiB of float32: over the lane's threshold


@pytest.fixture
def server() -> Iterator[tuple[Node, str]]:
    node = Node("bulk", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node) as url:
        yield node, url


def _port(url: str) -> int:
    port = httpx.get(url + "/api/v1/info").json()["bulk_port"]
    assert isinstance(port, int)
    return port


def _alive(url: str) -> None:
    with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
        x = torch.arange(float(BIG)).send(c)
        assert torch.equal(x.get()[-3:], torch.tensor([BIG - 3.0, BIG - 2.0, BIG - 1.0]))


def test_large_tensors_take_the_bulk_lane_and_arrive_exactly(server: tuple[Node, str]) -> None:
    node, url = server
    t = torch.randn(BIG)
    with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
        assert c.bulk_port == _port(url)
        small = torch.ones(3).send(c)
        assert c.transport.bulk is None  # small frames stay on the WebSocket
        ptr = t.send(c)
        assert c.transport.bulk is not None
        assert torch.equal(node.lookup(ptr.id).value, t)
        back = ptr.get()
        assert torch.equal(back, t)
        back += 1  # the fetched tensor owns a writable buffer
        assert torch.equal(small.get(), torch.ones(3))


def test_a_large_reply_the_caller_expects_takes_the_bulk_lane(server: tuple[Node, str]) -> None:
    """Frames from BULK_MIN_BYTES take the lane; so does a small request whose large reply
    the caller announces (call_op(expect_bytes=...), as MPC openings do), and expect_bytes
    is a hint for the transport, never an argument of the op."""
    from veil.node.framing import BULK_MIN_BYTES

    node, url = server
    n = BULK_MIN_BYTES // 4  # float32: exactly the threshold
    with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
        x = torch.ones(8).send(c)
        assert c.transport.bulk is None
        reply = c.call_op("torch.add", x, 1, expect_bytes=BULK_MIN_BYTES)
        assert c.transport.bulk is not None  # the lane opened for the announced reply
        assert torch.equal(node.lookup(reply.id).value, torch.full((8,), 2.0))  # type: ignore[union-attr]
    with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
        ptr = torch.arange(float(n)).send(c)
        assert c.transport.bulk is not None and c.transport.websocket is None
        assert torch.equal(ptr.get(), torch.arange(float(n)))


def test_an_unreachable_bulk_lane_falls_back_to_the_websocket(
    server: tuple[Node, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A node behind a proxy or firewall advertises a port this client cannot reach: large
    frames then go over the WebSocket (with one warning), and the lane is not retried on
    every call."""
    from veil.node import transports

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    _, url = server
    with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
        c.transport.bulk_port = port
        t = torch.randn(BIG // 8)
        with caplog.at_level("WARNING", logger="veil.node.transports"):
            ptr = t.send(c)
            assert torch.equal(ptr.get(), t)
        assert c.transport.bulk is None and c.transport.websocket is not None
        assert c.transport.bulk_down_until > time.monotonic() + transports.BULK_RETRY_S / 2
        assert sum("cannot open its bulk lane" in r.getMessage() for r in caplog.records) == 1


def test_an_https_node_gets_no_frame_outside_tls() -> None:
    """The bulk lane is plain TCP: a client of an https node never uses it."""
    from veil.node.transports import WebSocketTransport

    def make(url: str) -> WebSocketTransport:
        return WebSocketTransport(url, name="n", token=lambda: "t", login=lambda: None,
                                  bulk_port=9999)  # fmt: skip

    assert make("https://node.example:8443").bulk_port is None
    assert make("http://127.0.0.1:8765").bulk_port == 9999


def test_without_a_bulk_lane_everything_goes_over_the_websocket() -> None:
    node = Node("ws-only", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node, bulk_port=None) as url:
        assert httpx.get(url + "/api/v1/info").json()["bulk_port"] is None
        t = torch.randn(BIG)
        with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
            assert torch.equal(t.send(c).get(), t)
            assert c.transport.bulk is None


def _raw(url: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _port(url)), timeout=10)


@pytest.mark.parametrize(
    "first_bytes",
    [
        bulk_hello("not-a-token"),
        BULK_HELLO.pack(b"HTTP", WIRE_VERSION, 0),
        BULK_HELLO.pack(BULK_MAGIC, WIRE_VERSION + 1, 0),
    ],
    ids=["bad-token", "bad-magic", "other-version"],
)
def test_a_connection_without_a_valid_hello_is_refused(
    server: tuple[Node, str], first_bytes: bytes
) -> None:
    _, url = server
    with _raw(url) as sock:
        sock.sendall(first_bytes)
        reply = codec.decode_reply(recv_frame(sock, 2**20))
        assert isinstance(reply, ErrorReply)
        assert reply.code in ("authentication_failed", "session_expired", "version_mismatch")
        with pytest.raises((ConnectionError, OSError)):  # no op runs on a refused connection
            send_frame(sock, codec.encode(Call(GetInfo())))
            if not sock.recv(1):
                raise ConnectionError("closed")
    _alive(url)


def _token(url: str) -> str:
    r = httpx.post(url + "/api/v1/login", json={"email": EMAIL, "password": PASSWORD})
    return str(r.json()["token"])


def test_an_oversized_announced_frame_is_refused_before_any_allocation(
    server: tuple[Node, str],
) -> None:
    node, url = server
    with _raw(url) as sock:
        sock.sendall(bulk_hello(_token(url)))
        assert isinstance(codec.decode_reply(recv_frame(sock, 2**20)), Done)
        sock.sendall(struct.pack(">Q", node.max_message_bytes + 1))
        reply = codec.decode_reply(recv_frame(sock, 2**20))
        assert isinstance(reply, ErrorReply) and reply.code == "message_too_large"
    _alive(url)


def test_garbage_and_truncated_frames_get_clean_errors(server: tuple[Node, str]) -> None:
    _, url = server
    with _raw(url) as sock:
        sock.sendall(bulk_hello(_token(url)))
        assert isinstance(codec.decode_reply(recv_frame(sock, 2**20)), Done)
        send_frame(sock, b"\x80\x03garbage-not-a-frame")
        reply = codec.decode_reply(recv_frame(sock, 2**20))
        assert isinstance(reply, ErrorReply) and reply.code == "serde_error"
        send_frame(sock, codec.encode(Call(GetInfo())))  # the connection still works
        assert isinstance(codec.decode_reply(recv_frame(sock, 2**20)), NodeInfo)
    with _raw(url) as sock:  # a frame cut short by a dropped connection
        sock.sendall(bulk_hello(_token(url)))
        recv_frame(sock, 2**20)
        sock.sendall(struct.pack(">Q", 1000) + b"VL")
    _alive(url)


def test_a_silent_peer_is_dropped_after_the_handshake_timeout(
    server: tuple[Node, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = server
    monkeypatch.setattr(bulk_module, "HANDSHAKE_TIMEOUT_S", 0.2)
    with _raw(url) as sock:
        sock.settimeout(30)
        assert sock.recv(1) == b""  # the node closed it: no thread is held forever
    _alive(url)


def test_close_of_a_client_that_used_only_the_bulk_lane_sends_its_releases(
    server: tuple[Node, str],
) -> None:
    node, url = server
    c = veil.connect(url, email=EMAIL, password=PASSWORD)
    ptr = torch.randn(BIG).send(c)
    assert (
        c.transport.bulk is not None and c.transport.websocket is None
    )  # the only lane this client opened
    assert node.object_count() == 1
    del ptr  # queued for release, to ride on the next call

    c.close()

    assert node.object_count() == 0


def test_close_of_a_virtual_worker_sends_its_releases() -> None:
    node = Node("v", owner_email=EMAIL, owner_password=PASSWORD)
    w = veil.VirtualWorker(node=node)
    ptr = torch.ones(3).send(w)
    del ptr
    assert node.object_count() == 1

    w.close()

    assert node.object_count() == 0


def _hello(url: str, token: str) -> tuple[socket.socket, object]:
    sock = _raw(url)
    sock.sendall(bulk_hello(token))
    return sock, codec.decode_reply(recv_frame(sock, 2**20))


def test_connections_over_the_cap_are_refused_with_a_clear_error() -> None:
    node = Node("capped", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node, limits=ServerLimits(bulk_max_connections=2)) as url:
        token = _token(url)
        held = [_hello(url, token) for _ in range(2)]
        assert all(isinstance(answer, Done) for _, answer in held)

        extra, answer = _hello(url, token)

        assert isinstance(answer, ErrorReply) and answer.code == "connect_error"
        assert "limit of 2 connections" in answer.message
        extra.close()
        held[0][0].close()  # a freed slot is usable again
        deadline = time.monotonic() + 20
        while True:
            sock, answer = _hello(url, token)
            sock.close()
            if isinstance(answer, Done) or time.monotonic() > deadline:
                break
        assert isinstance(answer, Done)
        held[1][0].close()


def test_a_client_goes_over_the_websocket_while_the_bulk_lane_is_full() -> None:
    node = Node("full", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node, limits=ServerLimits(bulk_max_connections=1)) as url:
        sock, answer = _hello(url, _token(url))
        assert isinstance(answer, Done)
        t = torch.randn(BIG)
        with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
            assert torch.equal(t.send(c).get(), t)
            assert c.transport.bulk is None  # refused, so the frames went over the WebSocket
        sock.close()


def test_an_idle_connection_is_closed_and_the_client_reconnects_by_itself() -> None:
    node = Node("idle", owner_email=EMAIL, owner_password=PASSWORD)
    with serve_in_thread(node, limits=ServerLimits(bulk_idle_timeout_s=0.5)) as url:
        sock, answer = _hello(url, _token(url))
        assert isinstance(answer, Done)
        sock.settimeout(30)
        notice = codec.decode_reply(recv_frame(sock, 2**20))  # nothing sent: the node speaks
        assert isinstance(notice, ErrorReply) and "idle" in notice.message
        assert sock.recv(1) == b""  # and closes: no thread is held
        sock.close()

        t = torch.randn(BIG)
        with veil.connect(url, email=EMAIL, password=PASSWORD) as c:
            x = t.send(c)
            stale = c.transport.bulk
            assert stale is not None
            assert select.select([stale], [], [], 30)[0]  # the node closed it, idle
            assert torch.equal(x.get(), t)  # no ConnectionLost: a fresh connection
            assert c.transport.bulk is not stale
