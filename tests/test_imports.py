"""``import veil`` stays light: MPC, HE, DP and scipy load on first use (issue 11)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys, torch
import veil
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "scipy"
               or m.startswith(("veil.dp", "veil.mpc", "veil.he")))
print(repr(heavy))
x = torch.ones(2)
assert callable(x.share) and callable(x.encrypt) and callable(torch.nn.Linear(1, 1).share)
print(repr(sorted(m for m in ("veil.dp", "veil.mpc", "veil.he") if m in sys.modules)))
veil.dp.LaplaceMechanism  # the attribute imports the package
print(repr("veil.dp" in sys.modules))
w = veil.VirtualWorker("n")  # a node starts: the capabilities every node has load
print(repr(sorted(w.node.capability_state(c).__class__.__name__ for c in ("dp", "mpc", "he"))))
"""


def test_import_veil_loads_no_capability_and_no_scipy() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split("\n")  # fmt: skip
    assert out[0] == "[]", f"import veil loaded {out[0]}"
    assert out[1] == "[]", "creating the torch entry points must not import their packages"
    assert out[2] == "True"
    assert out[3] == "['CapabilityState', 'MPCState', 'NodeDP']"


def test_a_lazy_entry_point_calls_the_real_method_after_loading() -> None:
    probe = (
        "import torch, veil, sys\n"
        "x = torch.tensor([1.5, -2.0])\n"
        "y = x.fix_precision()\n"  # the placeholder imports veil.mpc, then calls its method
        "assert 'veil.mpc' in sys.modules\n"
        "assert not getattr(torch.Tensor.fix_precision, '_veil_lazy', False)\n"
        "print(y.float_precision().tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=300).stdout  # fmt: skip
    assert out.strip() == "[1.5, -2.0]"
