"""Shared fixtures. Everything is built locally: the tiny model is random, the tokenizer comes from the bundled GGUF."""

import os

# Tests never reach a hub or the network; litellm must not fetch its price map.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402

from trl_sgcd.import_utils import is_cuda_available, is_deepspeed_available  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """A 2-layer random Llama with the SmolLM2 tokenizer and tool chat template (cached under $TRL_SGCD_CACHE)."""
    from trl_sgcd.tooluse.models import tiny_model_dir

    return tiny_model_dir()


_RUNS: dict = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_path):
    """`trained(name, **config)`: one tiny-model training run per name for the whole module (`tests/trainer_runs.py`)."""
    from tests.trainer_runs import _Run

    def get(name, script=None, **overrides):
        if name not in _RUNS:
            _RUNS[name] = _Run(tmp_path_factory.mktemp(name), tiny_model_path, script, **overrides)
        return _RUNS[name]

    yield get
    _RUNS.clear()


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


require_gpu = pytest.mark.skipif(not is_cuda_available(), reason="needs a CUDA GPU")
require_deepspeed = pytest.mark.skipif(
    not is_deepspeed_available(), reason="needs deepspeed (pip install trl-sgcd[deepspeed])"
)
