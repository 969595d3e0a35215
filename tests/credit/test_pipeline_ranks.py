"""`CreditPipeline.run` across ranks, in one process: two threads, one pipeline each, joined by a fake 2-rank `Comm`.

What crosses ranks is the pipeline's own logic (which rank builds which reference, who receives them, how many
scoring forwards each rank runs, how statistics reduce); the fake comm only moves objects between the threads.
"""

import threading

import torch
from transformers import AutoTokenizer

from tests.credit.test_pipeline import _batch, _render
from tests.trainer_utils import tiny_args
from trl_sgcd.credit.comm import SingleProcessComm
from trl_sgcd.credit.pipeline import CreditBatch, CreditPipeline

COMPLETIONS = ["called lookup(alpha), answered 5", "guessed seven", "called lookup(beta), answered 4", "no idea"]


class _Board:
    def __init__(self, world_size):
        self.slots, self.barrier = [None] * world_size, threading.Barrier(world_size, timeout=120)


class ThreadComm:
    """Rank `rank` of `world_size` threads: every collective is an exchange through a shared board."""

    def __init__(self, board, rank):
        self.board, self.rank, self.world_size = board, rank, len(board.slots)

    def _exchange(self, value):
        self.board.slots[self.rank] = value
        self.board.barrier.wait()
        values = list(self.board.slots)
        self.board.barrier.wait()
        return values

    def gather(self, items):
        return [x for part in self._exchange(list(items)) for x in part]

    def sum(self, values):
        return torch.stack(self._exchange(values)).sum(0)

    def max(self, values):
        return torch.stack(self._exchange(values)).max(0).values

    def owner(self, group_index):
        return group_index % self.world_size


def _pipeline(tmp_path, tiny_model_path, built):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)  # one per rank, as in separate processes
    pipe = CreditPipeline(tiny_args(tmp_path), tokenizer, num_generations=2)
    build = pipe.reference_builder.build

    def recorded(groups):
        built.append((threading.current_thread().name, [g.group_index for g in groups]))
        return build(groups)

    pipe.reference_builder.build = recorded
    score = pipe.scorer.score
    pipe.score_calls = []

    def counted(*args, **kwargs):
        pipe.score_calls.append(kwargs["min_batches"])
        return score(*args, **kwargs)

    pipe.scorer.score = counted
    return pipe, tokenizer


def _credit_batch(tensors, prompts, rows, model, tokenizer):
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])  # group 0 (rank 0) is mixed, group 1 (rank 1) is not
    out = {k: v[rows] for k, v in tensors.items()}
    return CreditBatch(
        out, [prompts[i] for i in range(*rows.indices(4))], [{}] * len(out["advantages"]), COMPLETIONS, rewards,
        model=model, render=_render(tokenizer), step=1,
    )  # fmt: skip


def test_two_ranks_build_each_reference_once_and_agree_with_one_process(tmp_path, model, tiny_model_path):
    built, results, errors = [], {}, []
    board = _Board(2)

    def rank(r):
        try:
            pipe, tok = _pipeline(tmp_path / f"r{r}", tiny_model_path, built)
            tensors, prompts, _ = _batch(tok)
            with torch.no_grad():
                results[r] = (
                    pipe,
                    pipe.run(
                        _credit_batch(tensors, prompts, slice(2 * r, 2 * r + 2), model, tok), ThreadComm(board, r)
                    ),
                )
        except BaseException as exc:  # noqa: BLE001 - reported below, and the other rank must not hang
            errors.append(exc)
            board.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # Each mixed group's reference is built once, by its owner (group g on rank g % 2): rank 1 owns only the
    # all-success group 1, so it builds nothing and its rows get no teacher.
    assert sorted(built) == [("rank0", [0]), ("rank1", [])]
    (pipe0, r0), (pipe1, r1) = results[0], results[1]
    assert [ref.group_index for ref in r0.references] == [0, 0] and r1.references == [None, None]
    # Every rank runs the same number of scoring forwards, rank 1 too though it has nothing to score (the max over
    # ranks: a rank that skipped them would leave the other waiting in ZeRO-3's gathers).
    assert pipe0.score_calls == pipe1.score_calls and pipe0.score_calls[0] >= 1
    # Statistics are reduced over ranks: both ranks hold the same totals and the same metrics.
    assert r0.stats.sums == r1.stats.sums and r0.stats.sums["rows_scored"] == 2
    timing = ("latency", "time", "memory", "_s")
    same = {k: v for k, v in r0.metrics.items() if not any(t in k for t in timing)}
    assert same == {k: v for k, v in r1.metrics.items() if k in same}
    assert same["sgcd/mixed_group_fraction"] == 0.5

    # One process with the whole batch gets the same references, weights and totals.
    built.clear()
    pipe, tok = _pipeline(tmp_path / "one", tiny_model_path, built)
    tensors, prompts, _ = _batch(tok)
    with torch.no_grad():
        whole = pipe.run(_credit_batch(tensors, prompts, slice(0, 4), model, tok), SingleProcessComm())
    assert built == [("MainThread", [0])]
    text = lambda refs: [None if ref is None else ref.text for ref in refs]  # noqa: E731
    assert text(whole.references) == text(r0.references + r1.references)
    assert torch.allclose(whole.weights, torch.cat([r0.weights, r1.weights]), atol=1e-5)
    for key in ("rows_scored", "credit_tokens", "eligible_tokens"):
        if key in whole.stats.sums:
            assert whole.stats.sums[key] == r0.stats.sums[key], key
