#!/usr/bin/env python
"""Regenerate tests/dp/accountant_fixtures.json (the accountant test fixtures) with Opacus and Google's dp-accounting.

Not run in CI (neither library is a veil dependency). Run with a Python that has
``opacus==1.6.0`` and ``dp-accounting==0.6.0``, e.g. a side venv::

    python -m venv --system-site-packages /tmp/dpside
    /tmp/dpside/bin/pip install --no-deps opacus==1.6.0 dp-accounting==0.6.0
    /tmp/dpside/bin/pip install absl-py attrs dm-tree mpmath semantic-version
    /tmp/dpside/bin/python benchmarks/dp_accountant_fixtures.py
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dp_accounting
import opacus
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import PRVAccountant, RDPAccountant

#: (noise multiplier, sample rate, steps, delta)
GRID = [
    (1.0, 0.01, 300, 1e-5),
    (1.0, 0.01, 1000, 1e-5),
    (1.1, 256 / 60_000, 2350, 1e-5),
    (0.8, 0.05, 200, 1e-6),
    (2.0, 0.1, 500, 1e-5),
    (0.6, 0.004, 1000, 1e-5),
    (1.5, 1.0, 10, 1e-5),
    (4.0, 0.02, 3000, 1e-7),
    (0.9, 0.2, 50, 1e-3),
]


def main() -> None:
    warnings.simplefilter("ignore")
    rows = []
    for sigma, q, steps, delta in GRID:
        rdp = RDPAccountant()
        rdp.history = [(sigma, q, steps)]
        prv = PRVAccountant()
        prv.history = [(sigma, q, steps)]
        event = dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps
        )
        pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
        pld.compose(event)
        g_rdp = rdp_privacy_accountant.RdpAccountant()
        g_rdp.compose(event)
        rows.append(
            {
                "noise_multiplier": sigma,
                "sample_rate": q,
                "steps": steps,
                "delta": delta,
                "opacus_rdp": rdp.get_epsilon(delta),
                "opacus_prv": prv.get_epsilon(delta, eps_error=0.01),
                "dp_accounting_pld": pld.get_epsilon(delta),
                "dp_accounting_pld_discretization": 1e-4,
                "dp_accounting_rdp": g_rdp.get_epsilon(delta),
            }
        )
        print(rows[-1])
    out = {
        "generated_by": "benchmarks/dp_accountant_fixtures.py",
        "opacus": opacus.__version__,
        "dp_accounting": getattr(dp_accounting, "__version__", "0.6.0"),
        "rows": rows,
    }
    path = Path(__file__).resolve().parent.parent / "tests" / "dp" / "accountant_fixtures.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
