"""The ``veil`` command: run a node server, manage users and access requests, run the demo."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from veil.errors import VeilError
from veil.version import WIRE_VERSION, __version__

app = typer.Typer(help="veil: compute on data you do not own and cannot see.", no_args_is_help=True)
node_app = typer.Typer(help="Run a data owner's node server.", no_args_is_help=True)
user_app = typer.Typer(help="Manage a node's users.", no_args_is_help=True)
requests_app = typer.Typer(help="List and decide data access requests.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(user_app, name="user")
app.add_typer(user_app, name="users", help="Manage a node's users (same as `veil user`).")
sessions_app = typer.Typer(help="End users' sessions (login tokens).", no_args_is_help=True)
user_app.add_typer(sessions_app, name="sessions")
app.add_typer(requests_app, name="requests")
# veil.dp: privacy budgets
budgets_app = typer.Typer(
    help="Set and show users' privacy budgets (DP releases).", no_args_is_help=True
)
app.add_typer(budgets_app, name="budgets")
# veil.mpc: the crypto providers (dealers) a node accepts
dealers_app = typer.Typer(
    help="Approve the crypto providers (MPC dealers) a node accepts.", no_args_is_help=True
)
app.add_typer(dealers_app, name="dealers")
# veil.plans: plans scientists asked to run on private data
plans_app = typer.Typer(
    help="Review the plans scientists ask to run on your private data.", no_args_is_help=True
)
app.add_typer(plans_app, name="plans")
console = Console()

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
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


def _client(url: str, email: str, password: str) -> Any:
    from veil.node.client import NodeClient

    try:
        return NodeClient(url, email=email, password=password)
    except VeilError as exc:
        _fail(exc)


T = TypeVar("T")


def _ask(url: str, email: str, password: str, call: Callable[[Any], T]) -> T:
    """Log in, run ``call(client)``, close the client; a node's refusal ends the command
    with its message."""
    client = _client(url, email, password)
    try:
        return call(client)
    except VeilError as exc:
        _fail(exc)
    finally:
        client.close()


@app.command()
def version() -> None:
    """Print veil's version and wire-format version."""
    console.print(f"veil {__version__} (wire format v{WIRE_VERSION})")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo's temporary node directory.")] = False,
) -> None:
    """Run the end-to-end tour: a data owner's node, a data scientist, a request, an approval."""
    from veil.demo import run_demo

    sys.exit(run_demo(keep=keep))


@node_app.command("serve")
def node_serve(
    name: Annotated[str, typer.Option(help="The node's name, shown to its users.")] = "node",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8765,
    db: Annotated[
        str,
        typer.Option(help="Database URL: sqlite:///node.db (default) or postgresql+psycopg://..."),
    ] = "sqlite:///veil-node.db",
    blob_dir: Annotated[str | None, typer.Option(help="Directory for large objects.")] = None,
    owner_email: Annotated[
        str, typer.Option(help="Owner account created on first start.")
    ] = "owner@localhost",
    owner_password: Annotated[
        str | None,
        typer.Option(
            help="Owner password on first start (or VEIL_OWNER_PASSWORD).",
            envvar="VEIL_OWNER_PASSWORD",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    bulk_port: Annotated[
        int,
        typer.Option(help="TCP port of the bulk lane for large tensors (0: a free one, -1: off)."),
    ] = 0,
    login_attempts: Annotated[
        int,
        typer.Option(
            help="Failed logins per account and client address before a lockout (429); "
            "the lockout doubles with each further failure."
        ),
    ] = 10,
    login_window: Annotated[
        float,
        typer.Option(help="Seconds failed logins are counted over; also the first lockout."),
    ] = 900.0,
    login_account_attempts: Annotated[
        int,
        typer.Option(
            help="Failed logins per account from all addresses before a lockout (0: off). "
            "Stops distributed guessing, but lets such an attacker hold off new logins."
        ),
    ] = 100,
    login_address_attempts: Annotated[
        int,
        typer.Option(help="Failed logins per client address over all accounts (0: off)."),
    ] = 100,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest REST request body; bigger ones get 413 unread.")
    ] = 64 * 1024,
    bulk_max_connections: Annotated[
        int, typer.Option(help="Open bulk-lane connections at once; more are refused.")
    ] = 64,
    bulk_idle_timeout: Annotated[
        float, typer.Option(help="Seconds before an idle bulk-lane connection is closed.")
    ] = 300.0,
    dealer: Annotated[
        list[str] | None,
        typer.Option(
            "--dealer",
            help="A crypto provider this node accepts for MPC: NAME=URL (another veil node; "
            "its key is read from URL/api/v1/info) or NAME=KEY (its MPC key, 64 hex "
            "digits). Repeatable; kept in DB (see `veil dealers`).",
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            "--peer",
            help="A node objects may be moved to (ptr.move): NAME=URL. Repeatable; kept in "
            "DB (see `veil peers`).",
        ),
    ] = None,
) -> None:
    """Serve a node: REST + WebSocket API on HOST:PORT, state persisted in DB."""
    from veil.node.node import Node
    from veil.node.server import ServerLimits, bind, serve
    from veil.node.store import open_store

    try:
        limits = ServerLimits(
            login_attempts=login_attempts,
            login_window_s=login_window,
            login_account_attempts=login_account_attempts,
            login_address_attempts=login_address_attempts,
            max_body_bytes=max_body_bytes,
            bulk_max_connections=bulk_max_connections,
            bulk_idle_timeout_s=bulk_idle_timeout,
        )
        store = open_store(db, blob_dir=blob_dir)
        node = Node(name, store=store, owner_email=owner_email, owner_password=owner_password)
        sock = bind(host, port)
    except (VeilError, OSError, ValueError, ImportError) as exc:
        _fail(exc)
    if node.owner_password is not None:  # generated on first start
        console.print(
            f"created owner [bold]{owner_email}[/bold] with password [bold]{node.owner_password}[/bold] (shown once)"
        )
    _approve_dealers(node, dealer or [])
    for spec in peer or []:
        p_name, _, p_url = spec.partition("=")
        try:
            import veil.transfer

            p = veil.transfer.peers(veil.VirtualWorker(node=node)).add(
                p_name.strip(), p_url.strip()
            )
        except VeilError as exc:
            _fail(exc)
        console.print(f"may move objects to [bold]{p.name}[/bold] ({p.url})")
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(f"veil node {name!r} serving on {url} (db: {db})", flush=True)
    serve(node, sock=sock, log_level=log_level, bulk_port=None if bulk_port < 0 else bulk_port,
          limits=limits)  # fmt: skip


@user_app.command("create")
def user_create(
    new_email: Annotated[str, typer.Option("--new-email", help="Email of the user to create.")],
    new_password: Annotated[
        str,
        typer.Option(
            "--new-password",
            help="Their password.",
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
        ),
    ],
    role: Annotated[str, typer.Option(help="owner, admin or data_scientist.")] = "data_scientist",
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Create a user on a running node (you must be its owner or an admin)."""
    info = _ask(
        url, email, password, lambda client: client.create_user(new_email, new_password, role=role)
    )
    console.print(f"created user {info.email} ({info.role})")


@user_app.command("list")
def user_list(
    url: Url = "http://127.0.0.1:8765", email: Email = "owner@localhost", password: Password = ""
) -> None:
    """List a node's users."""
    users = _ask(url, email, password, lambda client: client.users())
    table = Table("id", "email", "role")
    for u in users:
        table.add_row(str(u.id), u.email, u.role)
    console.print(table)


@sessions_app.command("revoke")
def sessions_revoke(
    target: Annotated[str, typer.Argument(metavar="EMAIL", help="The user whose sessions end.")],
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """End every session of a user: their tokens stop working and their open connections
    fail their next call (they must log in again). Yours, or anyone's for owners/admins.
    To lock someone out for good, also change or remove their account."""
    n = _ask(url, email, password, lambda client: client.revoke_sessions(target))
    console.print(f"ended {n} session{'s' if n != 1 else ''} of {target}")


@requests_app.command("list")
def requests_list(
    status: Annotated[
        str | None, typer.Option(help="pending, approved or denied (default: all).")
    ] = None,
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """List access requests (all of them for the owner, your own otherwise)."""
    items = _ask(url, email, password, lambda client: client.requests.list(status))
    table = Table(
        "id", "status", "requester", "object", "derived from", "reason", title="access requests"
    )
    for r in items:
        obj = r.object
        if r.kind != "object":  # a capability's request kind (a plan's runs, an enrolment)
            what = f"{r.kind}: {r.summary or r.subject}"
        elif obj:
            what = f"{obj.kind} {'x'.join(map(str, obj.shape)) or 'scalar'}"
        else:
            what = f"#{r.object_id} (deleted)"
        table.add_row(
            str(r.id), r.status, r.requester, what, ", ".join(obj.sources) if obj else "", r.reason
        )
    console.print(table)


def _decide(request_id: int, approve: bool, note: str, url: str, email: str, password: str) -> None:
    r = _ask(
        url,
        email,
        password,
        lambda client: (
            client.requests.approve(request_id, note)
            if approve
            else client.requests.deny(request_id, note)
        ),
    )
    console.print(f"request {r.id} from {r.requester}: [bold]{r.status}[/bold]")


@requests_app.command("approve")
def requests_approve(
    request_id: Annotated[int, typer.Argument(help="The request's id (see `veil requests list`).")],
    note: Annotated[str, typer.Option(help="A note for the requester.")] = "",
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Approve a request: its requester may then fetch that one object."""
    _decide(request_id, True, note, url, email, password)


@requests_app.command("deny")
def requests_deny(
    request_id: Annotated[int, typer.Argument(help="The request's id (see `veil requests list`).")],
    note: Annotated[str, typer.Option(help="Why, for the requester.")] = "",
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Deny a request."""
    _decide(request_id, False, note, url, email, password)


# ---------------------------------------------------------------- veil.plans: review
@plans_app.command("list")
def plans_list(
    status: Annotated[
        str | None, typer.Option(help="pending, approved or denied (default: all).")
    ] = None,
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """List plan requests: who asks to run which plan, on which dataset, how many times."""
    from veil.plans import reviews

    items = _ask(url, email, password, lambda client: reviews(client, status))
    table = Table("id", "status", "requester", "plan", "hash", "dataset", "runs", "reason",
                  title="plan requests")  # fmt: skip
    for r in items:
        table.add_row(str(r.request), r.status, r.requester, r.name, r.hash[:16], r.dataset,
                      f"{r.used}/{r.runs}", r.reason)  # fmt: skip
    console.print(table)


@plans_app.command("show")
def plans_show(
    request_id: Annotated[int, typer.Argument(help="The request's id (see `veil plans list`).")],
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Show a plan request: the plan as code, its result on the mock data, what it releases."""
    from rich.syntax import Syntax

    from veil.plans import review

    r = _ask(url, email, password, lambda client: review(client, request_id))
    console.print(f"[bold]plan request {r.request}[/bold] ({r.status}) from {r.requester}: "
                  f"{r.reason}")  # fmt: skip
    console.print(f"plan [bold]{r.name}[/bold], hash {r.hash}")
    console.print(f"on dataset [bold]{r.dataset}[/bold], {r.runs} runs ({r.used} used)")
    console.print(Syntax(r.code, "python", theme="ansi_dark", word_wrap=True))
    console.print(f"[bold]result on the mock data:[/bold] {r.mock_result}")
    console.print(f"[bold]what it releases:[/bold] {r.releases}")


@plans_app.command("approve")
def plans_approve(
    request_id: Annotated[int, typer.Argument(help="The request's id (see `veil plans list`).")],
    note: Annotated[str, typer.Option(help="A note for the requester.")] = "",
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Approve a plan request: that plan (its hash) may run that many times on the dataset."""
    _decide(request_id, True, note, url, email, password)


@plans_app.command("deny")
def plans_deny(
    request_id: Annotated[int, typer.Argument(help="The request's id (see `veil plans list`).")],
    note: Annotated[str, typer.Option(help="Why, for the requester.")] = "",
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Deny a plan request."""
    _decide(request_id, False, note, url, email, password)


@plans_app.command("require-review")
def plans_require_review(
    enabled: Annotated[
        bool | None,
        typer.Argument(help="on: code runs on private data only as approved plans; off: not."),
    ] = None,
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Run scientists' code on private data only as plans you approved (or show the setting)."""
    from veil.plans import require_review

    now = _ask(url, email, password, lambda client: require_review(client, enabled))
    console.print(
        "code runs on private data only as approved plans" if now
        else "single ops run on private data under the privacy rules; plans need approval"
    )  # fmt: skip


@plans_app.command("release-outputs")
def plans_release_outputs(
    enabled: Annotated[
        bool | None,
        typer.Argument(
            help="on: requesters may fetch the results of approved runs they asked for; off: not."
        ),  # fmt: skip
    ] = None,
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """The release policy plan-outputs: results of approved plan runs whose request asked for
    them may be fetched by their requester (or show the setting)."""
    from veil.plans import settings

    now = _ask(url, email, password, lambda client: settings(client, release_outputs=enabled))
    console.print(
        "results of approved plan runs are released to requesters who asked for them"
        if now.release_outputs else "plan results are not released by a policy"
    )  # fmt: skip


# ---------------------------------------------------------------- veil.dp: budgets
@budgets_app.command("set")
def budgets_set(
    user: Annotated[str, typer.Option(help="Email of the data scientist.")],
    dataset: Annotated[str, typer.Option(help="The dataset the budget applies to.")],
    epsilon: Annotated[float, typer.Option(help="Total epsilon the user may spend.")],
    delta: Annotated[
        float, typer.Option(help="Total delta (0 allows Laplace releases only).")
    ] = 0.0,
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Give a user a privacy budget (epsilon, delta) on a dataset (owners and admins)."""
    b = _ask(
        url,
        email,
        password,
        lambda client: client.budgets.set(user, dataset, epsilon=epsilon, delta=delta),
    )
    console.print(f"budget of {b.user} on {b.dataset}: epsilon={b.epsilon:g} delta={b.delta:g}")


@budgets_app.command("show")
def budgets_show(
    user: Annotated[str | None, typer.Option(help="Only this user's budgets.")] = None,
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Show budgets and what each user has spent (owners: everyone; others: their own)."""
    items = _ask(url, email, password, lambda client: client.budgets.list(user))
    table = Table("user", "dataset", "epsilon", "delta", "spent epsilon", "spent delta", "releases")
    for b in items:
        table.add_row(b.user, b.dataset, f"{b.epsilon:g}", f"{b.delta:g}", f"{b.spent_epsilon:.4g}",
                      f"{b.spent_delta:.3g}", str(b.releases))  # fmt: skip
    console.print(table)


# ---------------------------------------------------------------- veil.mpc: dealers
def _dealer_spec(spec: str) -> tuple[str, str]:
    """``NAME=URL`` or ``NAME=KEY`` -> (name, value)."""
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise typer.BadParameter(
            f"{spec!r}: give NAME=URL (another veil node) or NAME=KEY (64 hex digits), "
            "e.g. carol=http://10.0.0.7:8765"
        )
    return name.strip(), value.strip()


def _approve_dealers(node: Any, specs: list[str]) -> None:
    """``veil node serve --dealer``: approve each crypto provider as the node's owner
    (audited, kept in the node's store) before serving."""
    import veil
    from veil.mpc.node.state import public_info

    for spec in specs:
        name, value = _dealer_spec(spec)
        try:
            d = veil.mpc.dealers(veil.VirtualWorker(node=node)).add(name, value)
        except VeilError as exc:
            _fail(exc)
        console.print(f"accepts crypto provider [bold]{d.name}[/bold] (key {d.fingerprint})")
    console.print(f"MPC key of this node: {public_info(node)['fingerprint']}")


@dealers_app.command("add")
def dealers_add(
    spec: Annotated[
        str,
        typer.Argument(
            help="NAME=URL (another veil node: its key is read from URL/api/v1/info) or "
            "NAME=KEY (the dealer's MPC key, 64 hex digits)."
        ),
    ],
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Approve a crypto provider: the node then joins MPC sessions it deals for."""
    import veil

    name, value = _dealer_spec(spec)
    d = _ask(url, email, password, lambda client: veil.mpc.dealers(client).add(name, value))
    console.print(f"node accepts crypto provider [bold]{d.name}[/bold] (key {d.fingerprint})")


@dealers_app.command("list")
def dealers_list(
    url: Url = "http://127.0.0.1:8765", email: Email = "owner@localhost", password: Password = ""
) -> None:
    """List the crypto providers a node accepts."""
    import veil

    items = _ask(url, email, password, lambda client: veil.mpc.dealers(client).list())
    table = Table("name", "key fingerprint", "from", "approved by", title="crypto providers")
    for d in items:
        table.add_row(d.name, d.fingerprint, d.url or "key", d.added_by)
    console.print(table)


@dealers_app.command("remove")
def dealers_remove(
    name: Annotated[str, typer.Argument(help="The dealer's name (see `veil dealers list`).")],
    url: Url = "http://127.0.0.1:8765",
    email: Email = "owner@localhost",
    password: Password = "",
) -> None:
    """Withdraw a crypto provider's approval (sessions it dealt for on the node end)."""
    import veil

    _ask(url, email, password, lambda client: veil.mpc.dealers(client).remove(name))
    console.print(f"node no longer accepts crypto provider [bold]{name}[/bold]")


# ---------------------------------------------------------------- veil.models: hosted models
# (the commands live with the capability, in veil/models/cli.py: this module is at its size limit)
from veil.models.cli import models_app  # noqa: E402

app.add_typer(models_app, name="models")
from veil.transfer.cli import peers_app  # noqa: E402

app.add_typer(peers_app, name="peers")


def main() -> None:
    """Entry point of the ``veil`` console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
