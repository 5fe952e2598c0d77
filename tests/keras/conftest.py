"""Keras tests skip where Keras is not installed; ``import veil.keras`` sets its backend."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("keras") is None:
    pytest.skip("Keras is not installed: pip install 'veil[keras]'", allow_module_level=True)

import veil.keras  # noqa: E402,F401 - sets KERAS_BACKEND=torch before any test imports Keras
