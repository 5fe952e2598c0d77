"""The transports to a node: in-process (a VirtualWorker's) and WebSocket + bulk lane (a NodeClient's)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from veil.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLost,
    MessageTooLarge,
    SessionExpired,
    Timeout,
    TransportError,
    error_from_code,
)
from veil.node.framing import (
    BULK_MIN_BYTES,
    Assembler,
    bulk_hello,
    readable,
    recv_frame,
    send_frame,
    split_frame,
    tune,
)
from veil.node.node import Node
from veil.node.users import Session
from veil.pointers.transport import Buffer, Transport
from veil.serde import codec
from veil.serde.messages import Done, ErrorReply

log = logging.getLogger("veil.node.transports")

#: Seconds a client goes over its WebSocket alone after the bulk lane could not be opened.
BULK_RETRY_S = 60.0
#: Seconds to wait for the bulk lane's TCP connection (a firewall that drops packets).
BULK_CONNECT_TIMEOUT_S = 5.0

# websockets >= 17 wants connect() used as a context manager unless legacy=True is passed.
_CONNECT_EXTRA: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
)


class InProcessTransport(Transport):
    """Hands each frame to a :class:`Node` in this process, as one user's session.

    Example:
        >>> import veil
        >>> from veil.serde import codec
        >>> from veil.serde.messages import Call, GetInfo
        >>> t = veil.VirtualWorker("alice").transport
        >>> t
        InProcessTransport('alice', user='owner@...')
        >>> codec.decode_reply(t.roundtrip(codec.encode(Call(GetInfo())))).name
        'alice'
    """

    def __init__(self, node: Node, session: Session) -> None:
        self.node = node
        self.session = session

    def roundtrip(self, frame: Buffer, expect_bytes: int = 0) -> bytearray:
        return self.node.handle_frame(self.session, frame)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"InProcessTransport({self.node.name!r}, user={self.session.email!r})"


class WebSocketTransport(Transport):
    """A node server's op stream (a WebSocket), with its bulk TCP lane for large frames.

    The connections open on the first round trip and reopen by themselves on the next
    one after a drop; the round trip that was in flight raises
    :class:`~veil.errors.ConnectionLost`. A frame the node refused because the session
    ended is sent again once, after ``login()``.

    Args:
        url: the node's base URL (``http://127.0.0.1:8765``).
        name: the node's name, for error messages.
        token: returns the session's current bearer token.
        login: logs in again (after which ``token()`` returns the new token).
        timeout: seconds to wait for any single reply.
        chunk_bytes: the largest WebSocket message; larger frames go in chunks.
        max_message_bytes: the largest reply frame accepted.
        node_max_message_bytes: the largest frame the node accepts (checked before sending).
        bulk_port: the node's bulk lane for frames of ``BULK_MIN_BYTES`` or more (None: none;
            not used for an ``https`` node: the lane is plain TCP, and no frame leaves TLS).
            When the lane cannot be reached, frames go over the WebSocket and the lane is
            tried again after ``BULK_RETRY_S``.

    Example:
        >>> t = WebSocketTransport("http://127.0.0.1:8765", name="hospital",
        ...                        token=lambda: "a-token", login=lambda: None)
        >>> t._ws_url(), t.websocket is None  # nothing opens before the first round trip
        ('ws://127.0.0.1:8765/api/v1/ws', True)
    """

    scatter = True

    def __init__(self, url: str, *, name: str, token: Callable[[], str],
                 login: Callable[[], None], timeout: float = 60.0,
                 chunk_bytes: int = codec.CHUNK_BYTES,
                 max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
                 node_max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
                 bulk_port: int | None = None) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.name = name
        self._token = token
        self._login = login
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.max_message_bytes = max_message_bytes
        self.node_max_message_bytes = node_max_message_bytes
        # The lane is plain TCP: a client of an https node keeps every frame inside TLS.
        self.bulk_port = None if urlsplit(self.url).scheme == "https" else bulk_port
        #: time.monotonic() before which the lane is not tried again (it could not be opened).
        self.bulk_down_until = 0.0
        #: The open op stream, or None.
        self.websocket: ClientConnection | None = None
        #: The open bulk lane connection, or None.
        self.bulk: socket.socket | None = None
        self._lock = threading.Lock()

    def roundtrip(self, frame: Buffer, expect_bytes: int = 0) -> Buffer:
        return self.roundtrip_parts([frame], expect_bytes)

    def roundtrip_parts(self, parts: list[Buffer], expect_bytes: int = 0) -> Buffer:
        size = sum(len(p) for p in parts)
        if size > self.node_max_message_bytes:
            raise MessageTooLarge(
                f"this message is {size} bytes, over the limit of node {self.name!r} "
                f"({self.node_max_message_bytes} bytes); send smaller pieces or ask the owner "
                "to raise the node's max message size"
            )
        with self._lock:
            reply = self._send_on_a_lane(parts, size, expect_bytes)
            if _session_ended(reply):  # refused before it ran: log in again, send it again
                self.close()
                self._login()
                reply = self._send_on_a_lane(parts, size, expect_bytes)
            return reply

    def _send_on_a_lane(self, parts: list[Buffer], size: int, expect_bytes: int) -> Buffer:
        try:
            # Large frames take the bulk lane; so does anything while it is the only lane
            # open (a client that only moved large tensors opens no WebSocket to close).
            if self.bulk_port is not None and (
                max(size, expect_bytes) >= BULK_MIN_BYTES
                or (self.websocket is None and self.bulk is not None)
            ):
                reply = self._bulk_roundtrip(parts)
                if reply is not None:
                    return reply  # else the lane is full or unreachable: take the WebSocket
            return self._ws_roundtrip(parts[0] if len(parts) == 1 else b"".join(parts))
        except TimeoutError as exc:
            self.close()
            raise Timeout(
                f"node {self.name!r} did not answer within {self.timeout}s; the call may "
                "still run there. Raise timeout= in veil.connect for long operations"
            ) from exc
        except (ConnectionClosed, OSError) as exc:
            self.close()
            raise ConnectionLost(
                f"the connection to node {self.name!r} at {self.url} dropped during a call "
                f"({type(exc).__name__}); it may or may not have run on the node. The next "
                "call reconnects."
            ) from exc

    # -- the WebSocket ---------------------------------------------------------------
    def _ws_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/api/v1/ws", "", ""))

    def _open(self) -> ClientConnection:
        for attempt in range(2):
            try:
                return connect(  # type: ignore[no-any-return,call-overload]
                    self._ws_url(),
                    additional_headers={"Authorization": f"Bearer {self._token()}"},
                    max_size=self.chunk_bytes + 64,
                    compression=None,
                    open_timeout=self.timeout,
                    close_timeout=1,
                    ping_interval=None,
                    **_CONNECT_EXTRA,
                )
            except InvalidStatus as exc:
                if attempt == 0 and exc.response.status_code in (401, 403):
                    self._login()  # the token expired or the node restarted
                    continue
                raise AuthenticationError(
                    f"node at {self.url} refused the connection: {exc}"
                ) from exc
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                raise ConnectError(f"cannot open the op stream to {self.url}: {exc}") from exc
        raise AssertionError("unreachable")

    def _ws_roundtrip(self, frame: Buffer) -> bytearray | memoryview:
        if self.websocket is None:
            self.websocket = self._open()
        ws = self.websocket
        for part in split_frame(frame, self.chunk_bytes):
            ws.send(part)
        del frame
        assembler = Assembler(self.max_message_bytes)
        while True:
            message = ws.recv(timeout=self.timeout)
            if isinstance(message, str):
                raise TransportError("node sent a text message on the op stream")
            reply = assembler.feed(message)
            if reply is not None:
                return reply

    # -- the bulk lane -----------------------------------------------------------------
    def _bulk_roundtrip(self, parts: list[Buffer]) -> memoryview | None:
        """One call over the bulk lane: the parts go out as they are (a tensor's own memory),
        and the reply is read into one buffer that decoded tensors share. None: the lane is
        at its connection limit or cannot be reached, nothing was sent."""
        if self.bulk is not None and readable(self.bulk):
            self._drop_bulk()  # unasked bytes or EOF: the node closed it (idle); reconnect
        if self.bulk is None:
            if time.monotonic() < self.bulk_down_until:
                return None  # it could not be reached a moment ago
            self.bulk = self._open_bulk()
            if self.bulk is None:
                return None
        send_frame(self.bulk, *parts)
        del parts
        return recv_frame(self.bulk, self.max_message_bytes)

    def _open_bulk(self) -> socket.socket | None:
        host = urlsplit(self.url).hostname or "127.0.0.1"
        for attempt in range(2):
            try:
                sock = socket.create_connection(
                    (host, self.bulk_port), timeout=min(self.timeout, BULK_CONNECT_TIMEOUT_S)
                )
            except OSError as exc:  # a firewall or a proxy in front: the WebSocket still works
                self.bulk_down_until = time.monotonic() + BULK_RETRY_S
                log.warning(
                    "node %r: cannot open its bulk lane (port %s: %s); large frames go over "
                    "the WebSocket (slower) for the next %.0f s. Open that port to this "
                    "client, or ask the owner to serve with --bulk-port -1",
                    self.name, self.bulk_port, exc, BULK_RETRY_S,
                )  # fmt: skip
                return None
            sock.settimeout(self.timeout)
            tune(sock)
            with contextlib.suppress(OSError):  # a node that refuses may close first
                sock.sendall(bulk_hello(self._token()))
            try:
                answer = codec.decode_reply(recv_frame(sock, 1024**2))
            except OSError:
                sock.close()
                raise
            if isinstance(answer, Done):
                return sock
            sock.close()
            assert isinstance(answer, ErrorReply)
            if answer.code == "connect_error":  # at its connection limit
                return None
            if attempt == 0 and answer.code in ("authentication_failed", "session_expired"):
                self._login()  # the token expired or the node restarted
                continue
            raise error_from_code(answer.code, answer.message)
        raise AssertionError("unreachable")

    def _drop_bulk(self) -> None:
        bulk, self.bulk = self.bulk, None
        if bulk is not None:
            with contextlib.suppress(OSError):
                bulk.close()

    def close(self) -> None:
        """Close both lanes (the next round trip opens what it needs)."""
        self._drop_bulk()
        ws, self.websocket = self.websocket, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: S110 - already broken
                pass

    def __repr__(self) -> str:
        return f"WebSocketTransport({self.url!r}, bulk_port={self.bulk_port})"


def _session_ended(reply: Buffer) -> bool:
    """Is ``reply`` the node's refusal of a message whose session expired or was revoked
    (sent before anything ran, so the same frame can go again after a new login)?"""
    if len(reply) > 512 or b"session_expired" not in bytes(reply):
        return False
    answer = codec.decode_reply(reply)
    return isinstance(answer, ErrorReply) and answer.code == SessionExpired.code
