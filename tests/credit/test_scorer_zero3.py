"""The scorer and `teacher_matching_loss` under DeepSpeed ZeRO-3 with 2 CPU ranks and unequal rows (slow)."""

import pytest

ZERO3_WORKER = """
import datetime, sys
import torch, torch.distributed as dist
from accelerate import Accelerator, InitProcessGroupKwargs
from transformers import AutoModelForCausalLM
sys.path.insert(0, sys.argv[1])
from tests.credit.scorer_utils import _args, make_batch
from trl_sgcd.credit.scoring.distill_losses import teacher_matching_loss
from trl_sgcd.credit.scoring.scorer import DenseDivergenceScorer

def load():  # before the Accelerator exists, so that nothing is partitioned at load time
    model = AutoModelForCausalLM.from_pretrained(sys.argv[2])
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)
    return model

reference, model = load().eval(), load()
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=60))])
acc.state.deepspeed_plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=1, train_batch_size=2)
engine, optimizer = acc.prepare(model, optimizer)
rank = dist.get_rank()
assert hasattr(engine.module.lm_head.weight, "ds_id") and engine.module.lm_head.weight.numel() == 0
rows = 3 if rank == 0 else 1  # unequal work: rank 1 must pad with dummy forwards
batch = {k: v[:rows] for k, v in make_batch(seed=3).items()}
scorer = DenseDivergenceScorer(top_k=6, chunk_size=4, batch_size=1)
n = torch.tensor([scorer.num_batches(rows)])
dist.all_reduce(n, op=dist.ReduceOp.MAX)
engine.train()
out = scorer.score(engine, *_args(batch), min_batches=int(n), return_teacher_topk=True)
ref = scorer.score(reference, *_args(batch), return_teacher_topk=True)
assert out.num_forwards == 6 and engine.training
for f in ("divergence", "teacher_entropy", "student_logprobs", "teacher_logprobs", "teacher_topk_logprobs"):
    torch.testing.assert_close(getattr(out, f), getattr(ref, f), atol=1e-5, rtol=1e-4)
assert torch.equal(out.teacher_topk_ids, ref.teacher_topk_ids)
mask = batch["completion_mask"] if rank == 0 else torch.zeros_like(batch["completion_mask"])
for step in range(2):  # a broken partitioned head would fail the second backward
    loss = teacher_matching_loss(engine, batch["student_input_ids"], batch["student_attention_mask"], mask,
                                 out.teacher_topk_ids, out.teacher_topk_logprobs, temperature=1.0, chunk_size=3)
    if step == 0:
        expected = teacher_matching_loss(reference, batch["student_input_ids"], batch["student_attention_mask"],
                                         mask, out.teacher_topk_ids, out.teacher_topk_logprobs, temperature=1.0,
                                         chunk_size=3)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
    engine.backward(loss)
    engine.step()
moved = scorer.score(engine, *_args(batch), min_batches=int(n))
assert not torch.allclose(moved.divergence, out.divergence)  # the steps trained the model
print("ZERO3-OK", rank, flush=True)
"""

ZERO3_ACCELERATE_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config: {zero_stage: 3, offload_optimizer_device: none, offload_param_device: none, zero3_init_flag: false}
mixed_precision: 'no'
num_machines: 1
num_processes: 2
use_cpu: false
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_zero3_two_ranks_unequal_rows(tmp_path, tiny_model_path):
    """ZeRO-3 on 2 CPU ranks: same forwards on both, scores equal to an unpartitioned model, the loss backpropagates."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from trl_sgcd.import_utils import is_deepspeed_available

    if not (is_deepspeed_available() and shutil.which("g++") and shutil.which("ninja")):
        pytest.skip("needs deepspeed, g++ and ninja")
    (tmp_path / "worker.py").write_text(ZERO3_WORKER)
    (tmp_path / "zero3.yaml").write_text(ZERO3_ACCELERATE_CONFIG)
    root = str(Path(__file__).resolve().parents[2])
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(tmp_path / "zero3.yaml"),
        "--main_process_port",
        "0",
        str(tmp_path / "worker.py"),
        root,
        tiny_model_path,
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks (a hang is a failure)
        log, _ = proc.communicate()
    assert proc.returncode == 0 and log.count("ZERO3-OK") == 2, log[-4000:]
