"""The README's Python snippet runs as pasted on a CPU machine (no `use_cpu`, no `bf16`), with `model="builtin:tiny"`
as in the CLI, and leaves a model card that names the builtin base model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("runnable as pasted on a CPU machine", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_snippet_is_the_cpu_one():
    code = readme_snippet()
    assert 'model="builtin:tiny"' in code and "use_cpu" not in code and "bf16" not in code


@pytest.mark.slow
def test_readme_snippet_runs_as_pasted(tmp_path):
    (tmp_path / "snippet.py").write_text(readme_snippet())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "snippet.py"], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    import torch

    if not torch.cuda.is_available():  # the one log line that says why it trains in fp32
        assert "bf16=False" in result.stderr
    card = (tmp_path / "outputs" / "tiny_api" / "README.md").read_text()
    assert "`builtin:tiny`" in card and "Ding, Tianyu" in card.split("## Citation")[1]
