"""The example scripts run as real subprocesses with tiny numbers."""

import os
import subprocess
import sys

from trl_sgcd.testing.llm_server import VALID_REFERENCE, FakeLLMServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, extra_env=None):
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, *args, "--output-dir", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_two_name_swap_example(tmp_path):
    out = _run(
        [
            "examples/sgcd_airline.py",
            "--model",
            "builtin:tiny",
            "--max-steps",
            "1",
            "--num-tasks",
            "2",
            "--max-completion-length",
            "48",
        ],
        tmp_path,
    )
    assert "sgcd/mixed_group_fraction" in out
    assert os.path.exists(tmp_path / "out" / "config.json")


def test_custom_env_litellm_example(tmp_path):
    with FakeLLMServer(answer=VALID_REFERENCE) as server:
        out = _run(
            [
                "examples/custom_env_litellm.py",
                "--model",
                "builtin:tiny",
                "--max-steps",
                "1",
                "--max-completion-length",
                "48",
                "--reference-api-base",
                server.base_url,
            ],
            tmp_path,
            {"REFERENCE_API_KEY": "test-key"},
        )
    assert "sgcd/mixed_group_fraction" in out
