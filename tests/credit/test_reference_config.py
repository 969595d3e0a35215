"""Building a `SiblingReferenceBuilder` from `SGCDConfig` and its argument checks: the API key variable, the step
budget, the backend and model, and `CreditReference` defaults."""

import pytest

from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder
from trl_sgcd.credit.types import CreditReference


def test_from_config(monkeypatch, tmp_path):
    from trl_sgcd.config import SGCDConfig

    monkeypatch.setenv("MY_REF_KEY", "sk-test-not-real")
    args = SGCDConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        credit_reference_backend="litellm",
        credit_reference_model="openai/test",
        credit_reference_api_base="http://127.0.0.1:9/v1",
        credit_reference_api_key_env="MY_REF_KEY",
        credit_reference_deadline=3.0,
        credit_reference_concurrency=4,
        credit_reference_max_tokens=64,
        credit_reference_fallback="none",
        credit_private_columns=["gold_answer"],
        credit_observation_max_chars=100,
    )
    builder = SiblingReferenceBuilder.from_config(args)
    assert builder.backend == "litellm" and builder.fallback == "none" and builder.private_columns == ("gold_answer",)
    assert builder.llm_client.api_key == "sk-test-not-real" and builder.llm_client.deadline == 3.0
    assert builder.llm_client.concurrency == 4 and builder.llm_client.max_tokens == 64
    assert builder.observation_max_chars == 100 and builder.max_reference_tokens == 64
    assert builder.step_budget == args.credit_reference_step_budget == 60.0


def _litellm_config(tmp_path, **kwargs):
    from trl_sgcd.config import SGCDConfig

    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", credit_reference_backend="litellm")
    return SGCDConfig(**{**base, "credit_reference_model": "openai/test", **kwargs})


def test_missing_api_key_variable_is_a_value_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SGCD_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="credit_reference_api_key_env='SGCD_UNSET_KEY'"):
        _litellm_config(tmp_path, credit_reference_api_key_env="SGCD_UNSET_KEY")
    args = _litellm_config(
        tmp_path, credit_reference_api_key_env=None, credit_reference_api_base="http://127.0.0.1:9/v1"
    )
    builder = SiblingReferenceBuilder.from_config(args)  # a keyless local server, declared explicitly
    assert builder.llm_client.api_key == "EMPTY"
    monkeypatch.setenv("SGCD_UNSET_KEY", "sk-test")
    args = _litellm_config(tmp_path, credit_reference_api_key_env="SGCD_UNSET_KEY")
    monkeypatch.delenv("SGCD_UNSET_KEY")  # unset after the config was made: the trainer's builder refuses too
    with pytest.raises(ValueError, match="SGCD_UNSET_KEY"):
        SiblingReferenceBuilder.from_config(args)
    assert _litellm_config(tmp_path, credit_mode="off", credit_reference_api_key_env="SGCD_UNSET_KEY")  # no LLM call


@pytest.mark.parametrize("budget", [0.0, -1.0])
def test_step_budget_must_be_positive(tmp_path, budget):
    with pytest.raises(ValueError, match="credit_reference_step_budget"):
        _litellm_config(tmp_path, credit_reference_step_budget=budget)


def test_invalid_backend_and_missing_model():
    with pytest.raises(ValueError, match="backend"):
        SiblingReferenceBuilder("gpt")
    with pytest.raises(ValueError, match="model"):
        SiblingReferenceBuilder("litellm")


def test_credit_reference_defaults():
    ref = CreditReference(text="", sections={}, masked_literals=[], source="none")
    assert ref.latency_s == 0.0 and ref.cost_usd is None and ref.group_index == -1
