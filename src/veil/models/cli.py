"""``veil models publish|list|show``: the command line of model hosting (added to ``veil``
by :mod:`veil.cli`; it logs in like the other commands: ``--url``, ``--email``, password)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from veil.errors import VeilError
from veil.models.client import list_models, publish
from veil.serde.models import ModelInfo

__all__ = ["models_app"]

models_app = typer.Typer(
    help="Publish models for on-device prediction; list what a node hosts.", no_args_is_help=True
)
console = Console()
T = TypeVar("T")

# The login options of every ``veil`` command (veil.cli), with the same variables.
Url = Annotated[str, typer.Option(help="Base URL of a running node.", envvar="VEIL_URL")]
Email = Annotated[str, typer.Option(help="Your login email on the node.", envvar="VEIL_EMAIL")]
Password = Annotated[
    str,
    typer.Option(
        help="Your password (or set VEIL_PASSWORD).",
        envvar="VEIL_PASSWORD",
        prompt=True,
        hide_input=True,
    ),
]


def _fail(exc: Exception) -> NoReturn:
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    raise typer.Exit(1)


def _ask(url: str, email: str, password: str, call: Callable[[Any], T]) -> T:
    """Log in, run ``call(client)``, close the client; a refusal ends the command with its
    message (no traceback)."""
    from veil.node.client import NodeClient

    try:
        client = NodeClient(url, email=email, password=password)
    except VeilError as exc:
        _fail(exc)
    try:
        return call(client)
    except VeilError as exc:
        _fail(exc)
    finally:
        client.close()


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@models_app.command("publish")
def models_publish(
    path: Annotated[
        str, typer.Argument(help="The model's ONNX file (write one with veil.export).")
    ],
    name: Annotated[str, typer.Option(help="The model's name, as devices fetch it.")],
    version: Annotated[
        str, typer.Option(help="This version's label (1, 1.2.0...); a version never changes.")
    ],
    description: Annotated[str, typer.Option(help="What the model does (shown by list).")] = "",
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Publish an ONNX model on a node (owners and admins); devices fetch it by name and version."""
    if not path.lower().endswith(".onnx") or not os.path.isfile(path):
        _fail(ValueError(f"{path!r} is not an .onnx file; write one with veil.export"))
    info = _ask(url, email, password, lambda client: publish(
        client, name, path, version=version, description=description))  # fmt: skip
    console.print(f"published [bold]{info.name}[/bold] version {info.version}: {info.size:,} "
                  f"bytes, sha256 {info.sha256}", highlight=False, soft_wrap=True)  # fmt: skip


@models_app.command("list")
def models_list(
    url: Url = "http://127.0.0.1:8765", email: Email = "owner@localhost", password: Password = ""
) -> None:
    """List the models a node hosts (every version)."""
    items: list[ModelInfo] = _ask(url, email, password, list_models)
    table = Table(title="hosted models (veil models show NAME: hashes and publishers)")
    for column in ("name", "version", "size", "sha256", "published", "description"):
        table.add_column(column, no_wrap=column != "description")
    for m in items:
        table.add_row(m.name, m.version, f"{m.size:,} B", m.sha256[:12],
                      _when(m.created)[:10], m.description)  # fmt: skip
    console.print(table)


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="The model's name (see `veil models list`).")],
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Show every version of one model, with its full SHA-256 and where devices fetch it."""
    items: list[ModelInfo] = _ask(url, email, password, lambda client: list_models(client, name))
    if not items:
        _fail(VeilError(f"the node hosts no model {name!r} (see `veil models list`)"))
    for m in items:
        console.print(f"[bold]{m.name}[/bold] version {m.version}: {m.size:,} bytes, published "
                      f"{_when(m.created)} by {m.publisher}", highlight=False, soft_wrap=True)  # fmt: skip
        console.print(f"  sha256 {m.sha256}", highlight=False, soft_wrap=True)
        if m.description:
            console.print(f"  {m.description}", highlight=False, soft_wrap=True)
        where = f"{url.rstrip('/')}/api/v1/models/{m.name}/{m.version}"
        console.print(f"  GET {where}", highlight=False, soft_wrap=True)
