"""Federated learning across three hospitals: node servers, one approval each, SecAgg+ and DP.

Run it: ``python examples/fl_hospitals.py`` (about a minute on 2 cores). It

1. starts three hospital nodes with ``veil node serve`` on loopback (each its own process
   and SQLite database in a temporary directory);
2. as each hospital's owner, uploads a third of scikit-learn's ``load_digits`` (shipped with
   the package: nothing is downloaded) as a private dataset with a random mock, adds the
   scientist and gives them a privacy budget;
3. as the scientist, builds a ``Federation``: a training plan per hospital (traced on the
   mock), enrolled with secure aggregation and central DP;
4. as each owner, reads what was asked (terms, members' key fingerprints, the plan's code)
   and approves it once, for all rounds;
5. trains: one message per hospital per round for training, four for SecAgg+; only the
   noised sum of the updates ever leaves the hospitals;
6. prints the history and saves the curves to ``fl_hospitals.png``.

With three members, node-level DP is expensive: the noise on the sum must hide a whole
hospital's update, and only ``min_clients`` members share it. The ε printed is what each
hospital's ledger was charged; federations of many members reach far smaller ε.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits

import veil
from veil.demo import spawn_node, start_node
from veil.fl import CentralDP, FedAvg, Federation

OWNER_PW, SCI, SCI_PW = "hospital-owner-pw", "scientist@lab.org", "scientist-pw-1"
ROUNDS = 15


def run(rounds: int = ROUNDS, *, progress: bool = True, plot: str | None = "fl_hospitals.png",
        workdir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the whole story; returns the final accuracy, ε and seconds per round."""
    x, y = load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32)[order], torch.tensor(y)[order]
    test = (x[1500:], y[1500:])
    procs: list[Any] = []
    owners: list[Any] = []
    scientists: list[Any] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        try:
            names = ["st-mary", "general", "childrens"]
            creds = [(f"owner@{name}.org", OWNER_PW) for name in names]
            procs = [spawn_node(Path(tmp), n, c) for n, c in zip(names, creds)]  # in parallel
            for i, (name, (email, pw), proc) in enumerate(zip(names, creds, procs)):
                _, url = start_node(Path(tmp), name, (email, pw), proc)
                owner = veil.connect(url, email=email, password=pw)
                xi, yi = x[i * 500 : (i + 1) * 500], y[i * 500 : (i + 1) * 500]
                owner.datasets.create(
                    "digits", private={"x": xi, "y": yi},
                    mock={"x": torch.rand(xi.shape, generator=gen), "y": torch.randint(0, 10, yi.shape)},
                    description="8x8 scans of handwritten digits (pixel / 16) and their labels",
                )  # fmt: skip
                owner.create_user(SCI, SCI_PW, role="data_scientist")
                owner.budgets.set(SCI, "digits", epsilon=200.0, delta=1e-5)
                owners.append(owner)
                scientists.append(veil.connect(url, email=SCI, password=SCI_PW))

            torch.manual_seed(0)
            model = torch.nn.Linear(64, 10)  # multinomial logistic regression
            fed = Federation(
                scientists, model, strategy=FedAvg(), rounds=rounds, local_epochs=2,
                batch_size=32, lr=0.5, dataset="digits", secure_aggregation=True,
                dp=CentralDP(noise_multiplier=0.3, clip=2.0, delta=1e-5), test_data=test,
                progress=progress, reason="a digit classifier for the triage study",
            )  # fmt: skip
            requests = fed.request()
            for owner, req in zip(owners, requests):
                review = veil.fl.review(owner, req.id)
                print(f"--- what {owner.name}'s owner reviews ---\n"
                      + "\n".join(review.splitlines()[:8]) + "\n    ...")  # fmt: skip
                owner.requests.approve(req.id)

            hist = fed.fit()
            for row in hist:
                print(f"round {row['round']:2d}: accuracy {row['accuracy']:.3f}, "
                      f"epsilon {row['epsilon']:.1f}, {row['seconds']:.2f} s")  # fmt: skip
            if plot:
                import matplotlib

                matplotlib.use("Agg")
                fed.plot(plot)
                print(f"curves saved to {plot}")
            secs = sorted(hist.series("seconds"))
            return {"accuracy": hist.last["accuracy"], "epsilon": hist.last["epsilon"],
                    "seconds_per_round": secs[len(secs) // 2], "rounds": len(hist)}  # fmt: skip
        finally:
            for w in owners + scientists:
                w.close()
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
                if p.stdout is not None:
                    p.stdout.close()


if __name__ == "__main__":
    print(run())
