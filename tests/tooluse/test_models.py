"""Model names are resolved before anything loads (`check_model_name`): one message for a missing local path in
`trl-sgcd train`, `eval`, `demo` and `SGCDTrainer(model=...)`, no Hub call for a local-looking name or offline, the
builtin names and their deprecated spellings; the cache folder is announced when it is first created; and the library
never imports its command line."""

import ast
import time
from pathlib import Path

import pytest

from trl_sgcd import cli
from trl_sgcd.tooluse import models
from trl_sgcd.tooluse.models import check_model_name

SRC = Path(__file__).resolve().parents[2] / "src" / "trl_sgcd"


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test on any Hub call (the cache lookup included)."""
    import huggingface_hub

    def forbidden(*args, **kwargs):
        raise AssertionError("no Hub call for this name")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", forbidden)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding `outputs/tiny_cpu/config.json` (a saved run) and `empty/` (not a model)."""
    (tmp_path / "outputs" / "tiny_cpu").mkdir(parents=True)
    (tmp_path / "outputs" / "tiny_cpu" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["outputs/tiny_cpuu", "./outputs/tiny_cpuu", "outputs/tiny_cpuu/", "~/no_such/x"])
def test_missing_local_path_fails_at_once_with_a_hint_and_no_hub_call(name, workdir, no_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even online: a local-looking name is never a Hub id
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        check_model_name(name, field="model_name_or_path")
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert message.startswith(f"model_name_or_path={name!r}: no such folder") and "\n" not in message
    assert "hf download" not in message and "builtin:smollm2" in message
    if "tiny_cpuu" in name:
        assert "Did you mean" in message and "tiny_cpu'" in message
    absolute = str(workdir / "outputs" / "nope" / "x")
    with pytest.raises(ValueError, match="Its parent folder .* does not exist either") as error:
        check_model_name(absolute, field="--model")
    assert f"--model={absolute!r}: no such folder." in str(error.value) and "hf download" not in str(error.value)


def test_folders_builtin_names_and_hub_ids(workdir, no_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert check_model_name("outputs/tiny_cpu") == "outputs/tiny_cpu"
    assert check_model_name("builtin:tiny-context") == "builtin:tiny-context"
    assert check_model_name("Qwen/Qwen3-4B-Instruct-2507") == "Qwen/Qwen3-4B-Instruct-2507"  # online: loaded later
    with pytest.raises(ValueError, match="'empty' is a folder without config.json"):
        check_model_name("empty")
    with pytest.raises(ValueError, match="'builtin:gpt5' is not a builtin model; choose one of builtin:smollm2"):
        check_model_name("builtin:gpt5")
    with pytest.raises(ValueError, match="model is required"):
        check_model_name("")


def test_hub_id_offline_must_be_cached(workdir, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, file: None)
    with pytest.raises(ValueError, match=r"HF_HUB_OFFLINE is set .*`hf download org/model`"):
        check_model_name("org/model", field="--model")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, file: "/cache/config.json")
    assert check_model_name("org/model") == "org/model"


def test_deprecated_builtin_spellings():
    said = []
    for old, new in (
        ("bundled", "builtin:smollm2"),
        ("tiny", "builtin:tiny"),
        ("bundled:tiny-context", "builtin:tiny-context"),
    ):
        assert check_model_name(old, field="--model", warn=said.append) == new
    assert said[0] == "--model='bundled' is deprecated and will be removed: write 'builtin:smollm2'."
    with pytest.warns(FutureWarning, match="'tiny' is deprecated"):
        check_model_name("tiny")


def test_one_message_in_train_eval_demo_and_the_python_api(workdir, capsys, monkeypatch):
    """The same sentence, with each entry point's own field name, and nothing loaded (each fails in under a second)."""
    from trl_sgcd import SGCDTrainer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError) as error:
        check_model_name("outputs/typo", field="FIELD")
    sentence = str(error.value).split("FIELD=", 1)[1]
    for command, field in (
        (["train", "--model_name_or_path", "outputs/typo"], "model_name_or_path"),
        (["eval", "--model", "outputs/typo"], "--model"),
        (["demo", "--model", "outputs/typo"], "--model"),
    ):
        start = time.perf_counter()
        assert cli.main(command) == 2
        assert time.perf_counter() - start < 1.0, command
        assert capsys.readouterr().err == f"trl-sgcd {command[0]}: error: {field}={sentence}\n"
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        SGCDTrainer(model="outputs/typo")
    assert time.perf_counter() - start < 1.0 and str(error.value) == f"model={sentence}"


def test_cache_folder_is_announced_once(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    monkeypatch.setenv("TRL_SGCD_CACHE", str(root))
    assert models.cache_root() == str(root) and root.is_dir()
    assert f"caching converted models and warm starts under {root}" in capsys.readouterr().err
    models.cache_root()
    assert capsys.readouterr().err == ""


def test_the_library_never_imports_its_command_line():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] in ("cli", "demo", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(SRC)}: {n}" for n in names if n.startswith("trl_sgcd.cli")]
    assert offenders == []
