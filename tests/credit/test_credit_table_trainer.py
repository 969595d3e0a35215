"""The credit table from a tiny `SGCDTrainer` run, end to end: logged to offline W&B with the sgcd/ metrics, and no
W&B call at all with `report_to="none"`."""

import json
import os

import pytest

from tests.credit.credit_table_utils import _history


def _trainer_wired() -> bool:
    """Whether the credit pipeline builds a `CreditTableRecorder` (read from its source: no TRL import at collection)."""
    import importlib.util

    with open(importlib.util.find_spec("trl_sgcd.credit.pipeline").origin, encoding="utf-8") as f:
        return "CreditTableRecorder(" in f.read()


def _tiny_sgcd(tmp_path, model_path, **overrides):
    from tests.trainer_utils import ToyLookupEnv, scripted_first_turn, tiny_args, toy_dataset, toy_reward
    from trl_sgcd import SGCDTrainer

    args = tiny_args(
        tmp_path / "out",
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=24,
        max_tool_calling_iterations=1,
        **overrides,
    )
    trainer_cls = scripted_first_turn(SGCDTrainer)
    return trainer_cls(
        model=model_path,
        reward_funcs=toy_reward,
        train_dataset=toy_dataset(2),
        args=args,
        environment_factory=ToyLookupEnv,
    )


@pytest.mark.xfail(condition=not _trainer_wired(), strict=False, reason="awaiting trainer wiring")
def test_sgcd_run_logs_credit_table_and_metrics_to_offline_wandb(offline_wandb, tmp_path, tiny_model_path):
    wandb = offline_wandb
    trainer = _tiny_sgcd(tmp_path, tiny_model_path, report_to=["wandb"])
    trainer.train()
    run_dir = os.path.dirname(wandb.run.settings.sync_file)
    wandb.finish()

    history = _history(run_dir)
    assert any(k.startswith("train/sgcd/") for h in history for k in h), "no sgcd/ metric in the run"
    logged = [h for h in history if "sgcd/credit_table/_type" in h]
    assert len(logged) == 1 and logged[0]["sgcd/credit_table/_type"] == "incremental-table-file"
    table = json.load(open(os.path.join(run_dir, "files", logged[0]["sgcd/credit_table/path"])))
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert rows and all(r["step"] == logged[0]["train/global_step"] for r in rows)
    assert any(r["reference"] and r["reference_source"] != "none" for r in rows)


def test_report_to_none_makes_no_wandb_call(tmp_path, tiny_model_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    class RecordingRun:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *a, **k: self.calls.append(name)

    run = RecordingRun()
    monkeypatch.setattr(wandb, "run", run)  # an active run the trainer must leave alone
    trainer = _tiny_sgcd(tmp_path, tiny_model_path, report_to="none")
    trainer.train()
    assert trainer.last_credit.stats.sums["rows_scored"] > 0  # the credit pipeline ran
    assert run.calls == []
    assert trainer.credit_pipeline.table is None
