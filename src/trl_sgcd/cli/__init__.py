"""The `trl-sgcd` command (also `python -m trl_sgcd`).

```bash
trl-sgcd --version
trl-sgcd train --config recipes/tiny_cpu.yaml --max_steps 1      # YAML recipe, CLI overrides win
trl-sgcd train --help                                            # every field, the credit_* ones included
trl-sgcd eval --model outputs/tiny_cpu                            # trl_sgcd.cli.eval:main
trl-sgcd demo ...                                                # trl_sgcd.demo.run:main
accelerate launch --config_file recipes/accelerate/zero3.yaml -m trl_sgcd train --config recipes/qwen3_4b_sgcd.yaml
```

The dispatcher imports nothing heavy: each sub-command's module is imported only when it runs, so `--version` and
a typo in the sub-command answer at once.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module with `main(argv) -> int | None`, one-line help)
COMMANDS = {
    "train": ("trl_sgcd.cli.train", "Train with SGCD (or a GRPO baseline) from a YAML recipe."),
    "eval": (
        "trl_sgcd.cli.eval",
        "Evaluate a checkpoint on held-out tasks (pass@1 per category, tool audit).",
    ),
    "demo": ("trl_sgcd.demo.run", "Run the bundled CPU demo end to end."),
}


def usage() -> str:
    lines = ["usage: trl-sgcd [--version] [--help] <command> [<args>]", "", "commands:"]
    lines += [f"  {name:<7}{text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `trl-sgcd <command> --help` for the arguments of a command."]
    return "\n".join(lines)


def version_string() -> str:
    """`trl-sgcd X (trl Y, transformers Z, torch W)`, read from package metadata without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    from trl_sgcd import __version__

    parts = []
    for name in ("trl", "transformers", "torch"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return f"trl-sgcd {__version__} ({', '.join(parts)})"


def load_command(name: str):
    """
    The `main(argv)` of a sub-command, imported lazily, or `None` when its module (or its `main`) does not exist yet.
    A module that exists but fails to import raises as usual, so the real error shows.
    """
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return None
    return getattr(module, "main", None)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `trl-sgcd <command> ...`. Returns the exit status (2 for a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version", "version"):
        print(version_string())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"trl-sgcd: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    command = load_command(name)
    if command is None:
        print(
            f"trl-sgcd {name}: not available in this install: `{COMMANDS[name][0]}:main` does not exist.",
            file=sys.stderr,
        )
        return 2
    from trl_sgcd.cli.utils import UsageError

    try:
        status = command(rest)
    except UsageError as e:
        print(f"trl-sgcd {name}: error: {e}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
