"""PySyft 0.2's ``sy.create_sandbox(globals())``: the hospital workers, offline."""

from __future__ import annotations

import torch
from sklearn.datasets import load_breast_cancer

import veil as sy


def test_create_sandbox_builds_the_workers_and_the_tagged_datasets() -> None:
    gbs: dict[str, object] = {"torch": torch}
    sy.create_sandbox(gbs, verbose=False)
    workers = gbs["workers"]
    assert [w.name for w in workers] == ["bob", "theo", "jason", "alice", "andy", "jon"]  # type: ignore[attr-defined]
    assert gbs["bob"] is workers[0] and isinstance(gbs["hook"], sy.TorchHook)  # type: ignore[index]
    grid = gbs["grid"]
    found = grid.search("#breast_cancer_dataset", "#data")  # type: ignore[attr-defined]
    assert sorted(found) == sorted(w.name for w in workers)  # type: ignore[attr-defined]
    parts = [found[w.name][0].get() for w in workers]  # type: ignore[attr-defined]
    whole = torch.as_tensor(load_breast_cancer()["data"]).float()
    assert torch.equal(torch.cat(parts), whole)  # split in order, nothing lost
    (target,) = gbs["alice"].search(["#breast_cancer_dataset", "#target"])  # type: ignore[attr-defined]
    assert target.shape[0] == whole.shape[0] // 6
    assert gbs["bob"].search(["#boston"]) == []  # not bundled with scikit-learn: not here  # type: ignore[attr-defined]
