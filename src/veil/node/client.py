"""NodeClient: a Worker for a node server (REST login; ops over a WebSocketTransport)."""

from __future__ import annotations

import math
import time
import weakref
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from veil.errors import (
    ConnectError,
    RateLimited,
    SessionExpired,
    Timeout,
    TransportError,
    VersionMismatch,
    error_from_code,
)
from veil.node.transports import WebSocketTransport
from veil.node.worker import Worker
from veil.serde import codec
from veil.version import WIRE_VERSION


class NodeClient(Worker):
    """A client of a node server, logged in as one user. Use :func:`veil.connect`.

    Args:
        url: the node's base URL (``http://127.0.0.1:8765``).
        email / password: the user's credentials.
        timeout: seconds to wait for any single reply.

    Ops travel over its :attr:`transport`, a
    :class:`~veil.node.transports.WebSocketTransport` (a WebSocket op stream, plus the
    node's bulk lane for large frames); the client itself logs in and makes REST calls.
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
        self._email, self._password = email, password
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._token = ""
        info = self._rest("GET", "/api/v1/info")
        if info.get("wire_version") != WIRE_VERSION:
            self._http.close()
            raise VersionMismatch(
                f"wire version mismatch: node {info.get('name')!r} at {self.url} speaks "
                f"v{info.get('wire_version')} (veil {info.get('version')}), this client speaks "
                f"v{WIRE_VERSION}; install the same veil version on both sides"
            )
        name = str(info["name"])
        me = weakref.ref(self)  # no cycle through the transport: a dropped client is freed
        self._net = WebSocketTransport(
            self.url, name=name, token=partial(_token, me), login=partial(_login, me),
            timeout=timeout,
            chunk_bytes=chunk_bytes, max_message_bytes=max_message_bytes,
            node_max_message_bytes=int(info.get("max_message_bytes", max_message_bytes)),
            bulk_port=info.get("bulk_port"),
        )  # fmt: skip
        super().__init__(name, self._net)
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
            raise Timeout(
                f"node at {self.url} did not answer {path} in {self._http.timeout.read}s"
            ) from exc
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

    # -- the transport's settings, as NodeClient offered them before it had a transport --
    @property
    def timeout(self) -> float:
        """Seconds to wait for any single reply on the op stream."""
        return self._net.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._net.timeout = value

    @property
    def chunk_bytes(self) -> int:
        """The largest WebSocket message; larger frames travel in chunks."""
        return self._net.chunk_bytes

    @chunk_bytes.setter
    def chunk_bytes(self, value: int) -> None:
        self._net.chunk_bytes = value

    @property
    def max_message_bytes(self) -> int:
        """The largest reply frame this client accepts."""
        return self._net.max_message_bytes

    @max_message_bytes.setter
    def max_message_bytes(self, value: int) -> None:
        self._net.max_message_bytes = value

    @property
    def node_max_message_bytes(self) -> int:
        """The largest frame the node accepts; bigger sends fail here, before any byte goes out."""
        return self._net.node_max_message_bytes

    @property
    def bulk_port(self) -> int | None:
        """The node's bulk lane for large frames (None: everything goes over the WebSocket)."""
        return self._net.bulk_port

    def close(self) -> None:
        """Send pipelined ops and the deletions of dropped pointers (over whichever lane is
        open), then close the connections."""
        super().close()
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NodeClient({self.name!r}, url={self.url!r}, user={self._email!r})"


def _token(client: weakref.ref[NodeClient]) -> str:
    c = client()
    return "" if c is None else c._token


def _login(client: weakref.ref[NodeClient]) -> None:
    c = client()
    if c is not None:
        c._login()
