"""The library's layering, read from the source tree: the library never imports its command line, and no module but
`trainer.py` touches a private attribute of the trainer (helpers take what they need as arguments)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "trl_sgcd"
CLI_USERS = ("cli", "demo", "__main__.py")  # the command line itself, and the demo (a command of it)


def _trainer_name(node: ast.AST) -> bool:
    """`trainer`, `self.trainer`, `sgcd_trainer`...: a name that holds a trainer."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "trainer" in name.lower()


def violations(root: Path) -> list[str]:
    """`path: what` for every CLI import outside the CLI and every trainer private read outside `trainer.py`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if rel.parts[0] not in CLI_USERS:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                found += [f"{rel}: imports {n}" for n in names if n.split(".")[:2] == ["trl_sgcd", "cli"]]
            if rel.as_posix() == "trainer.py":
                continue
            attr = None
            if isinstance(node, ast.Attribute) and _trainer_name(node.value):
                attr = node.attr
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
                if len(node.args) >= 2 and _trainer_name(node.args[0]) and isinstance(node.args[1], ast.Constant):
                    attr = node.args[1].value
            if isinstance(attr, str) and attr.startswith("_") and not attr.startswith("__"):
                found.append(f"{rel}:{node.lineno}: reads trainer.{attr}")
    return found


def test_the_library_keeps_its_layers():
    assert violations(SRC) == []


def test_the_layering_check_sees_both_kinds_of_violation(tmp_path):
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "utils.py").write_text("from trl_sgcd.cli import main\n")  # the CLI may import itself
    (tmp_path / "trainer.py").write_text("def f(trainer):\n    return trainer._tokenizer\n")  # the trainer may
    assert violations(tmp_path) == []
    (tmp_path / "helper.py").write_text(
        "from trl_sgcd.cli.utils import UsageError\nimport trl_sgcd.cli\n"
        "def f(trainer, self):\n    return trainer._metrics, getattr(trainer, '_env_tools'), self.trainer._state\n"
    )
    assert violations(tmp_path) == [
        "helper.py: imports trl_sgcd.cli.utils",
        "helper.py: imports trl_sgcd.cli",
        "helper.py:4: reads trainer._metrics",
        "helper.py:4: reads trainer._env_tools",
        "helper.py:4: reads trainer._state",
    ]
