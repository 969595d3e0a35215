"""`python -m trl_sgcd` command lines run side by side: each pays the interpreter start (~5 s of imports), so they
overlap instead of adding up."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_side_by_side(
    commands: dict[str, list[str]], *, timeout: float = 180
) -> dict[str, tuple[int, str, str, float]]:
    """`{key: (exit status, stdout, stderr, seconds from the common start)}` of `python -m trl_sgcd *args` per key."""
    start = time.monotonic()
    procs = {
        key: subprocess.Popen(
            [sys.executable, "-m", "trl_sgcd", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for key, args in commands.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        results[key] = (proc.returncode, out, err, time.monotonic() - start)
    return results
