"""SGCDConfig: the credit_* fields do not shadow GRPOConfig, are documented, are checked, and parse through TrlParser."""

import dataclasses
import logging
import re
import warnings

import pytest
import yaml
from trl import GRPOConfig, TrlParser

from trl_sgcd.cli.train import parse_args
from trl_sgcd.config import CREDIT_MODES, DIVERGENCES, SGCDConfig

CPU = dict(use_cpu=True, bf16=False)  # GRPOConfig defaults to bf16, which this CPU machine does not support
GRPO_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)}
NEW_FIELDS = [f for f in dataclasses.fields(SGCDConfig) if f.name not in GRPO_FIELDS]


def make_config(tmp_path, **kwargs) -> SGCDConfig:
    return SGCDConfig(output_dir=str(tmp_path), **CPU, **kwargs)


def test_new_fields_are_credit_prefixed_and_shadow_nothing():
    assert len(NEW_FIELDS) >= 20
    assert [f.name for f in NEW_FIELDS if not f.name.startswith("credit_")] == []
    # Nothing SGCDConfig declares itself redefines a parent field (e.g. GRPOConfig's top_k, beta, temperature).
    assert set(SGCDConfig.__annotations__) & GRPO_FIELDS == set()


def test_credit_fields_have_help_and_are_in_the_docstring():
    for f in NEW_FIELDS:
        assert f.metadata.get("help"), f"{f.name} has no help metadata"
        assert f"{f.name} (`" in SGCDConfig.__doc__, f"{f.name} is missing from the SGCDConfig docstring"


def test_defaults_are_the_papers(tmp_path):
    config = make_config(tmp_path)
    assert (config.credit_mode, config.credit_gamma, config.credit_cap) == ("sgcd", 1.0, 2.0)
    assert config.credit_divergence == "reverse_kl"
    assert config.credit_private_columns == []
    assert set(CREDIT_MODES) >= {"sgcd", "off", "no_reference", "uniform", "direct_sd"}
    assert set(DIVERGENCES) == {"reverse_kl", "forward_kl", "jsd"}


@pytest.mark.parametrize(
    "name, value",
    [
        ("credit_cap", 1.0),
        ("credit_cap", 0.5),
        ("credit_gamma", -0.1),
        ("credit_top_k", 0),
        ("credit_chunk_size", 0),
        ("credit_max_span", 0),
        ("credit_mode", "grpo"),
        ("credit_divergence", "kl"),
        ("credit_reference_backend", "openai"),
        ("credit_reference_fallback", "retry"),
        ("credit_reference_deadline", 0.0),
        ("credit_reference_deadline", -5.0),
        ("credit_reference_retries", -1),
        ("credit_reference_concurrency", 0),
        ("credit_scoring_batch_size", 0),
        ("credit_min_mixed_fraction", 1.5),
        ("credit_saturation_z", 0.0),
        ("credit_direct_sd_coef", -1.0),
    ],
)
def test_post_init_rejects_bad_values_naming_the_field(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        make_config(tmp_path, **{name: value})


def test_litellm_backend_needs_a_model(tmp_path):
    with pytest.raises(ValueError, match="credit_reference_model"):
        make_config(tmp_path, credit_reference_backend="litellm")
    config = make_config(tmp_path, credit_reference_backend="litellm", credit_reference_model="openai/gpt-4o-mini")
    assert config.credit_reference_model == "openai/gpt-4o-mini"


def test_spike_threshold_must_exceed_reset(tmp_path):
    with pytest.raises(ValueError, match="credit_spike_z"):
        make_config(tmp_path, credit_spike_z=-1.0, credit_reset_z=-0.5)


def test_private_columns_accept_a_comma_separated_string(tmp_path):
    assert make_config(tmp_path, credit_private_columns="gold_actions, gold_answer").credit_private_columns == [
        "gold_actions",
        "gold_answer",
    ]


def write_yaml(path, mapping) -> str:
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def test_trlparser_precedence_defaults_yaml_cli(tmp_path):
    recipe = write_yaml(
        tmp_path / "r.yaml",
        dict(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            learning_rate=3.0e-6,
            credit_gamma=0.5,
            credit_cap=3.0,
            credit_private_columns=["gold_actions", "gold_answer"],
        ),
    )
    (config,) = TrlParser([SGCDConfig]).parse_args_and_config(
        ["--config", recipe, "--credit_cap", "1.5", "--learning_rate", "1e-6"]
    )
    assert config.credit_top_k == 32  # default
    assert config.credit_gamma == 0.5  # YAML
    assert config.credit_cap == 1.5 and config.learning_rate == 1e-6  # CLI beats YAML
    assert config.credit_private_columns == ["gold_actions", "gold_answer"]  # YAML list


def test_private_columns_from_yaml_string_and_cli(tmp_path):
    recipe = write_yaml(
        tmp_path / "r.yaml",
        dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, credit_private_columns="gold_actions,gold_answer"),
    )
    (config,) = TrlParser([SGCDConfig]).parse_args_and_config(["--config", recipe])
    assert config.credit_private_columns == ["gold_actions", "gold_answer"]  # YAML string, split by __post_init__
    (config,) = TrlParser([SGCDConfig]).parse_args_and_config(
        ["--config", recipe, "--credit_private_columns", "a", "b"]
    )
    assert config.credit_private_columns == ["a", "b"]  # CLI list beats YAML
    # Our parser also splits one comma-separated CLI string.
    _, config, _ = parse_args(["--config", recipe, "--credit_private_columns", "gold_actions,gold_answer"])
    assert config.credit_private_columns == ["gold_actions", "gold_answer"]


def test_credit_fields_round_trip_through_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")  # a named key variable must be set (SGCDConfig checks it)
    original = make_config(
        tmp_path,
        credit_mode="uniform",
        credit_gamma=0.7,
        credit_cap=1.8,
        credit_divergence="jsd",
        credit_top_k=16,
        credit_scoring_batch_size=4,
        credit_reference_backend="litellm",
        credit_reference_model="hosted_vllm/m",
        credit_reference_api_base="http://localhost:8000/v1",
        credit_reference_api_key_env="MY_KEY",
        credit_private_columns=["gold_answer"],
        credit_dynamic_sampling=True,
        credit_strict=True,
    )
    credit = {f.name: getattr(original, f.name) for f in NEW_FIELDS}
    recipe = write_yaml(tmp_path / "r.yaml", dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, **credit))
    (parsed,) = TrlParser([SGCDConfig]).parse_args_and_config(["--config", recipe])
    assert {name: getattr(parsed, name) for name in credit} == credit


def test_invalid_value_in_yaml_is_reported_by_name(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, credit_cap=1))
    with pytest.raises(ValueError, match="credit_cap"):
        TrlParser([SGCDConfig]).parse_args_and_config(["--config", recipe])


def test_yaml_bare_off_and_comma_separated_columns():
    from trl_sgcd import SGCDConfig

    config = SGCDConfig(
        output_dir="unused",
        use_cpu=True,
        bf16=False,
        credit_mode=False,
        credit_private_columns=["gold_answer,gold_actions", "secret"],
    )
    assert config.credit_mode == "off"
    assert config.credit_private_columns == ["gold_answer", "gold_actions", "secret"]


# --- help text: the docstring, in full, and the CPU / deprecation defaults -----------------------------------------


def docstring_entry(name: str) -> str:
    """`name`'s entry in the SGCDConfig docstring, read independently of config._help (regex over the raw text)."""
    match = re.search(rf"^ +{name} \(`.*?\n((?: {{12,}}.*\n)+)", SGCDConfig.__doc__, re.M)
    assert match, f"{name} is missing from the SGCDConfig docstring"
    return " ".join(match.group(1).split())


@pytest.mark.parametrize("f", NEW_FIELDS, ids=lambda f: f.name)
def test_help_is_the_full_docstring_entry(f):
    assert f.metadata["help"] == docstring_entry(f.name)
    assert len(f.metadata["help"]) >= 20
    if f.type in (bool, "bool"):  # `--no_<flag>` reuses this text, so it must not read as an order
        assert f.metadata["help"].startswith("Whether to"), f.name


def test_credit_mode_help_explains_every_mode():
    text = SGCDConfig.__dataclass_fields__["credit_mode"].metadata["help"]
    for mode in CREDIT_MODES:
        assert re.search(rf'`"{mode}"`: \w', text), f"credit_mode help does not explain {mode!r}"


def test_cpu_machine_gets_fp32_with_a_log_line(tmp_path, caplog, monkeypatch):
    import trl_sgcd.config as config_module

    monkeypatch.setattr(config_module, "_has_bf16_accelerator", lambda: False)
    monkeypatch.setattr(config_module, "_NOTED", [])
    with caplog.at_level(logging.WARNING, logger="trl_sgcd.config"):
        config = SGCDConfig(output_dir=str(tmp_path))  # no use_cpu, no bf16: GRPOConfig alone raises here
    assert config.bf16 is False
    assert "bf16=False" in caplog.text
    explicit = SGCDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True)  # an explicit choice is kept
    assert explicit.bf16 is True


def test_checkpointing_and_ddp_defaults_are_quiet(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = make_config(tmp_path)
        off = make_config(
            tmp_path, gradient_checkpointing=False, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    assert [str(w.message) for w in caught if "checkpointing" in str(w.message)] == []
    assert config.activation_checkpointing is True and config.gradient_checkpointing is True  # TRL's default kept
    assert off.activation_checkpointing is False and off.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert config.ddp_find_unused_parameters is False  # no DDP search (and warning) for unused parameters
    assert make_config(tmp_path, ddp_find_unused_parameters=True).ddp_find_unused_parameters is True


def test_trl_deprecated_checkpointing_calls_are_silenced():
    """TRL 1.16 calls `gradient_checkpointing_enable` / `_disable` and reads `is_gradient_checkpointing` around each
    generation; transformers' deprecation warnings for them are TRL's, not the user's, and are silenced."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trl_sgcd.trainer import quiet_trl_deprecations

    config = LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_trl_deprecations():  # scoped: no global filter (importing trl_sgcd installs none)
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
            model.gradient_checkpointing_disable()
        model.gradient_checkpointing_enable()  # outside the block, transformers warns as usual
    messages = [str(w.message) for w in caught if "deprecated" in str(w.message)]
    assert len(messages) == 1 and "gradient_checkpointing_enable" in messages[0]


def test_dynamic_sampling_defaults_on_in_the_credit_modes_and_off_in_off(tmp_path):
    assert make_config(tmp_path).credit_dynamic_sampling is True
    assert make_config(tmp_path, credit_mode="no_reference").credit_dynamic_sampling is True
    assert make_config(tmp_path, credit_mode="off").credit_dynamic_sampling is False  # GRPO bit for bit
    assert make_config(tmp_path, credit_mode="off", credit_dynamic_sampling=True).credit_dynamic_sampling is True
    assert make_config(tmp_path, credit_dynamic_sampling=False).credit_dynamic_sampling is False


def test_importing_the_config_installs_no_warnings_filter():
    import subprocess
    import sys

    code = (
        "import warnings, trl_sgcd.config; "
        "assert not [f for f in warnings.filters if f[1] is not None and 'checkpointing' in f[1].pattern]"
    )  # third-party imports add their own filters; none of trl-sgcd's
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
