"""``veil peers add|list|remove``: the destinations a node's owner approves for moves
(``ptr.move(other_node)`` node to node; see :mod:`veil.transfer`). Added to ``veil`` by
:mod:`veil.cli`; it logs in like the other commands (``--url``, ``--email``, password)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from veil.models.cli import Email, Password, Url, _ask

__all__ = ["peers_app"]

peers_app = typer.Typer(
    help="Approve the nodes this node may move objects to (ptr.move, node to node).",
    no_args_is_help=True,
)
console = Console()


@peers_app.command("add")
def peers_add(
    name: Annotated[str, typer.Argument(help="A name for the destination node.")],
    peer_url: Annotated[str, typer.Argument(help="Its base URL, e.g. http://10.0.0.7:8765.")],
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Approve a destination: objects a user may read can then be moved there directly."""
    import veil

    p = _ask(url, email, password, lambda c: veil.transfer.peers(c).add(name, peer_url))
    console.print(f"node may move objects to [bold]{p.name}[/bold] ({p.url})")


@peers_app.command("list")
def peers_list(
    url: Url = "http://127.0.0.1:8765", email: Email = "owner@localhost", password: Password = ""
) -> None:
    """List the approved destinations."""
    import veil

    items = _ask(url, email, password, lambda c: veil.transfer.peers(c).list())
    table = Table("name", "url", "approved by", "when", title="move destinations")
    for p in items:
        when = dt.datetime.fromtimestamp(p.added).strftime("%Y-%m-%d %H:%M")
        table.add_row(p.name, p.url, p.added_by, when)
    console.print(table)


@peers_app.command("remove")
def peers_remove(
    name: Annotated[str, typer.Argument(help="The destination's name (see `veil peers list`).")],
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Withdraw a destination's approval."""
    import veil

    _ask(url, email, password, lambda c: veil.transfer.peers(c).remove(name))
    console.print(f"node no longer moves objects to [bold]{name}[/bold]")
