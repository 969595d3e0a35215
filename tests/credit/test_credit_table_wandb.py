"""Logging the credit table to a real offline W&B run (no network): incremental tables, the local HTML page in the run
folder, per-step keys, and nothing breaks without an active run or without wandb installed."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.credit.credit_table_utils import _finished_records, _history, _rows
from trl_sgcd.credit.report import table as ct
from trl_sgcd.credit.report.table import COLUMNS, log_credit_table


def _table_files(run_dir, key="sgcd/credit_table"):
    """The table files of the run: one per log (one per increment for an incremental table)."""
    return sorted(glob.glob(os.path.join(run_dir, "files", "media", "table", f"{key}*.table.json")))


def test_two_steps_leave_two_increments_in_the_offline_run(offline_wandb, tmp_path):
    wandb = offline_wandb
    run = wandb.init(dir=str(tmp_path), mode="offline", project="sgcd-test")
    run_dir = os.path.dirname(run.settings.sync_file)
    assert log_credit_table(_rows(step=1), step=1)
    assert log_credit_table(_rows(step=2, n=3), step=2)
    _, table = ct._INCREMENTAL_TABLES[ct.CREDIT_TABLE_KEY]
    assert len(table.data) == 5 and all(v is None for row in table.data for v in row)  # logged rows released
    wandb.finish()

    logged = [h for h in _history(run_dir) if "sgcd/credit_table/_type" in h]
    assert [h["train/global_step"] for h in logged] == [1, 2]
    first, second = logged
    assert first["sgcd/credit_table/_type"] == second["sgcd/credit_table/_type"] == "incremental-table-file"
    assert (first["sgcd/credit_table/increment_num"], second["sgcd/credit_table/increment_num"]) == (0, 1)
    # Step 2 keeps step 1: its increment lists step 1's increment as a previous one; the files differ.
    assert second["sgcd/credit_table/previous_increments_paths"] == [first["sgcd/credit_table/artifact_path"]]
    assert first["sgcd/credit_table/path"] != second["sgcd/credit_table/path"]
    per_increment = [json.load(open(os.path.join(run_dir, "files", h["sgcd/credit_table/path"]))) for h in logged]
    assert [d["columns"] for d in per_increment] == [list(COLUMNS)] * 2
    steps = [[row[0] for row in d["data"]] for d in per_increment]
    assert steps == [[1, 1], [2, 2, 2]]
    assert per_increment[0]["data"][0][3] == "step 1: call lookup first"
    assert len(_table_files(run_dir)) == 2
    # Each increment's artifact holds its own rows, HTML included (releasing logged rows lost nothing).
    artifacts = [r.artifact for r in _finished_records(run_dir) if r.WhichOneof("record_type") == "artifact"]
    assert [a.type for a in artifacts] == ["wandb-run-incremental-table"] * 2
    for artifact, n_rows, step in zip(artifacts, (2, 3), (1, 2)):
        files = {e.path: e.local_path for e in artifact.manifest.contents}
        (table_path,) = [p for p in files if p.endswith(".table.json")]
        data = json.load(open(files[table_path]))["data"]
        assert [row[0] for row in data] == [step] * n_rows
        html_path = data[0][COLUMNS.index("credit_html")]["path"]
        assert 'title="W=1.800"' in open(files[html_path], encoding="utf-8").read()


def test_logging_also_writes_a_local_html_page_into_the_run_folder(offline_wandb, tmp_path):
    wandb = offline_wandb
    run = wandb.init(dir=str(tmp_path), mode="offline", project="sgcd-test")
    assert log_credit_table(_rows(step=3), step=3, cap=2.0)
    path = os.path.join(run.dir, "sgcd_credit_tables", "step_000003.html")
    wandb.finish()
    page = open(path, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and page.count('title="W=1.800"') == 2  # both rows, shaded tokens
    assert "step 3: call lookup first" in page and "W=2.00" in page  # the reference and the legend


def test_per_step_keys_fallback(offline_wandb, tmp_path):
    wandb = offline_wandb
    run = wandb.init(dir=str(tmp_path), mode="offline", project="sgcd-test")
    run_dir = os.path.dirname(run.settings.sync_file)
    assert log_credit_table(_rows(step=1), step=1, per_step_keys=True)
    assert log_credit_table(_rows(step=2), step=2, per_step_keys=True)
    wandb.finish()
    keys = {k.rsplit("/", 1)[0] for h in _history(run_dir) for k in h if k.startswith("sgcd/credit_table/step_")}
    assert keys == {"sgcd/credit_table/step_000001", "sgcd/credit_table/step_000002"}


def test_no_active_run_is_a_no_op():
    wandb = pytest.importorskip("wandb")
    assert wandb.run is None
    assert log_credit_table(_rows(), step=1) is False
    assert log_credit_table([], step=1) is False


def test_without_wandb_nothing_breaks(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.modules["wandb"] = None  # `import wandb` now raises ImportError
        import torch
        from types import SimpleNamespace
        from trl_sgcd.credit.report.table import CreditTableRecorder, credit_table_rows, log_credit_table

        class Tok:
            pad_token_id = 0
            def batch_decode(self, seqs, **kw):
                return ["".join(f"<{i}>" for i in s) for s in seqs]

        rows = credit_table_rows(step=1, prompts=["p"], completion_token_strs=[["a"]], weights=[[1.5]],
                                 eligible=[[True]], rewards=[1.0], advantages=[0.5], references=[None],
                                 group_indices=[0], cap=2.0)
        assert log_credit_table(rows, step=1) is False
        rec = CreditTableRecorder(Tok(), cap=2.0, num_generations=2)
        out = rec.record(step=1, prompts=["p", "q"], completion_ids=torch.tensor([[5, 6], [7, 0]]),
                         completion_mask=torch.tensor([[1, 1], [1, 0]]), weights=torch.tensor([[1.0, 2.0], [1, 1]]),
                         rewards=[1, 0], advantages=[1, -1], references=[SimpleNamespace(text="r", source="x")] * 2)
        assert [r["completion"] for r in out] == ["<5><6>", "<7>"], out
        assert "wandb" not in {m for m in sys.modules if sys.modules[m] is not None}
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-3000:]
