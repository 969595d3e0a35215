"""The example scripts run as real subprocesses, with the very command their docstring gives, and show credit."""

import ast
import os
import re
import shlex
import subprocess
import sys

import pytest

from trl_sgcd.testing.llm_server import VALID_REFERENCE, FakeLLMServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def docstring_command(script: str) -> list[str]:
    """The command under "(what the test runs)" in the script's docstring, continuation lines joined."""
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if "(what the test runs)" in line)
    command = next(line for line in lines[start + 1 :] if line.strip().startswith("python "))
    k = lines.index(command)
    while command.rstrip().endswith("\\"):
        k += 1
        command = command.rstrip()[:-1] + " " + lines[k].strip()
    return shlex.split(command)


def _run(command, tmp_path, extra_env=None):
    assert command[0] == "python"
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, *command[1:], "--output-dir", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _credit_tokens(out: str) -> float:
    """`sgcd/credit_tokens` of the metrics dict the example prints last."""
    return float(re.findall(r"'sgcd/credit_tokens': ([0-9.e+-]+)", out)[-1])


def test_two_name_swap_example_shows_credit(tmp_path):
    command = docstring_command("examples/sgcd_airline.py")
    assert "--scripted-sibling" in command and "builtin:tiny-context" in command
    out = _run(command, tmp_path)
    assert "sgcd/mixed_group_fraction" in out
    assert _credit_tokens(out) > 0  # the newcomer sees credit act within one step
    assert os.path.exists(tmp_path / "out" / "config.json")


@pytest.mark.slow
@pytest.mark.ci
def test_custom_env_litellm_example_shows_credit(tmp_path):
    command = docstring_command("examples/custom_env_litellm.py")
    with FakeLLMServer(answer=VALID_REFERENCE) as server:
        port = server.base_url.split(":")[-1].split("/")[0]
        command = [c.replace("PORT", port) for c in command]
        out = _run(command, tmp_path, {"REFERENCE_API_KEY": "test-key"})
        assert server.num_requests >= 1  # the references came from the local server
    assert "sgcd/mixed_group_fraction" in out
    assert _credit_tokens(out) > 0
