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


def test_a_failed_step_does_not_stop_the_others(tmp_path):
    # the real runner with stand-ins for python and nvidia-smi: every step runs, the GRPO run fails, the summary says so
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'echo "fake python $*"\n'
        'case "$*" in *"--credit_mode off"*) exit 3 ;; *"trl_sgcd train"*) echo "{\'loss\': \'0.5\'}" ;; esac\n'
    )
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'fake GPU'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(_env(tmp_path), GPU_CHECK_PYTHON=str(fake), GPU_CHECK_WORK=str(tmp_path / "work"))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| train_grpo | FAILED (exit 3) |" in summary
    for name in ["environment", "versions", "bundled_model", "train_sgcd", "bench_scorer", "bench_step"]:
        assert f"| {name} | ok |" in summary
    assert "{'loss': '0.5'}" in summary  # the SGCD run's logged metrics
    assert "fake python benchmarks/bench_step.py" in (tmp_path / "out" / "bench_step.log").read_text()
    assert len(list((tmp_path / "out").iterdir())) <= 8  # what a results transfer of 8 files can bring back
