"""benchmarks/bench_credit.py: its prefix-cached scoring equals the trainer's scorer, and a smoke run end to end."""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from credit_rollouts import completion_layout  # noqa: E402
from credit_scoring import PrefixScorer, common_prefix_length, dense_scores  # noqa: E402

from trl_sgcd import DenseDivergenceScorer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_prefix_cached_scores_equal_the_trainer_scorer(tiny_model, divergence):
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 1000, (20,), generator=g).tolist()
    student_prompt = prefix + [5, 6, 7]
    teacher_prompt = prefix + [5, 9, 9, 9, 9, 6, 7]
    completion = torch.randint(0, 1000, (12,), generator=g).tolist()
    assert common_prefix_length([student_prompt, teacher_prompt]) == 21
    scorer = PrefixScorer(tiny_model, prefix, temperature=0.8)
    student = torch.log_softmax(scorer.completion_logits(student_prompt, completion), dim=-1)
    teacher = scorer.completion_logits(teacher_prompt, completion)
    d, h = dense_scores(student, teacher, completion, top_k=32, divergences=[divergence])[divergence]
    reference = DenseDivergenceScorer(top_k=32, divergence=divergence, temperature=0.8).score(
        tiny_model,
        torch.tensor([student_prompt + completion]),
        torch.ones(1, len(student_prompt) + len(completion), dtype=torch.long),
        torch.tensor([teacher_prompt + completion]),
        torch.ones(1, len(teacher_prompt) + len(completion), dtype=torch.long),
        torch.tensor([completion]),
        torch.ones(1, len(completion), dtype=torch.long),
    )
    torch.testing.assert_close(d, reference.divergence[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h, reference.teacher_entropy[0], atol=1e-5, rtol=1e-4)
    assert d.abs().sum() > 0  # the two contexts differ: not a trivially equal pair
    with pytest.raises(ValueError, match="cached prefix"):
        scorer.completion_logits([1, 2, 3], completion)


def test_completion_layout_marks_generated_turns(tokenizer):
    from trl_sgcd.envs.airline import airline_tool_schemas
    from trl_sgcd.envs.airline_tasks import airline_tasks
    from trl_sgcd.tooluse.expert import expert_conversation, expert_turn_ids

    conversation = expert_conversation(airline_tasks("train")[5])
    tools = airline_tool_schemas()
    prompt_ids, ids, mask = completion_layout(tokenizer, conversation[:2], conversation[2:], tools)
    turns = [t for _, t in expert_turn_ids(tokenizer, conversation, tools)]
    generated = [t for t, m in zip(ids, mask) if m]
    assert generated == [x for t in turns for x in t]  # exactly the assistant turns, end-of-turn tokens included
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and mask[-1] == 1
    assert 0 in mask and len(prompt_ids) > 1000


@pytest.mark.slow
@pytest.mark.ci
def test_smoke_run_end_to_end(tmp_path):
    import bench_credit

    out = tmp_path / "results.json"
    argv = ["--policy", "tiny", "--tasks", "2", "--k", "2", "--expert-siblings", "1", "--threads", "1"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--random-draws", "2"]
    argv += ["--html", str(tmp_path / "figure.html")]
    assert bench_credit.main(argv) == 0
    results = json.loads(out.read_text())
    # the first task is a refusal, which even a random answer passes (both siblings succeed); in the second the
    # random model's rollout fails next to the succeeding expert sibling
    assert (results["num_groups"], results["num_mixed_groups"]) == (2, 1)
    assert set(results["variants"]) >= {"contrast / reverse_kl", "llm / jsd", "no_reference / forward_kl"}
    assert results["reference_sources"]["llm"] == ["llm"]  # answered by the local server, not a fallback
    entry = results["variants"]["contrast / reverse_kl"]
    assert entry["sgcd"]["num_rollouts"] == 2 and 0 < entry["eligible_decisive_share"] <= 1
    assert len(os.listdir(tmp_path / "cache")) == 1  # the rollouts are cached: a second run samples nothing
    page = (tmp_path / "figure.html").read_text()
    assert page.count('class="pair"') == 2 and "underline" in page  # the failed and the expert rollout
