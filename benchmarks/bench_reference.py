"""Credit-reference build wall time against the local OpenAI-compatible test server (1 s latency per request).

    .venv/bin/python benchmarks/bench_reference.py           # 8 / 32 / 128 groups x concurrency 8 / 32, median of 3
    .venv/bin/python benchmarks/bench_reference.py --quick   # 8 / 32 groups, one repetition
    .venv/bin/python benchmarks/bench_reference.py --faults  # worst build time under each fault, 2 s step budget

Each build renders and sanitizes the evidence of every group, sends one request per group through litellm (real HTTP
on 127.0.0.1 to a server in its own process, no cache) and parses the answers. The ideal time is
ceil(groups / concurrency) x latency; the ratio measured / ideal shows the overhead of evidence building, litellm and
the event loop. `--faults` builds 8 groups per step against a server in each fault mode (hang, 429, 500, garbage,
drop, a 5 MB answer) with the given step budget, deadline and retries, and prints the median and worst build time.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trl_sgcd.credit.reference.builder import SiblingReferenceBuilder  # noqa: E402
from trl_sgcd.credit.reference.llm import LiteLLMClient  # noqa: E402
from trl_sgcd.testing.llm_server import VALID_REFERENCE, FakeLLMServer  # noqa: E402
from trl_sgcd.testing.samples import sample_group  # noqa: E402

MODEL = "openai/bench-model"


class ServerProcess:
    """The test server in its own process, so its threads do not compete with the client for the GIL."""

    def __init__(self, latency: float):
        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trl_sgcd.testing.llm_server",
                "--port",
                "0",
                "--latency",
                str(latency),
                "--until-stdin-closes",
            ],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.base_url = self.proc.stdout.readline().strip()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def build_once(base_url: str, *, num_groups: int, concurrency: int, tag: str) -> float:
    client = LiteLLMClient(MODEL, api_base=base_url, concurrency=concurrency, deadline=60.0)
    builder = SiblingReferenceBuilder("litellm", llm_client=client)
    groups = [sample_group(g, tag=f"{tag}-{g}") for g in range(num_groups)]
    start = time.perf_counter()
    refs = builder.build(groups)
    elapsed = time.perf_counter() - start
    bad = [r.source for r in refs if r.source != "llm"]
    if bad:
        raise RuntimeError(f"{len(bad)} reference(s) fell back: {bad[:3]}")
    return elapsed


def faults(args) -> None:
    print(
        f"8 groups per build, step budget {args.budget:g} s, deadline {args.deadline:g} s, retries 3, "
        f"{args.repeats} builds per fault, {os.cpu_count()} CPU cores"
    )
    print(f"{'fault':>8} {'median_s':>9} {'worst_s':>8} {'fallbacks':>9} {'attempts':>8}")
    with FakeLLMServer() as server:
        for mode in ("ok", "hang", "429", "500", "garbage", "drop", "huge"):
            server.mode = mode
            client = LiteLLMClient(MODEL, api_base=server.base_url, deadline=args.deadline, retries=3)
            builder = SiblingReferenceBuilder("litellm", llm_client=client, step_budget=args.budget)
            times, fallbacks, attempts = [], 0, 0
            for r in range(args.repeats):
                groups = [sample_group(g, tag=f"{mode}-{r}-{g}") for g in range(8)]
                start = time.perf_counter()
                builder.build(groups)
                times.append(time.perf_counter() - start)
                fallbacks += builder.last_build_stats["errors"]
                attempts += builder.last_build_stats["attempts"]
            print(
                f"{mode:>8} {statistics.median(times):>9.2f} {max(times):>8.2f} {fallbacks:>9} {attempts:>8}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 and 32 groups, one repetition")
    parser.add_argument("--latency", type=float, default=1.0, help="server latency per request in seconds")
    parser.add_argument("--faults", action="store_true", help="build time under each fault mode")
    parser.add_argument("--budget", type=float, default=2.0, help="step budget for --faults")
    parser.add_argument("--deadline", type=float, default=1.0, help="per-attempt deadline for --faults")
    parser.add_argument("--repeats", type=int, default=5, help="builds per fault for --faults")
    args = parser.parse_args()
    if args.faults:
        logging.disable(logging.WARNING)  # one warning per failed build would drown the table
        faults(args)
        return
    sizes = (8, 32) if args.quick else (8, 32, 128)
    repeats = 1 if args.quick else 3
    print(f"server latency {args.latency:g} s, median of {repeats}, {os.cpu_count()} CPU cores")
    print(f"{'groups':>6} {'concurrency':>11} {'ideal_s':>8} {'measured_s':>10} {'ratio':>6}")
    with FakeLLMServer(answer=VALID_REFERENCE) as warm:
        build_once(warm.base_url, num_groups=1, concurrency=1, tag="warmup")  # litellm import and client setup
    with ServerProcess(args.latency) as server:
        for concurrency in (8, 32):
            for num_groups in sizes:
                times = [
                    build_once(
                        server.base_url, num_groups=num_groups, concurrency=concurrency, tag=f"{concurrency}-{r}"
                    )
                    for r in range(repeats)
                ]
                ideal = math.ceil(num_groups / concurrency) * args.latency
                measured = statistics.median(times)
                print(
                    f"{num_groups:>6} {concurrency:>11} {ideal:>8.1f} {measured:>10.2f} {measured / ideal:>6.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
