"""`scripts/gpu_check.sh --dry-run`: every command of the prepared GPU check (docs/gpu.md) checked on CPU.

The dry run checks the recipe and each `trl-sgcd train` flag with the CLI's own `--dry_run`, and the benchmarks' flags
with their own parsers (scripts/check_args.py), in one Python process (~10 s). A renamed flag, recipe or benchmark
option fails here, in the default suite, rather than on a GPU machine.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
STEPS = ["versions", "bundled_model", "train_sgcd", "train_grpo", "bench_scorer", "bench_scorer_group", "bench_step"]


def _env(tmp_path) -> dict:
    env = dict(os.environ, GPU_CHECK_PYTHON=sys.executable, OUT=str(tmp_path / "out"), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "src"), env.get("PYTHONPATH", "")])
    return env


def test_dry_run_checks_every_command(tmp_path):
    proc = subprocess.run(
        ["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert f"{len(STEPS)}/{len(STEPS)} commands passed" in out
    for name in STEPS:
        assert f"[gpu_check] {name} (timeout" in out
    commands = (tmp_path / "out" / "commands.txt").read_text()
    assert "--use_vllm true --vllm_mode colocate" in commands
    assert "--credit_mode off" in commands and "--device cuda" in commands


def test_unknown_argument_is_refused(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "--dryrun"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument '--dryrun'" in proc.stderr


WRONG_COMMANDS = [
    "python -m trl_sgcd train --config recipes/demo_cpu.yaml --vllm_gpu_memory_utilisation 0.3",  # misspelt field
    "python -m trl_sgcd train --config recipes/no_such_recipe.yaml",
    "python benchmarks/bench_step.py --model smollm2 --env airlines",  # not a choice
    "python benchmarks/bench_scorer.py --device cuda --group-promt 1150",  # unknown flag
    "python benchmarks/no_such_bench.py --device cuda",
]


def test_checker_catches_each_wrong_command(tmp_path):
    commands = tmp_path / "commands.txt"
    commands.write_text("\n".join(WRONG_COMMANDS + ["python benchmarks/bench_step.py --quick"]) + "\n")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "check_args.py"), "--commands", str(commands)],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"1/{len(WRONG_COMMANDS) + 1} commands passed" in proc.stdout  # only the last, correct one
    for command in WRONG_COMMANDS:
        assert f"FAILED: {command}" in proc.stderr
