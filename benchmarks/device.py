#!/usr/bin/env python
"""Benchmarks of on-device prediction: veil.device's Predictor next to torch eager.

Each row is measured against its baseline in the same run, interleaved sample by sample,
and reported as medians:

1. Batch-1 inference of an MLP (784-128-10): ``veil.device.Predictor`` (onnxruntime, one
   thread, the model written by ``veil.export``) vs the same model in torch eager (one
   thread, ``torch.inference_mode()``). Target: at most 1x torch's time.
2. The same for LeNet-5 (conv, max-pool, relu, linear on a 28x28 image).
3. The size of the device install (veil without torch: ``pip install --no-deps veil``,
   numpy, onnxruntime) in a fresh venv, vs torch's CPU install (torch and what it
   requires, as installed here). Target: at most a quarter of torch's.

Usage::

    python benchmarks/device.py                   # full run (~1 min), appends to RESULTS.md
    python benchmarks/device.py --quick --no-write   # smoke test, seconds (the size row from
                                                     # the installed packages, no venv built)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
try:
    import veil
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
    import veil

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from remote_ops import Row, emit, interleaved, machine, med
from torch import nn

from veil.device import Predictor

#: Packages a venv has before anything is installed (not part of the device install).
_TOOLS = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence")


@dataclass(frozen=True)
class Config:
    batch: int  # back-to-back predictions per timing sample
    rounds: int  # timing samples per side
    build_venv: bool  # measure a fresh device venv (else: the installed packages' files)

    @classmethod
    def make(cls, quick: bool) -> Config:
        return cls(20, 5, False) if quick else cls(200, 60, True)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def inference_row(cfg: Config, name: str, model: nn.Module, shape: tuple[int, ...],
                  tmp: Path) -> Row:  # fmt: skip
    model.eval()
    path = veil.export(model, tmp / f"{name}.onnx", torch.randn(1, *shape))
    predictor = Predictor(path, threads=1)
    x = torch.randn(1, *shape)
    xn = x.numpy()

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    err = float(np.abs(predictor.predict(xn) - eager().numpy()).max())
    assert err <= 1e-5, f"{name}: the predictor differs from torch by {err}"
    t = interleaved({"veil": lambda: predictor.predict(xn), "torch": eager}, batch=cfg.batch,
                    rounds=cfg.rounds, warmup=50)  # fmt: skip
    v, b = med(t["veil"]) * 1e6, med(t["torch"]) * 1e6
    params = sum(p.numel() for p in model.parameters())
    return Row(f"{name} batch 1: Predictor vs torch eager", v, b, v / b, "×", 1.0, "µs",
               f"{params:,} parameters; onnxruntime {_version('onnxruntime')}, 1 thread, vs torch "
               f"{torch.__version__}, 1 thread, inference_mode; max abs difference {err:.1e}; "
               f"ONNX file {path.stat().st_size / 1024:.0f} KiB")  # fmt: skip


# ----------------------------------------------------------------------------- sizes
def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def _installed_mb(roots: list[str]) -> tuple[float, list[str]]:
    """MB of the files of these distributions and everything they require (no extras),
    as installed in this environment; and the distributions counted."""
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    total = 0
    for dist in seen.values():
        for f in dist.files or []:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                total += p.stat().st_size
    return total / 1e6, sorted(seen)


def _device_deps() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"]["device"])


def _venv_mb(tmp: Path) -> tuple[float, str]:
    """Build the device install in a fresh venv and measure its site-packages."""
    venv = tmp / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=600, capture_output=True)
    subprocess.run([*pip, *_device_deps()], check=True, timeout=600, capture_output=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    sizes: dict[str, int] = {}
    for f in site.rglob("*"):
        if f.is_file():
            top = f.relative_to(site).parts[0]
            sizes[top] = sizes.get(top, 0) + f.stat().st_size
    counted = {k: v for k, v in sizes.items() if not k.split("-")[0].startswith(_TOOLS)}
    big = sorted(counted.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in big)
    return sum(counted.values()) / 1e6, f"measured in a fresh venv (largest: {parts} MB)"


def size_row(cfg: Config, tmp: Path) -> Row:
    torch_mb, torch_dists = _installed_mb(["torch"])
    if cfg.build_venv:
        device_mb, how = _venv_mb(tmp)
    else:
        deps_mb, _ = _installed_mb(_device_deps())
        src = sum(f.stat().st_size for f in (ROOT / "src" / "veil").rglob("*.py")) / 1e6
        device_mb, how = deps_mb + src, "estimated from the installed packages (--quick)"
    return Row("device install (no torch)", device_mb, torch_mb, device_mb / torch_mb, "×", 0.25,
               "MB", f"veil --no-deps + {' + '.join(_device_deps())}; {how}; baseline: torch "
               f"{torch.__version__} and what it requires ({len(torch_dists)} distributions)")  # fmt: skip


def run(cfg: Config) -> list[Row]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="veil-bench-device-") as d:
        tmp = Path(d)
        rows = [
            inference_row(cfg, "MLP 784-128-10", MLP(), (784,), tmp),
            inference_row(cfg, "LeNet-5", LeNet(), (1, 28, 28), tmp),
        ]
        rows.append(size_row(cfg, tmp))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, no venv built")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    mode = "quick" if args.quick else "full"
    torch.set_num_threads(1)  # batch-1 prediction on a device: one thread on either side
    info = machine()
    info["onnxruntime"] = _version("onnxruntime")
    t0 = time.perf_counter()
    rows = run(cfg)
    elapsed = time.perf_counter() - t0
    emit(rows, f"veil.device ({mode}, {info['cpu']}, {info['cores']} cores)", args, info, mode,
         elapsed, "device")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
