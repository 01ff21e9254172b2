"""Moved: the gold model is :mod:`fewstep.evaluation.gold` (it answers task examples with decoding
results, so it sits above the tasks and decoding, not among the models).

Old imports (``from fewstep.models.gold import GoldModel``) still work: the names are looked up
there when first used, so this package imports nothing above it. Remove this module once nothing
imports it.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module("fewstep.evaluation.gold"), name)
