"""Flower 1.42 deployed on loopback for benchmarks/fl.py: a SuperLink, two SuperNodes, ``flwr run``.

Imported by ``_flower_bench.py`` (mode ``deployed``) under Flower's interpreter. It writes a
Flower App (``pyproject.toml`` + an app module that reuses ``_flower_bench.sim_apps`` and
``_fl_common``) into a temporary directory, starts ``flower-superlink --insecure`` and two
``flower-supernode --insecure`` processes on free 127.0.0.1 ports (runtime dependency
installation off: nothing is fetched), points ``FLWR_HOME`` at a private config naming that
SuperLink, submits the app with ``flwr run``, and reads the ServerApp's round times from a
file it writes when done. Every process it started is stopped before it returns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "veilflbench"
version = "1.0.0"
description = "benchmarks/fl.py: the digits MLP under Flower, deployed on loopback"
license = "Apache-2.0"
dependencies = ["flwr[simulation]==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "veil"

[tool.flwr.app.components]
serverapp = "veilflbench_app:server_app"
clientapp = "veilflbench_app:client_app"

[tool.flwr.app.config]
rounds = {rounds}
"""

APP = """import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _flower_bench
_flower_bench.CFG.update({{"rounds": {rounds}}})
marks, final = [], {{}}
apps = _flower_bench.sim_apps({clients}, marks, final)
client_app = apps[0]
server_app = apps[1]
_main = server_app._main

def _timed(grid, context):
    _main(grid, context)
    with open({marks_path!r}, "w") as f:
        json.dump({{"marks": marks, "train_s": final.get("train_s", [])}}, f)

server_app._main = _timed
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Until something accepts connections on 127.0.0.1:``port`` (the SuperLink is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)  # polling a port until it opens; not a timing
    raise RuntimeError(f"the SuperLink did not open port {port}")


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_deployed(cfg: dict[str, Any]) -> dict[str, Any]:
    """Rounds of FedAvg over 2 SuperNodes (half the digits each); the median round time."""
    rounds, clients = int(cfg.get("rounds", 4)), 2
    tmp = Path(tempfile.mkdtemp(prefix="flwr-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        app = tmp / "app"
        app.mkdir()
        marks_path = tmp / "marks.json"
        (app / "pyproject.toml").write_text(PYPROJECT.format(rounds=rounds))
        (app / "veilflbench_app.py").write_text(
            APP.format(rounds=rounds, clients=clients, marks_path=str(marks_path))
        )
        for f in ("_fl_common.py", "_flower_bench.py", "_flower_deployed.py"):
            shutil.copy(HERE / f, app / f)
        home = tmp / "flwr-home"
        home.mkdir()
        link = _free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{link}"\ninsecure = true\n'
        )
        # the SuperLink and SuperNodes start flower-superexec / flwr-serverapp from PATH
        env = dict(os.environ, FLWR_HOME=str(home), OMP_NUM_THREADS="1",
                   PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip
        t0 = time.perf_counter()
        procs.append(_start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                             "--port", str(link), "--disable-runtime-dependency-installation"],
                            tmp / "superlink.log", env))  # fmt: skip
        _wait_port(link, procs[0])
        for i in range(clients):
            procs.append(_start([str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                 f"127.0.0.1:{link}", "--port", str(_free_port()),
                                 "--node-config", f"partition-id={i} num-partitions={clients}"],
                                tmp / f"supernode{i}.log", env))  # fmt: skip
        submit = subprocess.run([str(BIN / "flwr"), "run", str(app), "bench"], env=env,
                                capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        if submit.returncode:
            raise RuntimeError(f"flwr run failed: {(submit.stdout + submit.stderr)[-1500:]}")
        deadline = time.monotonic() + float(cfg.get("timeout", 240))
        while not marks_path.exists():
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1200:]}"
                                 for p in sorted(tmp.glob("*.log")))  # fmt: skip
                why = "a process exited" if dead else "timed out"
                raise RuntimeError(f"Flower deployed run {why}; logs:\n{logs}")
            time.sleep(0.2)  # polling for a file another process writes; not a timing
        total = time.perf_counter() - t0
        got = json.loads(marks_path.read_text())
        marks = got["marks"]
        per_round = [b - a for a, b in zip(marks, marks[1:])]
        return {
            "round_s": statistics.median(per_round[1:] or per_round),
            "rounds_s": per_round,
            "total_s": total,
            "note": f"flower-superlink + 2 flower-supernode (--insecure, subprocess isolation) "
                    f"on 127.0.0.1, flwr run; {rounds} rounds, median after the first; "
                    f"{total:.0f} s from start to the last round",
        }  # fmt: skip
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
