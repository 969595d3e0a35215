"""Check commands' arguments with the programs' own parsers, then stop: no model loads, no device is needed.

    python scripts/check_args.py benchmarks/bench_step.py --model smollm2 --device cuda --steps 3
    python scripts/check_args.py --commands FILE      # one command a line, as a shell would split it (shlex)

A command is `PYTHON SCRIPT.py ARGS...`, `PYTHON -m trl_sgcd train ARGS...` or `PYTHON -c CODE` (the first word, the
interpreter, is not used: everything runs in this process, so torch and TRL are imported once).

- `SCRIPT.py ARGS`: runs SCRIPT as `__main__` with `sys.argv = [SCRIPT, *ARGS]`; its first `parse_args` /
  `parse_known_args` stops the script right after parsing. `--device cuda` parses on a CPU-only machine.
- `-m trl_sgcd train ARGS`: `trl-sgcd train ARGS --dry_run true` (every field, the recipe, imports, dataset and
  environment checked, no model loaded), with the device flags that cannot hold on a CPU-only machine replaced at the
  end (`CPU_STAND_INS`: later flags win, so every flag name and the other values are still checked).
- `-c CODE`: compiled and its import statements resolved, not run.

Exit status 0 when every command passes, else 1 (each failure printed with its command). `scripts/gpu_check.sh
--dry-run` checks its commands with it.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys

# device-dependent values of `trl-sgcd train` replaced on a CPU-only machine (bf16 needs a GPU; use_vllm needs vLLM)
CPU_STAND_INS = ["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false"]


class _Parsed(Exception):
    pass


def _stop_after_parsing() -> tuple:
    """Make every ArgumentParser stop the program (raise `_Parsed`) once its arguments parsed; returns the two
    original methods."""
    originals = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    original = originals[1]

    def parse_args(self, args=None, namespace=None):
        namespace, extra = original(self, args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise _Parsed(namespace)

    def parse_known_args(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace)[0])

    argparse.ArgumentParser.parse_args = parse_args
    argparse.ArgumentParser.parse_known_args = parse_known_args
    return originals


def check_script(script: str, args: list[str]) -> str | None:
    """None when `script` parses `args`, else the reason."""
    if not os.path.isfile(script):
        return f"no such file: {script}"
    originals = _stop_after_parsing()
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except _Parsed as parsed:
        print(f"[check_args] ok: {script} {vars(parsed.args[0])}", flush=True)
        return None
    except SystemExit as e:  # argparse's error (status 2) or --help (0)
        return None if e.code in (0, None) else f"{script} exited with status {e.code} while parsing"
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = originals
        sys.argv, sys.path[:] = saved_argv, saved_path
    return f"{script} finished without parsing any arguments"


def check_train(args: list[str]) -> str | None:
    """None when `trl-sgcd train ARGS` passes its dry run on this machine (device flags replaced), else the reason."""
    from trl_sgcd.cli.train import main
    from trl_sgcd.cli.utils import UsageError

    argv = [*args, *CPU_STAND_INS, "--dry_run", "true"]
    try:
        status = main(argv)
    except UsageError as e:
        return f"trl-sgcd train: {e}"
    except SystemExit as e:
        status = e.code
    print(f"[check_args] ok: trl-sgcd train (device flags replaced by {' '.join(CPU_STAND_INS)})", flush=True)
    return None if status in (0, None) else f"trl-sgcd train exited with status {status}"


def check_code(code: str) -> str | None:
    """None when `code` compiles and the names its import statements ask for exist (nothing else runs), else why."""
    import ast
    import importlib
    import importlib.util

    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return f"-c code does not compile: {e}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            missing = [a.name for a in node.names if importlib.util.find_spec(a.name) is None]
            if missing:
                return f"-c code imports {missing}, not installed here"
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            if missing:
                return f"-c code imports {missing} from {node.module}, which has no such name"
    print(f"[check_args] ok: -c code compiles and its imports exist ({len(code)} chars)", flush=True)
    return None


def check_command(words: list[str]) -> str | None:
    rest = words[1:]  # words[0]: the interpreter
    if rest[:1] == ["-c"] and len(rest) >= 2:
        return check_code(rest[1])
    if rest[:3] == ["-m", "trl_sgcd", "train"]:
        return check_train(rest[3:])
    if rest and rest[0].endswith(".py"):
        return check_script(rest[0], rest[1:])
    return f"not a command this checker knows: {shlex.join(words)}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--commands"] and len(argv) == 2:
        with open(argv[1]) as f:
            commands = [shlex.split(line) for line in f if line.strip() and not line.startswith("#")]
    elif argv and not argv[0].startswith("-"):
        commands = [[sys.executable, *argv]]
    else:
        print("usage: check_args.py SCRIPT.py [ARGS...] | --commands FILE", file=sys.stderr)
        return 2
    failures = []
    for words in commands:
        reason = check_command(words)
        if reason:
            print(f"[check_args] FAILED: {shlex.join(words)}\n    {reason}", file=sys.stderr, flush=True)
            failures.append(reason)
    print(f"[check_args] {len(commands) - len(failures)}/{len(commands)} commands passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
