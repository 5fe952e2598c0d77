"""NodeClient: a Worker for a node server (REST login, WebSocket op stream)."""

from __future__ import annotations

import contextlib
import inspect
import math
import socket
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from veil.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLost,
    MessageTooLarge,
    RateLimited,
    SessionExpired,
    Timeout,
    TransportError,
    VersionMismatch,
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
from veil.node.worker import Worker
from veil.serde import codec
from veil.serde.messages import Done, ErrorReply
from veil.version import WIRE_VERSION

# websockets >= 17 wants connect() used as a context manager unless legacy=True is passed.
_CONNECT_EXTRA: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
)


class NodeClient(Worker):
    """A client of a node server, logged in as one user. Use :func:`veil.connect`.

    Args:
        url: the node's base URL (``http://127.0.0.1:8765``).
        email / password: the user's credentials.
        timeout: seconds to wait for any single reply.

    The connection reconnects by itself on the next call after a drop; the call that
    was in flight raises :class:`~veil.errors.ConnectionLost`.

    With ``pipeline`` (the default), ops whose result the client can predict are queued
    and sent with the next call that needs an answer (see :mod:`veil.pointers.pipeline`):
    a remote training loop then costs a round trip per loss read, not five per step.
    """

    def __init__(self, url: str, *, email: str, password: str, timeout: float = 60.0,
                 chunk_bytes: int = codec.CHUNK_BYTES,
                 max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
                 pipeline: bool = True) -> None:  # fmt: skip
        self.pipeline = pipeline
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.max_message_bytes = max_message_bytes
        self._email, self._password = email, password
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._ws: ClientConnection | None = None
        self._ws_lock = threading.Lock()
        info = self._rest("GET", "/api/v1/info")
        if info.get("wire_version") != WIRE_VERSION:
            self._http.close()
            raise VersionMismatch(
                f"wire version mismatch: node {info.get('name')!r} at {self.url} speaks "
                f"v{info.get('wire_version')} (veil {info.get('version')}), this client speaks "
                f"v{WIRE_VERSION}; install the same veil version on both sides"
            )
        super().__init__(str(info["name"]))
        #: The largest frame the node accepts; bigger sends fail here, before any byte goes out.
        self.node_max_message_bytes = int(info.get("max_message_bytes", max_message_bytes))
        #: The node's bulk lane for frames of BULK_MIN_BYTES or more (None: WebSocket only).
        self.bulk_port: int | None = info.get("bulk_port")
        self._bulk: socket.socket | None = None
        self._token = ""
        try:
            self._login()
        except BaseException:  # wrong password, rate limited...: nothing is left open
            self._http.close()
            raise

    # -- REST ----------------------------------------------------------------------
    def _rest(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Timeout(f"node at {self.url} did not answer {path} in {self.timeout}s") from exc
        except httpx.HTTPError as exc:
            raise ConnectError(
                f"cannot reach a veil node at {self.url} ({exc}); is `veil node serve` running?"
            ) from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                error = error_from_code(err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise TransportError(f"{method} {path} failed: HTTP {resp.status_code}") from None
            if resp.status_code == 429:
                raise self._rate_limited(str(error), resp.headers.get("Retry-After"))
            raise error
        return resp.json()

    def _rate_limited(self, message: str, retry_after: str | None) -> RateLimited:
        try:
            wait = float(retry_after) if retry_after is not None else None
        except ValueError:
            wait = None
        when = (
            f"; retry after {math.ceil(wait)} s (at {time.strftime('%H:%M:%S', time.localtime(time.time() + wait))})"
            if wait is not None
            else "; retry later"
        )
        return RateLimited(f"node at {self.url} refused to log in {self._email}: {message}{when}",
                           retry_after=wait)  # fmt: skip

    def _authorized(self, method: str, path: str, **kwargs: Any) -> Any:
        """A REST call with the session's token (logging in again once if it ended)."""
        for attempt in range(2):
            try:
                return self._rest(
                    method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs
                )
            except SessionExpired:
                if attempt:
                    raise
                self._login()
        raise AssertionError("unreachable")

    def revoke_sessions(self, email: str) -> int:
        """End every session of user ``email`` on the node (yours: log out everywhere;
        owners and admins: anyone's). Their open connections fail their next call; a
        client holding the password (like this one) logs in again by itself. Returns how
        many sessions ended.

        Raises:
            PermissionDenied: another user's sessions, and you are not an owner or admin.
        """
        out = self._authorized("POST", f"/api/v1/users/{quote(email, safe='@')}/revoke-sessions")
        return int(out["revoked"])

    def _login(self) -> None:
        out = self._rest(
            "POST", "/api/v1/login", json={"email": self._email, "password": self._password}
        )
        self._token = out["token"]
        self.role = out["user"]["role"]

    # -- WebSocket -------------------------------------------------------------------
    def _ws_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/api/v1/ws", "", ""))

    def _open(self) -> ClientConnection:
        for attempt in range(2):
            try:
                return connect(  # type: ignore[no-any-return,call-overload]
                    self._ws_url(),
                    additional_headers={"Authorization": f"Bearer {self._token}"},
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

    _scatter = True

    def _roundtrip(self, frame: bytearray, expect_bytes: int = 0) -> bytearray | memoryview:
        return self._roundtrip_parts([frame], expect_bytes)

    def _roundtrip_parts(
        self, parts: list[bytes | bytearray | memoryview], expect_bytes: int = 0
    ) -> bytearray | memoryview:
        size = sum(len(p) for p in parts)
        if size > self.node_max_message_bytes:
            raise MessageTooLarge(
                f"this message is {size} bytes, over the limit of node {self.name!r} "
                f"({self.node_max_message_bytes} bytes); send smaller pieces or ask the owner "
                "to raise the node's max message size"
            )
        with self._ws_lock:
            reply = self._send_on_a_lane(parts, size, expect_bytes)
            if _session_ended(reply):  # refused before it ran: log in again, send it again
                self._drop()
                self._login()
                reply = self._send_on_a_lane(parts, size, expect_bytes)
            return reply

    def _send_on_a_lane(self, parts: list[bytes | bytearray | memoryview], size: int,
                        expect_bytes: int) -> bytearray | memoryview:  # fmt: skip
        try:
            # Large frames take the bulk lane; so does anything while it is the only lane
            # open (a client that only moved large tensors opens no WebSocket to close).
            if self.bulk_port is not None and (
                max(size, expect_bytes) >= BULK_MIN_BYTES
                or (self._ws is None and self._bulk is not None)
            ):
                reply = self._bulk_roundtrip(parts)
                if reply is not None:
                    return reply  # else the lane is full: take the WebSocket
            return self._ws_roundtrip(parts[0] if len(parts) == 1 else b"".join(parts))
        except TimeoutError as exc:
            self._drop()
            raise Timeout(
                f"node {self.name!r} did not answer within {self.timeout}s; the call may "
                "still run there. Raise timeout= in veil.connect for long operations"
            ) from exc
        except (ConnectionClosed, OSError) as exc:
            self._drop()
            raise ConnectionLost(
                f"the connection to node {self.name!r} at {self.url} dropped during a call "
                f"({type(exc).__name__}); it may or may not have run on the node. The next "
                "call reconnects."
            ) from exc

    def _ws_roundtrip(self, frame: bytes | bytearray | memoryview) -> bytearray | memoryview:
        if self._ws is None:
            self._ws = self._open()
        ws = self._ws
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

    def _bulk_roundtrip(self, parts: list[bytes | bytearray | memoryview]) -> memoryview | None:
        """One call over the bulk lane: the parts go out as they are (a tensor's own memory),
        and the reply is read into one buffer that decoded tensors share. None: the lane is
        at its connection limit, nothing was sent."""
        if self._bulk is not None and readable(self._bulk):
            self._drop_bulk()  # unasked bytes or EOF: the node closed it (idle); reconnect
        if self._bulk is None:
            self._bulk = self._open_bulk()
            if self._bulk is None:
                return None
        send_frame(self._bulk, *parts)
        del parts
        return recv_frame(self._bulk, self.max_message_bytes)

    def _open_bulk(self) -> socket.socket | None:
        host = urlsplit(self.url).hostname or "127.0.0.1"
        for attempt in range(2):
            try:
                sock = socket.create_connection((host, self.bulk_port), timeout=self.timeout)
            except OSError as exc:
                raise ConnectError(
                    f"cannot open the bulk lane to {host}:{self.bulk_port} ({exc}); connect "
                    "with the node's firewall open to that port, or ask the owner to serve "
                    "with --bulk-port -1 so everything goes over the WebSocket"
                ) from exc
            tune(sock)
            with contextlib.suppress(OSError):  # a node that refuses may close first
                sock.sendall(bulk_hello(self._token))
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
        bulk, self._bulk = self._bulk, None
        if bulk is not None:
            with contextlib.suppress(OSError):
                bulk.close()

    def _drop(self) -> None:
        self._drop_bulk()
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: S110 - already broken
                pass

    def close(self) -> None:
        """Send pipelined ops and the deletions of dropped pointers (over whichever lane is
        open), then close the connections."""
        try:
            if self._deferred or self._released:
                self.flush()
        except TransportError:
            pass
        self._drop()
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NodeClient({self.name!r}, url={self.url!r}, user={self._email!r})"


def _session_ended(reply: bytes | bytearray | memoryview) -> bool:
    """Is ``reply`` the node's refusal of a message whose session expired or was revoked
    (sent before anything ran, so the same frame can go again after a new login)?"""
    if len(reply) > 512 or b"session_expired" not in bytes(reply):
        return False
    answer = codec.decode_reply(reply)
    return isinstance(answer, ErrorReply) and answer.code == SessionExpired.code
