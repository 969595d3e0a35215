"""SGCD on 2 ranks (CPU, gloo): DDP parity with one process, one reference per group in total, equal scoring forwards
on every rank under ZeRO-3 (also with LoRA), and a ZeRO-2 step.

Each launch runs `tests/scripts/sgcd_multirank.py` under `accelerate launch` with 2 processes; every rank writes what
it saw (groups sent to the reference backend, scoring forwards, losses, the inputs and outputs of `_apply_credit`),
and the assertions run here. A hang becomes a failure: `ddp_timeout` is short and each launch has a wall-clock limit
(the whole process group is killed on expiry).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import ToyLookupEnv, tiny_args, toy_dataset, toy_reward
from trl_sgcd import SGCDTrainer
from trl_sgcd.import_utils import is_deepspeed_available

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "sgcd_multirank.py"
ZERO3_CONFIG = ROOT / "recipes" / "accelerate" / "cpu_2proc_zero3.yaml"
ZERO2_CONFIG = ROOT / "tests" / "configs" / "cpu_2proc_zero2.yaml"
# `--cpu --num_processes 2` silently runs one process; this runs two (the config says use_cpu=True, so gloo).
DDP_FLAGS = [
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
LAUNCH_TIMEOUT_S = 300  # per launch; a healthy one takes 15-60 s on 2 cores, depending on what else runs
# The ZeRO runs use 48 completion tokens (the scripted tool call fits, its observation does not: TRL rolls it back on
# both ranks); the DDP parity run uses 96 so that tool observations (tool_mask = 0) are in the scored completions.
DDP_TIMEOUT_S = 90  # collectives: a rank waiting longer than this fails instead of hanging
# At temperature 1 the random tiny model is near-uniform (policy entropy ~ ln V) and its top-K divergences are ~1e-6
# nats, the float32 noise floor: padding a batch 4 columns wider changes them by ~100% and flips spans. At 0.05 they
# reach ~0.1 nats and left-padding noise (~1e-6) is negligible, so weights can be compared across batch layouts.
PARITY_TEMPERATURE = 0.05
SPAN_ROWS = 6  # rows per rank in the `span` layout (G=4: group 0 on rank 0, group 1 on both, group 2 on rank 1)

needs_deepspeed = pytest.mark.skipif(
    not (is_deepspeed_available() and shutil.which("g++") and shutil.which("ninja")),
    reason="needs deepspeed, g++ and ninja (DeepSpeed compiles its CPU communication extension on first launch)",
)


@dataclass
class Launch:
    out: Path
    rc: int | str
    log: str
    wall_s: float

    def rank(self, r: int) -> dict:
        return json.loads((self.out / f"rank{r}.json").read_text())

    def dump(self, r: int, step: int = 0) -> dict:
        return torch.load(self.out / f"rank{r}_step{step}.pt", weights_only=False)

    def check(self) -> None:
        assert self.rc == 0, f"launch failed (rc={self.rc}, {self.wall_s:.0f} s):\n{self.tail()}"
        assert all((self.out / f"rank{r}.json").is_file() for r in (0, 1)), self.tail()

    def tail(self, n: int = 40) -> str:
        lines = [line for line in self.log.splitlines() if "Warning" not in line and "warnings.warn" not in line]
        return "\n".join(lines[-n:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, accelerate_args: list[str], *script_args: str) -> Launch:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *accelerate_args,
        "--main_process_port",
        str(_free_port()),
        str(SCRIPT),
        "--out",
        str(out),
        "--ddp-timeout",
        str(DDP_TIMEOUT_S),
        *script_args,
    ]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(out / "launch.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks: the group this launch started
            proc.wait()
            rc = f"killed after {LAUNCH_TIMEOUT_S} s"
    wall = time.perf_counter() - start
    print(f"\n[multiprocess] {' '.join(script_args)}: rc={rc}, wall {wall:.1f} s")
    return Launch(out, rc, (out / "launch.log").read_text(errors="replace"), wall)


# ---------------------------------------------------------------------------------------------------------------- DDP


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Launch:
    run = launch(
        tmp_path_factory.mktemp("ddp"), DDP_FLAGS, "--layout", "span", "--temperature", str(PARITY_TEMPERATURE)
    )
    run.check()
    return run


def test_ddp_groups_span_ranks_and_each_reference_is_built_once(ddp_run):
    ranks = [ddp_run.rank(r) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # Three mixed groups; each was summarised by its owner rank (round-robin), and by no other.
    assert ranks[0]["build_groups"] == [[0, 2]] and ranks[1]["build_groups"] == [[1]]
    built = sorted(g for r in ranks for call in r["build_groups"] for g in call)
    assert built == [0, 1, 2]
    assert all(r["mixed_fraction"] == [1.0] for r in ranks)
    # Group 1 spans the ranks (rows 4-5 of rank 0, rows 0-1 of rank 1): both halves got its reference (built on
    # rank 1), and the groups owned by rank 0 reached rank 1 untouched.
    refs = [ddp_run.dump(r)["references"] for r in (0, 1)]
    assert refs[0][4] == refs[0][5] == refs[1][0] == refs[1][1] and refs[0][4]
    assert len({refs[0][0], refs[0][4], refs[1][2]}) == 3  # successes sit at different sibling positions
    assert refs[0][:4] == [refs[0][0]] * 4 and refs[1][2:] == [refs[1][2]] * 4
    for r in ranks:
        (call,) = r["score_calls"]
        # A prefill of the shared prompt prefix and the rest, per context (credit_share_prefix; DDP needs no equal count).
        assert call["n_rows"] == SPAN_ROWS and call["num_forwards"] == call["hooked_forwards"] == 4
        assert r["global_step"] == 1 and math.isfinite(r["training_loss"]) and r["max_param_delta"] > 0


def _pad(tensors: list[torch.Tensor], side: str, value) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    padded = []
    for t in tensors:
        fill = torch.full((t.size(0), width - t.size(1)), value, dtype=t.dtype)
        padded.append(torch.cat([fill, t] if side == "left" else [t, fill], dim=1))
    return torch.cat(padded)


def _same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def _one_process_credit(model_path, out_dir, dumps, *, rewards_per_func=None) -> dict:
    """Re-run `_apply_credit` in this (single) process on the ranks' batches concatenated in rank order."""
    n = sum(len(d["batch"]["prompts"]) for d in dumps)
    trainer = SGCDTrainer(
        model=model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(8),
        environment_factory=ToyLookupEnv,
        args=tiny_args(
            out_dir,
            per_device_train_batch_size=n,
            num_generations=4,
            temperature=PARITY_TEMPERATURE,
            max_completion_length=96,
            max_tool_calling_iterations=1,
            credit_scoring_batch_size=SPAN_ROWS,
            credit_strict=False,
        ),
    )
    pad = trainer.processing_class.pad_token_id
    outs = [d["output"] for d in dumps]
    output = {
        "prompt_ids": _pad([o["prompt_ids"] for o in outs], "left", pad),
        "prompt_mask": _pad([o["prompt_mask"] for o in outs], "left", 0),
        "completion_ids": _pad([o["completion_ids"] for o in outs], "right", pad),
        "completion_mask": _pad([o["completion_mask"] for o in outs], "right", 0),
        "tool_mask": _pad([o["tool_mask"] for o in outs], "right", 1),
        "advantages": torch.cat([o["advantages"] for o in outs]),
    }
    batch = {}
    for key, value in dumps[0]["batch"].items():
        if torch.is_tensor(value) or len(value) == n:  # gathered by TRL or the trainer: the same on every rank
            assert all(_same(value, d["batch"][key]) for d in dumps), f"{key} differs across ranks"
            batch[key] = value
        else:  # this rank's rows: concatenate in rank order
            batch[key] = [x for d in dumps for x in d["batch"][key]]
    if rewards_per_func is not None:
        batch["rewards_per_func"] = rewards_per_func
    # What TRL's generation step would have set for this batch: one environment (the default) per row, and the
    # advantage log that `_log_credit` overwrites in place.
    trainer._batch_environments = [None] * n
    trainer._logs["advantages"].extend([0.0] * n)
    result = trainer._apply_credit(output, batch)
    last = trainer.last_credit
    return {
        "weights": last.weights,
        "advantages": result["advantages"].detach().cpu(),
        "rows": list(last.rows),
        "scores": last.scores,
        "eligible": last.eligible,
        "references": [None if r is None else r.text for r in last.references],
    }


def test_ddp_credit_weights_equal_one_process(ddp_run, tiny_model_path, tmp_path):
    dumps = [ddp_run.dump(r) for r in (0, 1)]
    assert torch.equal(dumps[0]["batch"]["rewards_per_func"], dumps[1]["batch"]["rewards_per_func"])  # global
    widths = [d["output"]["prompt_ids"].size(1) for d in dumps]
    assert widths[0] != widths[1], "the ranks should left-pad to different widths (prompts of different lengths)"
    full = _one_process_credit(tiny_model_path, tmp_path, dumps)
    for r, d in enumerate(dumps):
        rows = slice(r * SPAN_ROWS, (r + 1) * SPAN_ROWS)
        T = d["weights"].size(1)
        assert d["references"] == full["references"][rows]
        assert d["scored"]["rows"] == [i - rows.start for i in full["rows"] if rows.start <= i < rows.stop]
        # Discrete parts are identical: which tokens are eligible (completion, not tool output, not masked literals).
        assert torch.equal(d["scored"]["eligible"], full["eligible"][rows, :T])
        assert not full["eligible"][rows, T:].any()
        # Float parts: the one-process batch is left-padded wider (RoPE is shift-invariant: float noise only).
        scores = full["scores"]
        torch.testing.assert_close(d["scored"]["divergence"], scores.divergence[rows, :T], atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(d["scored"]["entropy"], scores.teacher_entropy[rows, :T], atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(d["weights"], full["weights"][rows, :T], atol=1e-5, rtol=0)
        torch.testing.assert_close(d["advantages_after"], full["advantages"][rows, :T], atol=1e-5, rtol=1e-5)
        assert (full["weights"][rows, T:] == 1).all()
        assert (d["weights"] > 1).any(), f"rank {r} got no credit: the comparison would be vacuous"


def test_ddp_batch_with_a_non_mixed_group_scores_only_mixed_rows(ddp_run, tiny_model_path, tmp_path):
    dumps = [ddp_run.dump(r) for r in (0, 1)]
    rewards = dumps[0]["batch"]["rewards_per_func"].clone()
    rewards[8:12] = 0.0  # group 2 (rank 1's rows 2-5) now has no success: not mixed, no teacher
    # Regression: rendering only the scored rows' prompts broke TRL's per-row environment pairing.
    full = _one_process_credit(tiny_model_path, tmp_path, dumps, rewards_per_func=rewards)
    assert full["rows"] == list(range(8))
    assert (full["weights"][8:] == 1).all() and (full["weights"][:8] > 1).any()


# ------------------------------------------------------------------------------------------------------------ ZeRO-3


@needs_deepspeed
@pytest.mark.parametrize(
    "peft", [pytest.param(p, marks=[pytest.mark.slow, pytest.mark.ci]) for p in (False, True)], ids=["full", "lora"]
)
def test_zero3_only_one_rank_has_mixed_groups(tmp_path, peft):
    """Rank 0 holds the only mixed group, rank 1 only failures; both must run the same scoring forwards."""
    run = launch(
        tmp_path,
        ["--config_file", str(ZERO3_CONFIG)],
        "--layout",
        "one_rank",
        "--deepspeed",
        "--steps",
        "2",
        "--scoring-batch-size",
        "2",
        "--max-completion-length",
        "48",
        *(["--peft"] if peft else []),
    )
    run.check()
    ranks = [run.rank(r) for r in (0, 1)]
    for step in range(2):
        calls = [r["score_calls"][step] for r in ranks]
        assert [c["n_rows"] for c in calls] == [4, 0]  # rank 1 has nothing to score ...
        assert calls[0]["num_forwards"] == calls[1]["num_forwards"] == 4  # ... and still runs 2 micro-batches
        assert all(c["hooked_forwards"] == c["num_forwards"] for c in calls)  # counted by a backbone hook
    # Every rank calls the builder each step (its step metrics reset); only the owner of group 0 builds it.
    assert ranks[0]["build_groups"] == [[0], [0]] and ranks[1]["build_groups"] == [[], []]
    for r in ranks:
        assert r["global_step"] == 2 and r["mixed_fraction"] == [0.5, 0.5]
        # The fused-LM-head loss that follows the scorer still works: finite losses, parameters moved.
        assert len(r["losses"]) == 2 and all(math.isfinite(x) for x in r["losses"])
        assert r["params_finite"] and r["max_param_delta"] > 0
        assert r["num_trainable"] == (8 if peft else 20)  # LoRA: A and B of q_proj, v_proj in 2 layers


# ------------------------------------------------------------------------------------------------------------ ZeRO-2


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.ci
def test_zero2_step(tmp_path):
    run = launch(
        tmp_path,
        ["--config_file", str(ZERO2_CONFIG)],
        "--layout",
        "span",
        "--deepspeed",
        "--max-completion-length",
        "48",
    )
    run.check()
    ranks = [run.rank(r) for r in (0, 1)]
    assert sorted(g for r in ranks for call in r["build_groups"] for g in call) == [0, 1, 2]
    assert ranks[0]["score_calls"][0]["num_forwards"] == ranks[1]["score_calls"][0]["num_forwards"]
    for r in ranks:
        assert r["global_step"] == 1 and math.isfinite(r["training_loss"])
        assert r["params_finite"] and r["max_param_delta"] > 0
