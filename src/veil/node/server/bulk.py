"""The bulk lane: large frames over a plain TCP connection beside the WebSocket.

A WebSocket moves 100 MB tensors at a third of what the same socket does raw (masking,
message buffers, an event loop between the bytes and the node). The bulk lane carries
the same veil frames with nothing in between: each message is an 8-byte big-endian
length and the frame, read straight into a preallocated buffer that the decoded tensor
then shares, so a sent tensor is copied once (by the encoder) and never again.

A connection opens with ``b"VLBK"``, the client's wire version (2 bytes) and its bearer
token (2-byte length + UTF-8), and the node answers with a frame: ``Done`` when the token
is valid, else an ``ErrorReply``, after which it closes. The lane speaks only to clients
that logged in over REST, and is advertised as ``bulk_port`` in ``GET /api/v1/info``.
It is plain TCP. Behind a TLS proxy (an ``https`` URL) veil's client does not use it and
keeps every frame inside TLS; a client that cannot reach the port sends over its WebSocket.

At most ``bulk_max_connections`` connections are open at once (:class:`ServerLimits`):
another one is answered with a ``connect_error`` frame and closed, and the Python client
then sends over its WebSocket. A connection idle for ``bulk_idle_timeout_s`` is sent a
``timeout`` frame and closed; the client notices before its next call and reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from veil.errors import AuthenticationError, VeilError, VersionMismatch
from veil.node.framing import BULK_HELLO, BULK_MAGIC, recv_exact, recv_frame, send_frame, tune
from veil.node.node import Node
from veil.node.server.limits import ServerLimits
from veil.serde import codec
from veil.serde.messages import Done, ErrorReply
from veil.version import WIRE_VERSION

log = logging.getLogger("veil.node.bulk")

#: Seconds a new connection has to present its token.
HANDSHAKE_TIMEOUT_S = 10.0


class BulkServer:
    """Serve ``node``'s bulk lane on ``host`` (a thread per connection, at most
    ``limits.bulk_max_connections`` of them).

    Example:
        >>> node = Node("n", owner_email="o@n.org", owner_password="password-1")
        >>> with BulkServer(node) as bulk:
        ...     bulk.port > 0
        True
    """

    def __init__(self, node: Node, host: str = "127.0.0.1", port: int = 0, *,
                 limits: ServerLimits | None = None) -> None:  # fmt: skip
        self.node = node
        self.limits = limits or ServerLimits()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="veil-bulk", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            tune(conn)
            with self._conns_lock:
                full = len(self._conns) >= self.limits.bulk_max_connections
                if not full:
                    self._conns.add(conn)
            if full:
                self._refuse(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        """Answer a connection over the cap and close it, without a thread or a wait."""
        limit = self.limits.bulk_max_connections
        message = (
            f"node {self.node.name!r} has its bulk lane's limit of {limit} connections open; "
            "veil's client sends over its WebSocket meanwhile. Retry later, or ask the owner "
            "to raise --bulk-max-connections"
        )
        try:
            conn.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                conn.recv(1024)  # the hello, if here: closing on unread data would reset
            conn.setblocking(True)
            conn.settimeout(1.0)
            send_frame(conn, codec.encode(ErrorReply("connect_error", message)))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)  # a silent peer must not hold a thread
            token = self._handshake(conn)
            if token is None:
                return
            idle = self.limits.bulk_idle_timeout_s
            conn.settimeout(idle)  # also bounds a send to a peer that stopped reading
            while True:
                try:
                    frame = recv_frame(conn, self.node.max_message_bytes)
                except VeilError as exc:  # over the limit: answer, then drop the connection
                    send_frame(conn, codec.encode(ErrorReply(exc.code, str(exc))))
                    return
                except TimeoutError:  # idle (or stalled mid-frame): free the slot
                    message = (
                        f"bulk connection closed after {idle:g} s idle; veil's client "
                        "reconnects by itself"
                    )
                    send_frame(conn, codec.encode(ErrorReply("timeout", message)))
                    return
                try:  # every frame: the token may have expired or been revoked since
                    session = self.node.session_for_token(token)
                except AuthenticationError as exc:
                    send_frame(conn, codec.encode(ErrorReply(exc.code, str(exc))))
                    return
                parts = self.node.handle_frame_parts(session, frame)
                del frame
                send_frame(conn, *parts)
                del parts
        except (ConnectionError, OSError):
            return
        except Exception:  # a bug must not take the node down; the client sees a drop
            log.exception("bulk connection failed on node %s", self.node.name)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _handshake(self, conn: socket.socket) -> str | None:
        """The connection's token once it checks out; None (after an error frame) if not."""
        magic, version, n = BULK_HELLO.unpack(recv_exact(conn, BULK_HELLO.size))
        try:
            if magic != BULK_MAGIC:
                raise AuthenticationError("not a veil bulk connection")
            if version != WIRE_VERSION:
                raise VersionMismatch(
                    f"wire version mismatch: the client speaks v{version}, this node speaks "
                    f"v{WIRE_VERSION}; install the same veil version on both sides"
                )
            token = bytes(recv_exact(conn, n)).decode()
            self.node.session_for_token(token)
        except (VeilError, UnicodeDecodeError) as exc:
            code = exc.code if isinstance(exc, VeilError) else "authentication_failed"
            send_frame(conn, codec.encode(ErrorReply(code, str(exc))))
            return None
        send_frame(conn, codec.encode(Done()))
        return token

    def close(self) -> None:
        """Stop accepting and close every open connection."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> BulkServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
