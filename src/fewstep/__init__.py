"""fewstep: decode masked diffusion language models in fewer forward passes, and measure it.

    import fewstep
    model = fewstep.load_model("tiny-dlm")
    [result] = fewstep.generate(model, ["Mia has 7 pens . She buys 5 more . How many pens does Mia have ?"],
                                fewstep.DecodeConfig(strategy="llada", steps=24))
    print(result.text, result.nfe)

Importing the package is light: torch, transformers and the evaluation stack load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fewstep.config import DecodeConfig
from fewstep.errors import ConfigError, FewstepError, ModelLoadError, PromptTooLongError, TaskError

__version__ = "0.1.0"
__all__ = [
    "DecodeConfig",
    "ConfigError",
    "FewstepError",
    "ModelLoadError",
    "PromptTooLongError",
    "TaskError",
    "GenerationResult",
    "generate",
    "load_model",
    "register_auto_classes",
    "__version__",
]

if TYPE_CHECKING:
    from fewstep.decoding.result import GenerationResult
    from fewstep.engine import generate
    from fewstep.models.hf import register_auto_classes
    from fewstep.models.loading import load_model

_LAZY = {
    "generate": "fewstep.engine",
    "GenerationResult": "fewstep.decoding.result",
    "load_model": "fewstep.models.loading",
    "register_auto_classes": "fewstep.models.hf",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fewstep' has no attribute {name!r}")
