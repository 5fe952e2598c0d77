"""Sensitivity rules, by the rule name an op's facts declare (``veil.ops.OpFacts.dp``).

Importing this package registers every rule in :data:`veil.dp.bounds.RULES`:
:mod:`~veil.dp.rules.arithmetic` (``+ - * /``, comparisons, clamps) and
:mod:`~veil.dp.rules.functions` (unary functions), both through the broadcasting logic of
:mod:`~veil.dp.rules.elementwise`; :mod:`~veil.dp.rules.reductions` (sums, means, counts,
histograms, matrix products) and :mod:`~veil.dp.rules.layout` (copies, casts, indexing,
reshapes).

Example:
    >>> from veil.dp.bounds import RULES
    >>> {"add", "sum", "index", "round"} <= set(RULES)
    True
"""

from __future__ import annotations

from veil.dp.rules import arithmetic, elementwise, functions, layout, reductions

__all__ = ["arithmetic", "elementwise", "functions", "layout", "reductions"]
