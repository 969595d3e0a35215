"""benchmarks/bench_credit_controlled.py: the corruptions are real failures with exactly known decisive tokens, a smoke
run end to end (teacher = student gives exactly 0), and on the bundled SmolLM2 the default reference and segmenter
put credit on the corrupted tokens while unrelated text does not."""

import json
import os
import random
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from credit_corruptions import KINDS, controlled_decisive_mask, controlled_groups, corrupt, differing_span  # noqa: E402


def test_differing_span_widens_to_whole_values():
    assert differing_span('{"f": ["HAT045"]}', '{"f": ["HAT071"]}') == (8, 14)
    bad = "Your flight is delayed."
    s, e = differing_span("Your flight is on time.", bad)
    assert bad[s:e] == "delayed"


def test_every_kind_gives_a_verified_failure_on_train_tasks_only():
    groups = controlled_groups(2)
    assert sorted({g["kind"] for g in groups}) == sorted(KINDS)
    for g in groups:
        assert g["task"]["task_id"].startswith("airline-train-")
        assert g["bad"]["reward"] == 0.0 and g["bad"]["completion"] != g["gold"]
    with pytest.raises(ValueError, match="unknown corruption kind"):
        corrupt(groups[0]["task"], "typo", random.Random(0))


def test_decisive_tokens_are_exactly_the_corrupted_value(tokenizer):
    from credit_rollouts import completion_layout

    from trl_sgcd.envs.airline import airline_prompt, airline_tool_schemas

    tools = airline_tool_schemas()
    for g in controlled_groups(1):
        prompt = airline_prompt(g["task"])
        _, gold_ids, gold_mask = completion_layout(tokenizer, prompt, g["gold"], tools)
        _, bad_ids, bad_mask = completion_layout(tokenizer, prompt, g["bad"]["completion"], tools)
        mask = controlled_decisive_mask(tokenizer, gold_ids, gold_mask, bad_ids, bad_mask)
        marked = tokenizer.decode([t for t, m in zip(bad_ids, mask) if m]).strip()
        new = g["detail"].split(" -> ")[-1].strip("[]'")
        if g["kind"] == "skipped_read":  # the choice to answer instead of looking up (first token), and the value
            first = tokenizer.decode([bad_ids[bad_mask.index(1)]]).strip()
            assert marked.split() == [first, new], (g["detail"], marked)
        else:
            assert marked == new, (g["kind"], g["detail"], marked)
        assert all(bad_mask[i] for i, m in enumerate(mask) if m)  # only generated tokens


def _run(tmp_path, *argv):
    from bench_credit_controlled import main

    out = tmp_path / "results.json"
    assert main([*argv, "--output", str(out), "--random-draws", "4"]) == 0
    return json.loads(out.read_text())


def test_smoke_run_tiny_model(tmp_path, capsys):
    results = _run(tmp_path, "--policy", "tiny-context", "--groups-per-kind", "1")
    assert set(results["contexts"]) == {"contrast", "oracle", "irrelevant", "identity"}
    assert results["contexts"]["identity"]["all"]["max_abs_divergence"] == 0.0  # teacher = student: exactly 0
    assert results["contexts"]["contrast"]["all"]["n"] == len(KINDS)
    assert "must be 0" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.ci
def test_default_reference_and_segmenter_localize_on_smollm2(tmp_path):
    """The guard of the method's point: on the bundled SmolLM2, credit concentrates on the corrupted tokens under the
    default (contrast) reference and the default segmenter, and not under unrelated text of the same length."""
    results = _run(tmp_path, "--policy", "smollm2", "--groups-per-kind", "2")
    contrast, irrelevant = results["contexts"]["contrast"]["all"], results["contexts"]["irrelevant"]["all"]
    assert contrast["pooled_share"] <= 0.20  # sparse: at most a fifth of the eligible tokens weighted above 1
    assert contrast["pooled_lift"][0] >= 3.0 and contrast["lift"][0] >= 3.0
    assert contrast["ratio"][0] > 2.0 and contrast["auc"][0] > 0.75
    assert np.nan_to_num(irrelevant["pooled_lift"][0]) < 1.5
    assert results["contexts"]["identity"]["all"]["max_abs_divergence"] == 0.0
