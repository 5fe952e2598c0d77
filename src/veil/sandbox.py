"""PySyft 0.2's ``sy.create_sandbox(globals())``: six workers holding scikit-learn's datasets.

The tutorials' sandbox: ``hook``, the workers ``bob, theo, jason, alice, andy, jon`` (and
``workers``, and a ``grid`` that searches them all) put in the caller's globals, each
worker holding one slice of scikit-learn's bundled datasets, tagged for ``search``. Nothing
is downloaded: only the datasets that ship inside scikit-learn are used (PySyft's Boston
housing set was removed from scikit-learn; it is not here).

Example:
    >>> import torch, veil as sy
    >>> grid = sy.PrivateGridNetwork(sy.VirtualWorker("bob"), sy.VirtualWorker("alice"))
    >>> _ = torch.ones(2).tag("#x").send(grid.workers[0])
    >>> {k: len(v) for k, v in grid.search("#x").items()}
    {'bob': 1}
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import torch

from veil.node import VirtualWorker
from veil.pointers import PointerTensor, TorchHook

#: The sandbox's workers, in PySyft's order.
WORKER_NAMES = ("bob", "theo", "jason", "alice", "andy", "jon")
#: scikit-learn loader name -> the tags PySyft gave that dataset.
DATASETS: dict[str, tuple[str, ...]] = {
    "load_diabetes": ("#diabetes",),
    "load_breast_cancer": ("#breast_cancer_dataset",),
    "load_digits": ("#digits_dataset",),
    "load_iris": ("#iris_dataset",),
    "load_wine": ("#wine_dataset",),
    "load_linnerud": ("#linnerrud_dataset",),
}


class PrivateGridNetwork:
    """Workers searched together (PySyft 0.2's ``grid``): ``grid.search("#tag", ...)`` returns
    ``{worker id: [pointers]}`` for the workers where something matched.

    Args:
        *workers: the workers (VirtualWorkers or node clients) to search.
    """

    def __init__(self, *workers: Any) -> None:
        self.workers = list(workers)

    def search(self, *query: str) -> dict[str, list[PointerTensor]]:
        """Pointers, by worker, to the tensors you may see that carry every tag in ``query``."""
        found = {}
        for w in self.workers:
            hits = w.search(list(query))
            if hits:
                found[w.id if hasattr(w, "id") else w.name] = hits
        return found

    def __repr__(self) -> str:
        return f"PrivateGridNetwork({[w.name for w in self.workers]})"


def _split_and_send(t: torch.Tensor, workers: list[VirtualWorker], description: str) -> None:
    """Send one slice of ``t`` to each worker (the last takes the rest), kept on the node."""
    n = len(workers)
    size = t.shape[0] // n
    for i, w in enumerate(workers):
        part = t[i * size : (i + 1) * size if i < n - 1 else t.shape[0]]
        ptr = w.send(part, description=description)
        ptr._owned = False  # the sandbox's data stays when this pointer goes


def create_sandbox(gbs: MutableMapping[str, Any], verbose: bool = True,
                   download_data: bool = True) -> None:  # fmt: skip
    """Put ``hook``, the six workers, ``workers`` and ``grid`` in ``gbs`` (``globals()``);
    with ``download_data`` (PySyft's name; nothing is downloaded) load scikit-learn's bundled
    datasets, split each across the workers and tag them ``#data`` / ``#target``.

    Example:
        >>> import veil as sy
        >>> g = {}
        >>> sy.create_sandbox(g, verbose=False)
        >>> [w.name for w in g["workers"]], sorted(g["grid"].search("#iris_dataset", "#target"))
        (['bob', 'theo', 'jason', 'alice', 'andy', 'jon'], ['alice', 'andy', 'bob', 'jason', 'jon', 'theo'])
    """
    say: Callable[[str], None] = print if verbose else (lambda _msg: None)
    say("Setting up Sandbox...")
    hook = TorchHook(gbs.get("torch", torch))
    workers = [VirtualWorker(hook, id=name) for name in WORKER_NAMES]
    gbs["hook"] = hook
    gbs.update(zip(WORKER_NAMES, workers, strict=True))
    gbs["workers"] = workers
    if download_data:
        try:
            from sklearn import datasets
        except ImportError as exc:
            raise ImportError(
                "create_sandbox needs scikit-learn: pip install scikit-learn"
            ) from exc
        for loader, tags in DATASETS.items():
            say(f"\t- {loader.removeprefix('load_')}")
            bunch = getattr(datasets, loader)()
            describe = str(bunch["DESCR"])
            for key, role in (("data", "#data"), ("target", "#target")):
                t = torch.as_tensor(bunch[key]).float()
                text = " ".join((*tags, role)) + "\n" + describe
                _split_and_send(t, workers, text)
    gbs["grid"] = PrivateGridNetwork(*workers)
    say("Done!")
