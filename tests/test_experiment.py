"""`benchmarks/experiment.py`: resuming (no finished run repeated, the results file appended), the budget stop inside a
run and its resume from the checkpoint, the matched config of every arm, and the report's paired intervals."""

import json
import os
import time
from dataclasses import asdict, replace

import pytest

from benchmarks import experiment
from benchmarks.experiment_report import RESULTS_FILE, append_result, bootstrap_interval, read_results

# The random tiny model, its 1-step warm start, 1 held-out task, 1-step runs of 4 short rollouts.
TINY = [
    "--model", "tiny", "--sft-tasks", "1", "--sft-steps", "1", "--sft-batch-size", "1", "--sft-max-length", "1400",
    "--steps", "1", "--rollouts-per-step", "4", "--num-generations", "2", "--max-completion-length", "8",
    "--max-tool-calls", "1", "--max-resample-rounds", "0", "--lora-r", "2", "--lora-alpha", "4",
    "--eval-tasks", "1", "--eval-max-turns", "1", "--eval-max-new-tokens", "4",
]  # fmt: skip


def _tiny_settings(**overrides) -> experiment.ExperimentSettings:
    args = experiment._parser().parse_args(TINY)
    values = {k: getattr(args, k) for k in asdict(experiment.PROFILES["cpu"]) if getattr(args, k) is not None}
    return replace(experiment.PROFILES["cpu"], **{**values, **overrides})


@pytest.fixture
def started_runs(monkeypatch):
    """Every (arm, seed) whose training starts, in order (the real `train_run` runs)."""
    started, real = [], experiment.train_run

    def spy(settings, arm, seed, *args, **kwargs):
        started.append(experiment.run_key(arm, seed))
        return real(settings, arm, seed, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_run", spy)
    return started


@pytest.mark.slow
@pytest.mark.ci
def test_interrupted_experiment_resumes_without_repeating_a_run(tmp_path, started_runs):
    out = str(tmp_path / "exp")
    argv = [*TINY, "--arms", "off", "sgcd", "--seeds", "0", "--output-dir", out]
    first = experiment.main([*argv, "--max-runs", "1"])  # stops after one run, as an interruption would
    assert [r["arm"] for r in first] == ["off"] and started_runs == ["off-seed0"]
    with open(os.path.join(out, RESULTS_FILE), "rb") as f:
        after_first = f.read()
    stamp = os.path.getmtime(os.path.join(out, experiment.EXPERIMENT_FILE))

    second = experiment.main(argv)
    assert started_runs == ["off-seed0", "sgcd-seed0"]  # the finished run was skipped
    assert [(r["arm"], r["seed"]) for r in second] == [("off", 0), ("sgcd", 0)]
    with open(os.path.join(out, RESULTS_FILE), "rb") as f:
        assert f.read().startswith(after_first)  # appended, the first run's line untouched
    assert os.path.getmtime(os.path.join(out, experiment.EXPERIMENT_FILE)) == stamp  # warm start + eval not redone

    assert experiment.main(argv) == second and len(started_runs) == 2  # all done: nothing runs
    for result in second:
        assert os.path.exists(os.path.join(result["saved"], "adapter_config.json"))  # the run's adapters
        assert result["after"]["task_success"] and "pass@1" in result["after"]
    with open(os.path.join(out, "results.md")) as f:
        assert "Paired SGCD - GRPO" in f.read()

    with pytest.raises(ValueError, match="steps"):  # other sizes in the same folder are refused
        experiment.main([*argv, "--steps", "2"])


def test_budget_stops_inside_a_run_and_the_run_continues_from_its_checkpoint(tmp_path):
    settings = _tiny_settings(steps=2, save_steps=1, env_profile="compact")  # the full profile: the slow test above
    record = experiment.prepare(settings, str(tmp_path))
    run_dir = str(tmp_path / "runs" / "sgcd-seed0")
    common = dict(warm_start_dir=record["warm_start"], bf16=record["bf16"])
    stopped = experiment.train_run(settings, "sgcd", 0, run_dir, deadline=time.monotonic(), **common)
    assert stopped is None and "checkpoint-1" in os.listdir(run_dir)  # stopped after step 1, its state saved

    result = experiment.train_run(settings, "sgcd", 0, run_dir, **common)
    assert result["steps"] == 2 and result["resumed_from"] == "checkpoint-1"
    steps = [e["step"] for e in result["log_history"] if "loss" in e]
    assert steps == [1, 2]  # step 1 was not trained again
    assert not [f for f in os.listdir(run_dir) if f.startswith("checkpoint-")]  # cleaned up once done


@pytest.mark.parametrize("profile", sorted(experiment.PROFILES))
def test_every_arm_gets_the_same_config_but_the_credit_mode(tmp_path, profile):
    settings = experiment.PROFILES[profile]
    configs = {
        arm: experiment.training_config(settings, arm, 1, str(tmp_path), bf16=False).to_dict()
        for arm in experiment.ARMS
    }
    for arm, config in configs.items():
        assert config.pop("credit_mode") == arm
        assert config["credit_dynamic_sampling"] is True
        assert config["per_device_train_batch_size"] == settings.rollouts_per_step
    assert all(config == configs["off"] for config in configs.values())
    assert {"off", "sgcd", "uniform", "no_reference", "direct_sd", "sdpo"} <= set(configs)


def test_results_file_survives_a_torn_last_line(tmp_path):
    path = str(tmp_path / RESULTS_FILE)
    append_result(path, {"arm": "off", "seed": 0})
    with open(path, "a") as f:
        f.write('{"arm": "sgcd", "se')  # killed mid-write
    assert read_results(path) == [{"arm": "off", "seed": 0}]  # the torn run is not counted: it runs again
    append_result(path, {"arm": "sgcd", "seed": 0})
    assert read_results(path) == [{"arm": "off", "seed": 0}, {"arm": "sgcd", "seed": 0}]
    with open(path) as f:
        assert [json.loads(line)["arm"] for line in f if line.startswith('{"arm": "sgcd", "seed": 0}')] == ["sgcd"]


def test_paired_bootstrap_interval():
    sgcd = {0: {"a": True, "b": True, "c": False, "d": True}, 1: {"a": True, "b": False, "c": False, "d": True}}
    grpo = {0: {"a": True, "b": False, "c": False, "d": False}, 1: {"a": True, "b": False, "c": False, "d": True}}
    estimate, low, high = bootstrap_interval([sgcd], [1.0])
    assert estimate == pytest.approx(5 / 8) and 0.0 <= low <= estimate <= high <= 1.0 and low < high
    diff, low, high = bootstrap_interval([sgcd, grpo], [1.0, -1.0])
    assert diff == pytest.approx(5 / 8 - 3 / 8) and low <= diff <= high
    assert (
        low >= 0.0
    )  # paired: on no (seed, task) draw can SGCD fall below GRPO here, as it never fails where GRPO wins
    assert bootstrap_interval([sgcd, sgcd], [1.0, -1.0]) == (0.0, 0.0, 0.0)


def _fake_run(arm, seed, rewards, lifts=()):
    history = [{"step": i + 1, "reward": r} for i, r in enumerate(rewards)]
    history += [{"step": i + 1, "sgcd/localization/lift": v, "sgcd/localization/credit_share": 0.05} for i, v in lifts]
    per_category = {"action": {"pass@1": 0.5}, "information": {"pass@1": 0.25}}
    after = {"pass@1": 0.4, "per_category": per_category, "audit": {}, "task_success": {"t0": True, "t1": False}}
    return {"arm": arm, "seed": seed, "log_history": history, "after": after, "wall_s": {"train": 1.0, "eval": 1.0}}


def test_report_reads_learning_speed_and_where_credit_landed(tmp_path):
    from benchmarks.experiment_report import THRESHOLD, WINDOW, learning_speed, write_report

    slow = [0.3] * 30
    fast = [0.3] * 5 + [0.9] * 25  # the moving average crosses the threshold at a known step
    crossing = next(
        i + 1 for i in range(30) if sum(fast[max(0, i - WINDOW + 1) : i + 1]) / min(i + 1, WINDOW) >= THRESHOLD
    )
    assert learning_speed(_fake_run("off", 0, slow)) == (0.3, None)
    auc, steps = learning_speed(_fake_run("sgcd", 0, fast))
    assert abs(auc - (5 * 0.3 + 25 * 0.9) / 30) < 1e-9 and steps == crossing
    results = [_fake_run("off", 0, slow), _fake_run("sgcd", 0, fast, lifts=[(3, 4.0), (7, 6.0), (9, 8.0)])]
    record = {"settings": {}, "before": {"pass@1": 0.3, "task_success": {"t0": True}}, "wall_s": {"warm_start": 1}}
    report = write_report(str(tmp_path), record, results, command="test")
    row = next(
        line
        for line in report.splitlines()
        if line.startswith("| SGCD") and "never" not in line and "AUC" not in line and str(crossing) in line
    )
    assert "6.00" in row and "0.05" in row  # median lift over the credit steps, W > 1 share
    assert f"Paired SGCD - GRPO train-reward AUC, per seed: +{auc - 0.3:.3f}" in report


def test_unfinished_runs_are_read_from_their_last_checkpoint(tmp_path):
    from benchmarks.experiment_report import progress_lines, unfinished_runs

    run = _fake_run("sgcd", 1, [0.5, 0.7], lifts=[(0, 3.0), (1, 5.0)])  # lifts logged at steps 1 and 2
    for step in (1, 2):
        folder = tmp_path / "runs" / "sgcd-seed1" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        history = [e for e in run["log_history"] if e["step"] <= step]
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    (tmp_path / "runs" / "off-seed1").mkdir()  # started, no checkpoint yet: not listed
    [found] = unfinished_runs(str(tmp_path))
    assert (found["arm"], found["seed"], found["step"]) == ("sgcd", 1, 2)  # the last checkpoint
    assert "2 steps" in progress_lines(str(tmp_path))[0] and "credit lift 4.00" in progress_lines(str(tmp_path))[0]
    append_result(str(tmp_path / RESULTS_FILE), {"arm": "sgcd", "seed": 1})
    assert unfinished_runs(str(tmp_path)) == []  # finished runs are in the results file
