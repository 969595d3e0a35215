"""trl-sgcd: Sibling-Guided Credit Distillation (SGCD) for TRL's GRPOTrainer.

Swap `GRPOTrainer` -> `SGCDTrainer` and `GRPOConfig` -> `SGCDConfig`. Heavy modules load lazily, so
`import trl_sgcd` stays cheap; `from trl_sgcd import SGCDTrainer` imports TRL's trainer stack on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0.dev0"

_LAZY = {
    "SGCDConfig": "trl_sgcd.config",
    "SGCDTrainer": "trl_sgcd.trainer",
    "SiblingReferenceBuilder": "trl_sgcd.credit.reference.builder",
    "CreditReference": "trl_sgcd.credit.types",
    "DenseDivergenceScorer": "trl_sgcd.credit.scoring.scorer",
    "topk_divergence": "trl_sgcd.credit.scoring.divergence",
    "credit_saliency": "trl_sgcd.credit.weighting.saliency",
    "credit_weights": "trl_sgcd.credit.weighting.weights",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trl_sgcd' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
