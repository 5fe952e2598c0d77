"""The node server (FastAPI + uvicorn)."""

from __future__ import annotations

from veil.node.server.app import create_app
from veil.node.server.limits import ServerLimits
from veil.node.server.runner import bind, serve, serve_in_thread

__all__ = ["ServerLimits", "bind", "create_app", "serve", "serve_in_thread"]
