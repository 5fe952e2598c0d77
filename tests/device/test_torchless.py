"""A device install has no torch: veil.device predicts and fetches there with numpy and
onnxruntime alone (the install of docs/device.md, built in a fresh venv)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import veil
from veil.node import Node
from veil.node.server import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
OWNER, OWNER_PW = "owner@device.test", "owner-password-3"
DEVICE, DEVICE_PW = "phone@device.test", "device-password-3"
#: pip's words when it cannot reach the package index (then the test is skipped, not failed).
_OFFLINE = ("Failed to establish a new connection", "Network is unreachable",
            "Temporary failure in name resolution", "No matching distribution found")  # fmt: skip

_PROBE = """
import json, sys
import numpy as np
out = {}
try:
    import torch  # noqa: F401
    out["torch"] = "importable"
except ImportError:
    out["torch"] = "missing"
import veil
from veil.device import Predictor, fetch
x = np.load(sys.argv[1])
p = Predictor(sys.argv[2], sha256=sys.argv[3])
np.save(sys.argv[4], p.predict(x))
q = fetch(sys.argv[5], "lenet-ish", 1, email=sys.argv[6], password=sys.argv[7])
np.save(sys.argv[8], q.predict(x))
try:
    veil.VirtualWorker
except ImportError as exc:
    out["rest"] = str(exc)
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "veil"))
print(json.dumps(out))
"""


def _pip(venv: Path, *args: str) -> None:
    run = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    if run.returncode != 0:
        if any(s in run.stderr for s in _OFFLINE):
            pytest.skip(f"the package index is unreachable: {run.stderr.strip()[-300:]}")
        pytest.fail(f"pip install {' '.join(args)} failed:\n{run.stderr[-3000:]}")


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``python -m venv``, then the device install: veil without its dependencies, and the
    ``device`` extra's packages (read from pyproject.toml, so the two stay one list)."""
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    device_deps = extras["optional-dependencies"]["device"]
    _pip(venv, "--no-deps", str(ROOT))
    _pip(venv, *device_deps)
    yield venv


@pytest.mark.slow
def test_a_device_install_without_torch_predicts_and_fetches(
    device_venv: Path, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 13 * 13, 10)).eval()  # fmt: skip
    path = veil.export(model, tmp_path / "model.onnx", torch.randn(1, 1, 28, 28))
    x = torch.randn(3, 1, 28, 28)
    np.save(tmp_path / "x.npy", x.numpy())
    node = Node("hospital", owner_email=OWNER, owner_password=OWNER_PW)
    node.create_user(DEVICE, DEVICE_PW)
    with serve_in_thread(node) as url:
        owner = veil.connect(url, email=OWNER, password=OWNER_PW)
        info = veil.models.publish(owner, "lenet-ish", path, version=1)
        owner.close()
        run = subprocess.run(
            [str(device_venv / "bin" / "python"), "-c", _PROBE, str(tmp_path / "x.npy"), str(path),
             info.sha256, str(tmp_path / "y.npy"), url, DEVICE, DEVICE_PW, str(tmp_path / "z.npy")],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = json.loads(run.stdout)
    expected = model(x).detach().numpy()

    assert out["torch"] == "missing"
    assert not any(m.split(".")[0] == "torch" for m in out["modules"])
    assert "needs torch" in out["rest"] and "pip install torch" in out["rest"]
    for got in (np.load(tmp_path / "y.npy"), np.load(tmp_path / "z.npy")):
        assert np.abs(got - expected).max() <= 1e-5
    site = next((device_venv / "lib").glob("python*/site-packages"))
    total = _size_mb(site)
    tools = sum(_size_mb(p) for p in site.glob("*") if p.name.split("-")[0] in ("pip", "setuptools",
                "pkg_resources", "_distutils_hack", "distutils"))  # fmt: skip
    print(f"device venv site-packages: {total:.0f} MB ({total - tools:.0f} MB without pip and "
          "setuptools)")  # fmt: skip
    record_property("device_site_packages_mb", round(total, 1))
    record_property("device_install_mb", round(total - tools, 1))
