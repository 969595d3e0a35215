"""The reference wing (and the types and stages before it) imports and builds a reference with torch unavailable."""

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")

_SCRIPT = """
import importlib.abc, pkgutil, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test (import {name})")
        return None

sys.meta_path.insert(0, NoTorch())
import trl_sgcd.credit.reference as wing
for info in pkgutil.iter_modules(wing.__path__, wing.__name__ + "."):
    __import__(info.name)
import trl_sgcd.credit.modes, trl_sgcd.credit.siblings, trl_sgcd.credit.types
from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder
from trl_sgcd.testing.samples import sample_group

(ref,) = SiblingReferenceBuilder().build([sample_group()])
assert ref.source == "contrast" and ref.text, ref
assert "torch" not in sys.modules
print("torch-free ok")
"""


def test_the_reference_wing_needs_no_torch():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "torch-free ok" in done.stdout, done.stderr[-2000:]
