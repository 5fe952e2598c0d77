"""The end-to-end tour behind ``veil demo`` / ``make demo``: owner, node server, scientist, request, approval."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from rich.console import Console
from rich.panel import Panel

import veil
from veil.errors import PermissionDenied

console = Console(highlight=False)
OWNER = ("owner@hospital.example", "owner-demo-password")
SCIENTIST = ("ada@university.example", "ada-demo-password")
DEALER_OWNER = ("ops@dealer.example", "dealer-demo-password")
COLUMNS = ["age", "systolic_bp", "cholesterol", "bmi"]


def step(title: str) -> None:
    console.print(f"\n[bold cyan]▶ {title}[/bold cyan]")


def _patients(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic patient records (age, blood pressure, cholesterol, BMI) and a diagnosis."""
    g = torch.Generator().manual_seed(seed)
    age = 30 + 50 * torch.rand(n, generator=g)
    bp = 100 + 0.6 * age + 8 * torch.randn(n, generator=g)
    chol = 150 + 0.8 * age + 20 * torch.randn(n, generator=g)
    bmi = 22 + 6 * torch.rand(n, generator=g)
    x = torch.stack([age, bp, chol, bmi], 1)
    risk = 0.04 * (age - 55) + 0.05 * (bp - 133) + 0.02 * (chol - 194)
    y = (risk + 0.5 * torch.randn(n, generator=g) > 0).long()
    return x, y


def spawn_node(workdir: Path, name: str, owner: tuple[str, str]) -> subprocess.Popen[str]:
    """Start ``veil node serve`` for ``name`` in its own process (see :func:`start_node`)."""
    env = dict(os.environ, VEIL_OWNER_PASSWORD=owner[1], PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "veil", "node", "serve", "--name", name, "--port", "0",
        "--db", f"sqlite:///{workdir / (name + '.db')}", "--owner-email", owner[0],
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def start_node(workdir: Path, name: str = "st-mary-hospital", owner: tuple[str, str] = OWNER,
               proc: subprocess.Popen[str] | None = None) -> tuple[subprocess.Popen[str], str]:  # fmt: skip
    """Start ``veil node serve`` in its own process (or wait for ``proc``, started with
    :func:`spawn_node`) and return it with its URL."""
    proc = proc or spawn_node(workdir, name, owner)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if not line and proc.poll() is not None:
            tail = "".join(seen[-20:])
            raise RuntimeError(f"node server exited with code {proc.returncode}:\n{tail}")
        if "serving on " in line:
            console.print(
                f"  [dim]$ veil node serve --name {name} --port 0 --db sqlite:///…/{name}.db[/dim]"
            )
            console.print(f"  {line.strip()}")
            return proc, line.split("serving on ")[1].split()[0]
    proc.kill()
    raise RuntimeError("node server did not start within 60 s")


def cli(*args: str) -> None:
    """Run a ``veil`` CLI command as the owner would, echoing it."""
    env = dict(os.environ, VEIL_EMAIL=OWNER[0], VEIL_PASSWORD=OWNER[1])
    console.print(f"  [dim]$ veil {' '.join(args)}[/dim]")
    out = subprocess.run(
        [sys.executable, "-m", "veil", *args], env=env, capture_output=True, text=True, check=True
    )
    console.print(out.stdout.rstrip())


def _private_inference(ada: Any, dealer_url: str, x: torch.Tensor) -> bool:
    """Step 9: the scientist scores the hospital's patients with a model she keeps secret,
    under 2-party MPC between the hospital's node and her own lab node; only the owner's
    approved mean comes out. Returns whether it matched the plaintext."""
    dealer_owner: Any = veil.connect(dealer_url, email=DEALER_OWNER[0], password=DEALER_OWNER[1])
    dealer_owner.create_user(*SCIENTIST, role="data_scientist")  # the dealer's operator lets her in
    dealer_owner.close()
    dealer: Any = veil.connect(dealer_url, email=SCIENTIST[0], password=SCIENTIST[1])
    lab = veil.VirtualWorker("ada-lab")  # her own node, in her process: she owns it
    w = torch.tensor([[0.04], [0.05], [0.02], [0.0]])  # her risk model, secret from the hospital
    b = -(0.04 * 55 + 0.05 * 133 + 0.02 * 194)
    feats = ada.datasets["patients"]["features"].private
    shared_x = feats.fix_precision().share(
        ada, lab, crypto_provider=dealer
    )  # split by the hospital
    shared_w = w.share(session=shared_x.session)  # type: ignore[attr-defined]
    risk = ((shared_x @ shared_w) + b).mean()
    console.print(f"  {shared_x!r}")
    console.print("  the hospital's node split the records itself; her weights were split in "
                  "her process; every opening is masked with the dealer's randomness")  # fmt: skip
    reqs = risk.request("mean predicted risk of the cohort, for our model card")
    cli("requests", "approve", str(reqs[0].id), "--url", ada.url, "--note", "one mean: fine")
    got = float(risk.reconstruct())
    want = float(((x @ w) + b).mean())
    dealer.close()
    console.print(f"  mean predicted risk: {got:.4f} (plaintext: {want:.4f})")
    if abs(got - want) > 1e-2:
        console.print("[red]  the secure computation does not match the plaintext[/red]")
        return False
    console.print(
        "  [green]matches; the hospital never saw her weights, she never saw a record[/green]"
    )
    return True


def run_demo(*, keep: bool = False) -> int:
    """Run the tour; returns a process exit code (0 when every step behaved)."""
    console.print(
        Panel.fit("[bold]veil[/bold] — compute on data you do not own and cannot see", style="cyan")
    )
    workdir = Path(tempfile.mkdtemp(prefix="veil-demo-"))
    proc: subprocess.Popen[str] | None = None
    dealer_proc: subprocess.Popen[str] | None = None
    try:
        step("1. The data owner (a hospital) starts its node: a real server on 127.0.0.1")
        dealer_proc = spawn_node(workdir, "trusted-dealer", DEALER_OWNER)  # used in step 9
        proc, url = start_node(workdir)

        step("2. The owner uploads private patient records, with a mock of the same shape")
        owner: Any = veil.connect(url, email=OWNER[0], password=OWNER[1])
        x, y = _patients(400, seed=0)
        mock_x, mock_y = _patients(400, seed=99)
        mock_x = mock_x[torch.randperm(400)]
        owner.datasets.create(
            "patients", private={"features": x, "diagnosis": y}, mock={"features": mock_x, "diagnosis": mock_y},
            description="400 cardiology patients, 2019-2024", columns=None,
        )  # fmt: skip
        owner.create_user(*SCIENTIST, role="data_scientist")
        console.print(
            f"  dataset 'patients' published; data scientist account {SCIENTIST[0]} created"
        )

        step("3. A data scientist connects; she sees metadata and mock data, never the records")
        ada: Any = veil.connect(url, email=SCIENTIST[0], password=SCIENTIST[1])
        ds = ada.datasets["patients"]
        feats, diag = ds["features"].private, ds["diagnosis"].private
        console.print(f"  {ds!r}")
        console.print(f"  pointer: {feats!r}")
        mock_row = ", ".join(
            f"{c}={v:.1f}" for c, v in zip(COLUMNS, ds["features"].mock[0].tolist(), strict=True)
        )
        console.print(f"  mock row: {mock_row}")

        step("4. She computes on the pointer: the work runs on the hospital's machine")
        means = feats.mean(0)
        console.print(f"  feats.mean(0) -> {means!r}")

        step("5. She tries to download the result: refused, it is derived from private data")
        try:
            means.get()
            console.print("[red]  the node released private data without approval![/red]")
            return 1
        except PermissionDenied as exc:
            console.print(f"  [yellow]PermissionDenied:[/yellow] {exc}")
        req = means.request("column means for the cohort description in our paper")
        console.print(f"  she asks: request #{req.id} is {req.status}")

        step("6. The owner reviews and approves the request with the veil CLI")
        cli("requests", "list", "--url", url, "--status", "pending")
        cli("requests", "approve", str(req.id), "--url", url, "--note", "aggregate only: fine")

        step("7. The scientist fetches exactly the approved object")
        got = means.get()
        console.print(
            "  " + ", ".join(f"{c}={v:.1f}" for c, v in zip(COLUMNS, got.tolist(), strict=True))
        )
        if not torch.allclose(got, x.mean(0), rtol=1e-5):
            console.print("[red]  result does not match the private data's true means[/red]")
            return 1
        console.print("  [green]matches the hospital's true column means[/green]")

        step("8. She trains a model where the data lives; the trained weights stay private too")
        model: Any = ada.send(torch.nn.Sequential(torch.nn.Linear(4, 1)))
        opt = veil.RemoteOptimizer(torch.optim.SGD, model.parameters(), lr=0.5)
        xs = (feats - feats.mean(0)) / feats.std(0)
        target = diag.float().unsqueeze(1)
        for _epoch in range(30):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(xs), target)
            loss.backward()
            opt.step()
        acc = ((model(xs) > 0).float() == target).float().mean()
        try:
            model.get()
            console.print("[red]  the node released a model trained on private data![/red]")
            return 1
        except PermissionDenied:
            console.print("  model.get() -> PermissionDenied (trained on private data)")
        acc_req = acc.request("training accuracy of our risk model")
        owner.requests.approve(acc_req.id, "a single accuracy figure is fine")
        console.print(f"  approved: training accuracy after 30 epochs = {acc.get().item():.1%}")

        step("9. Secure computation: the owner approves a crypto provider run by a third party")
        dealer_proc, dealer_url = start_node(workdir, "trusted-dealer", DEALER_OWNER, dealer_proc)
        cli("dealers", "add", f"trusted-dealer={dealer_url}", "--url", url)
        console.print("  (the dealer deals correlated randomness; whoever deals could unmask what "
                      "the parties open, so the data owner chooses it, never the scientist)")  # fmt: skip
        if not _private_inference(ada, dealer_url, x):
            return 1

        step("10. Everything the scientist did is in the owner's audit log")
        for entry in owner.audit(limit=200)[::-1][-6:]:
            console.print(
                f"  {time.strftime('%H:%M:%S', time.localtime(entry.ts))} {entry.user:<26} {entry.action:<8} {entry.detail}"
            )
        ada.close()
        owner.close()
        console.print(
            "\n[bold green]Demo complete.[/bold green] Next: README.md's tour, and `veil --help`."
        )
        return 0
    finally:
        for p in (dealer_proc, proc):
            if p is None:
                continue
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if proc is not None:
            console.print("  [dim]node server stopped[/dim]")
        if keep:
            console.print(f"  [dim]kept {workdir}[/dim]")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
