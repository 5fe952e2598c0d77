"""Doctest collection: the optional Keras front end is skipped where Keras is not installed
(``pip install 'veil[keras]'``); its tests in tests/keras skip with that reason."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("keras") else ["src/veil/keras/*"]
