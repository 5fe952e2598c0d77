"""A federation's history: one row per round, and its curves.

Example:
    >>> h = History([{"round": 1, "loss": 0.9, "accuracy": 0.5, "seconds": 0.1},
    ...              {"round": 2, "loss": 0.5, "accuracy": 0.8, "seconds": 0.1}])
    >>> h.last["accuracy"], h.series("loss")
    (0.8, [0.9, 0.5])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["History"]

#: Columns every plot shows when present (others are plotted too).
_ORDER = ("loss", "test_loss", "accuracy", "epsilon", "seconds", "bytes")


class History(Sequence[dict[str, Any]]):
    """The rounds of a :class:`~veil.fl.Federation` (or a simulation): per round its number,
    the clients that took part and dropped, the training loss (when it was released), the
    evaluation's metrics, the ε spent so far (DP), the bytes moved and the seconds it took.
    ``stopped`` says why training stopped early ('' if it did not)."""

    def __init__(self, rows: Sequence[dict[str, Any]] = (), stopped: str = "") -> None:
        self.rows = list(rows)
        self.stopped = stopped

    def __getitem__(self, i: Any) -> Any:
        return self.rows[i]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __repr__(self) -> str:
        tail = f", stopped: {self.stopped}" if self.stopped else ""
        last = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.last.items()}
        return f"History({len(self.rows)} rounds, last={last}{tail})"

    @property
    def last(self) -> dict[str, Any]:
        """The last round's row ({} before the first)."""
        return self.rows[-1] if self.rows else {}

    def series(self, key: str) -> list[float]:
        """One column over the rounds (NaN where a round has none)."""
        return [float(r.get(key, math.nan)) for r in self.rows]

    def plot(self, path: str | None = None, *, title: str = "federated training") -> Any:
        """Draw the curves (loss, accuracy, ε, time per round...) with matplotlib; saves
        to ``path`` if given. Returns the figure.

        Example:
            >>> import matplotlib
            >>> matplotlib.use("Agg")
            >>> fig = History([{"round": 1, "loss": 1.0}, {"round": 2, "loss": 0.5}]).plot()
            >>> len(fig.axes)
            1
        """
        import matplotlib.pyplot as plt

        keys = [k for k in _ORDER if any(k in r for r in self.rows)]
        keys += sorted(
            {k for r in self.rows for k, v in r.items() if isinstance(v, float)}
            - set(keys)
            - {"round"}
        )
        keys = [k for k in keys if any(math.isfinite(v) for v in self.series(k))]
        cols = min(3, max(len(keys), 1))
        rows = max(1, math.ceil(len(keys) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        rounds = self.series("round")
        for ax, key in zip(axes.flat, keys):
            ax.plot(rounds, self.series(key), marker="o", markersize=3)
            ax.set_xlabel("round")
            ax.set_title(key)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys) :]:
            ax.remove()
        fig.suptitle(title + (f" (stopped: {self.stopped[:80]})" if self.stopped else ""))
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig
