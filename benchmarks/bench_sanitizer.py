"""Cost of the sanitizer on real τ² records: 60 rendered records (20 airline users, 20 reservations, 20 retail orders),
as JSON the way a tool returns them, sanitized without a private column (the generic rules only).

    python benchmarks/bench_sanitizer.py                         # this tree's sanitizer
    PYTHONPATH=/path/to/other/src python benchmarks/bench_sanitizer.py   # another tree's, for a before/after

Prints the best of `--repeats` timed passes (each sanitizes all 60 records once, after one untimed warm-up pass that
pays the lazy library imports), in milliseconds per pass and per KB, and how many values were masked.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def records(n_each: int = 20) -> list[str]:
    from trl_sgcd.envs.tau2 import load_domain

    airline, retail = load_domain("airline").initial_db, load_domain("retail").initial_db
    tables = (airline.users, airline.reservations, retail.orders)
    return [json.dumps(r.model_dump()) for table in tables for r in list(table.values())[:n_each]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from trl_sgcd.credit.reference import sanitize as module
    from trl_sgcd.credit.reference.sanitize import Sanitizer

    texts = records()
    sanitizer = Sanitizer()
    masked = sum(len(sanitizer(t).masked) for t in texts)  # warm-up: lazy imports, compiled patterns
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for text in texts:
            sanitizer(text)
        times.append(time.perf_counter() - start)
    kb = sum(len(t.encode()) for t in texts) / 1024
    best = min(times)
    print(f"sanitizer: {os.path.dirname(module.__file__)}")
    print(f"{len(texts)} records, {kb:.0f} KB, {masked} values masked")
    print(f"best of {args.repeats}: {best * 1000:.0f} ms per pass ({best * 1000 / kb:.2f} ms per KB)")
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
