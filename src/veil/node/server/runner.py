"""Run a node server with uvicorn: blocking (``serve``) or in a background thread (``serve_in_thread``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from veil.errors import ConnectError
from veil.node.node import Node
from veil.node.server.app import create_app
from veil.node.server.bulk import BulkServer
from veil.node.server.limits import ServerLimits
from veil.serde import codec


def _config(node: Node, chunk_bytes: int, log_level: str, bulk: BulkServer | None,
            limits: ServerLimits | None) -> uvicorn.Config:  # fmt: skip
    app = create_app(
        node, chunk_bytes=chunk_bytes, bulk_port=bulk.port if bulk else None, limits=limits
    )
    return uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="off",
        ws_max_size=chunk_bytes + 64,
        ws_ping_interval=None,
        timeout_graceful_shutdown=2,
    )


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket (``port=0`` picks a free port; read it with ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio then sets TCP_NODELAY on accepted connections (with proto 0
    # it does not, and a response written in two parts waited 40 ms for a delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(node: Node, *, host: str = "127.0.0.1", port: int = 8765, sock: socket.socket | None = None,
          chunk_bytes: int = codec.CHUNK_BYTES, log_level: str = "info",
          bulk_port: int | None = 0, limits: ServerLimits | None = None) -> None:  # fmt: skip
    """Serve ``node`` until interrupted (what ``veil node serve`` runs).

    ``bulk_port``: the TCP port of the bulk lane for large frames (0 picks a free one,
    None turns it off; see :mod:`veil.node.server.bulk`). ``limits``: login rate limits,
    the REST body limit and the bulk lane's caps (:class:`ServerLimits`).
    """
    sock = sock or bind(host, port)
    bulk = (
        None
        if bulk_port is None
        else BulkServer(node, sock.getsockname()[0], bulk_port, limits=limits)
    )
    server = uvicorn.Server(_config(node, chunk_bytes, log_level, bulk, limits))
    try:
        server.run(sockets=[sock])
    finally:
        if bulk is not None:
            bulk.close()
        node.close()


@contextlib.contextmanager
def serve_in_thread(node: Node, *, host: str = "127.0.0.1", port: int = 0,
                    chunk_bytes: int = codec.CHUNK_BYTES, log_level: str = "warning",
                    startup_timeout: float = 20.0, bulk_port: int | None = 0,
                    limits: ServerLimits | None = None) -> Iterator[str]:  # fmt: skip
    """Serve ``node`` on a free loopback port in a background thread; yields its URL
    (the arguments are :func:`serve`'s).

    Example:
        >>> import veil
        >>> node = Node("n", owner_email="o@n.org", owner_password="password-1")
        >>> with serve_in_thread(node) as url:
        ...     client = veil.connect(url, email="o@n.org", password="password-1")
        ...     print(client.info().name)
        ...     client.close()
        n
    """
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    bulk = None if bulk_port is None else BulkServer(node, host, bulk_port, limits=limits)
    server = uvicorn.Server(_config(node, chunk_bytes, log_level, bulk, limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConnectError(f"node server did not start on {host}:{bound_port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        if bulk is not None:
            bulk.close()
