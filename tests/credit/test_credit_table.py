"""The credit table: HTML rendering, rows, the recorder, and logging to a real offline W&B run (no network)."""

import glob
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

from trl_sgcd.credit import render
from trl_sgcd.credit import table as ct
from trl_sgcd.credit.table import (
    COLUMNS,
    CreditTableRecorder,
    credit_table_rows,
    decode_token_strings,
    log_credit_table,
    prompt_text,
    render_weighted_html,
    save_credit_html,
    weight_color,
)

SPAN_RE = re.compile(r'<span style="([^"]*)" title="W=([0-9.]+)[^"]*">')


def _rows(step=1, n=2, **overrides):
    kwargs = dict(
        step=step,
        prompts=[[{"role": "system", "content": "sys"}, {"role": "user", "content": f"task {i}"}] for i in range(n)],
        completion_token_strs=[["Look", " up", "\n", "<tool>"] for _ in range(n)],
        weights=[[1.0, 1.8, 1.0, 1.0, 1.0] for _ in range(n)],  # one padding position
        eligible=[[True, True, True, False, False] for _ in range(n)],
        rewards=[float(i % 2) for i in range(n)],
        advantages=[0.5 - (i % 2) for i in range(n)],
        references=[SimpleNamespace(text=f"step {step}: call lookup first", source="contrast")] * n,
        group_indices=[i // 2 for i in range(n)],
        cap=2.0,
    )
    kwargs.update(overrides)
    return credit_table_rows(**kwargs)


# ------------------------------------------------------------------------------------------------ rendering


def test_html_is_escaped_and_newlines_kept():
    tokens = ["<script>alert('x')</script>", " & ", '"q"', "\n", "line 2"]
    out = render_weighted_html(tokens, [1.0, 1.5, 2.0, 1.0, 1.0], [True] * 5, cap=2.0)
    assert "<script>" not in out and "</script>" not in out
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in out
    assert " &amp; " in out and "&quot;q&quot;" in out
    assert ">\n</span>" in out and "white-space:pre-wrap" in out  # newline kept, and displayed as one
    assert out.count("<span") == len(tokens) and out.count('title="W=') == len(tokens)
    assert "<link" not in out and "<style" not in out  # inline CSS only: self-contained


def test_shading_is_monotone_in_weight_and_capped():
    weights = [1.0, 1.1, 1.3, 1.6, 1.9, 2.0, 2.5]
    out = render_weighted_html([f"t{i}" for i in range(len(weights))], weights, [True] * len(weights), cap=2.0)
    assert '<span title="W=1.000">t0</span>' in out  # W = 1: no shading (white)
    shades = [
        tuple(map(int, re.search(r"rgb\((\d+),(\d+),(\d+)\)", style).groups())) for style, _ in SPAN_RE.findall(out)
    ]
    assert len(shades) == len(weights) - 1
    for lighter, darker in zip(shades, shades[1:]):
        assert all(a >= b for a, b in zip(lighter, darker)) and sum(lighter) >= sum(darker)
    assert shades[-2] == shades[-1] == render._STRONG_RGB  # W = cap and above: the strongest colour
    assert weight_color(1.0, cap=3.0) == (255, 255, 255)
    values = [sum(weight_color(1 + k / 10, cap=3.0)) for k in range(21)]
    assert values == sorted(values, reverse=True) and len(set(values)) == len(values)
    with pytest.raises(ValueError, match="cap"):
        weight_color(1.5, cap=1.0)


def test_ineligible_tokens_are_greyed_whatever_their_weight():
    out = render_weighted_html(["obs", "act"], [2.0, 2.0], [False, True], cap=2.0)
    obs, act = out.split("</span>")[:2]
    assert render._INELIGIBLE_STYLE in obs and "not eligible" in obs and "rgb(" not in obs
    assert "rgb(214,39,40)" in act
    with pytest.raises(ValueError, match="differ in length"):
        render_weighted_html(["a"], [1.0, 1.0], [True], cap=2.0)


# ------------------------------------------------------------------------------------------------ rows


def test_rows_carry_prompt_reference_and_weight_stats():
    rows = _rows(n=4, references=[None, "free text", SimpleNamespace(text="ref", source="llm"), None])
    assert [list(r) for r in rows] == [list(COLUMNS)] * 4
    r = rows[0]
    assert r["prompt"] == "task 0" and r["group"] == 0 and r["step"] == 1
    assert (r["reference"], r["reference_source"]) == ("", "none")
    assert (rows[1]["reference"], rows[1]["reference_source"]) == ("free text", "text")
    assert (rows[2]["reference"], rows[2]["reference_source"]) == ("ref", "llm")
    assert r["credit_tokens"] == 1 and r["weight_max"] == 1.8
    assert r["weight_mean"] == pytest.approx((1.0 + 1.8 + 1.0) / 3)  # over eligible tokens only
    assert r["completion"] == "Look up\n<tool>" and r["credit_html"].count("<span") == 4
    assert (rows[1]["reward"], rows[1]["advantage"]) == (1.0, -0.5)
    assert len(_rows(n=4, max_rows=3)) == 3
    none_eligible = _rows(n=1, eligible=[[False] * 5])[0]
    assert (none_eligible["credit_tokens"], none_eligible["weight_mean"], none_eligible["weight_max"]) == (0, 1.0, 1.0)
    with pytest.raises(ValueError, match="rewards has 1 entries for 2 prompts"):
        _rows(n=2, rewards=[1.0])
    with pytest.raises(ValueError, match="4 tokens but 2 weights"):
        _rows(n=1, weights=[[1.0, 1.0]])


def test_prompt_text():
    assert prompt_text("plain") == "plain"
    conversation = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "second"}]},
    ]
    assert prompt_text(conversation) == "second"
    assert prompt_text([{"role": "system", "content": "only system"}]) == "only system"


def test_decode_token_strings_concatenate_to_the_text(tokenizer):
    text = 'Hi 😀 there\n\t中文字符 <tool_call>\n{"key": "alpha"}\n</tool_call><|im_end|>'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = decode_token_strings(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=False)
    assert "\ufffd" not in "".join(pieces) and "😀" in pieces and "<|im_end|>" in pieces
    assert decode_token_strings(tokenizer, []) == []


def test_recorder_keeps_credited_groups_and_decodes_tensors(tokenizer, tmp_path):
    G, T = 2, 12
    texts = ["I will look up alpha.", "No.", "Done <x>", "Hmm\nok", "a", "b"]  # 3 groups of 2
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:T] for t in texts]
    ids = torch.full((6, T), tokenizer.pad_token_id)  # (B, T)
    mask = torch.zeros(6, T, dtype=torch.long)  # (B, T)
    for i, e in enumerate(encoded):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    tool_mask = torch.ones(6, T, dtype=torch.long)  # (B, T)
    tool_mask[0, 1] = 0  # a tool-observation token in row 0
    weights = torch.ones(6, T)  # (B, T)
    weights[0, 2], weights[1, 0] = 2.0, 1.5
    refs = (
        [SimpleNamespace(text="ref g0", source="contrast")] * 2
        + [None] * 2
        + [SimpleNamespace(text="ref g2", source="llm")] * 2
    )
    recorder = CreditTableRecorder(
        tokenizer, cap=2.0, num_generations=G, max_groups=2, log_to_wandb=False, html_dir=str(tmp_path / "html")
    )
    rows = recorder.record(
        step=3,
        prompts=[f"p{i}" for i in range(6)],
        completion_ids=ids,
        completion_mask=mask,
        weights=weights,
        rewards=[1, 0, 0, 0, 1, 0],
        advantages=[0.7, -0.7, 0, 0, 0.7, -0.7],
        references=refs,
        tool_mask=tool_mask,
        row_offset=4,
    )
    # Global rows 4..9 -> groups 2, 2, 3, 3, 4, 4; groups 2 and 4 have a reference, so they are kept.
    assert [r["group"] for r in rows] == [2, 2, 4, 4]
    assert [r["completion"] for r in rows] == [texts[0], texts[1], texts[4], texts[5]]
    assert rows[0]["credit_tokens"] == 1 and rows[0]["weight_max"] == 2.0
    assert rows[1]["weight_max"] == 1.5 and rows[0]["reference"] == "ref g0"
    assert rows[0]["credit_html"].count(render._INELIGIBLE_STYLE) == 1  # the tool token
    assert recorder.last_rows == rows
    page = (tmp_path / "html" / "credit_00003.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "ref g2" in page and "not eligible" in page
    # A row masked out entirely (truncated completion) is still shown, up to its padding, all greyed.
    mask[0] = 0
    rows = recorder.record(
        step=4,
        prompts=["p"] * 6,
        completion_ids=ids,
        completion_mask=mask,
        weights=weights,
        rewards=[0] * 6,
        advantages=[0] * 6,
        references=refs,
    )
    assert rows[0]["completion"] == texts[0] and rows[0]["credit_tokens"] == 0
    with pytest.raises(ValueError, match="max_groups"):
        CreditTableRecorder(tokenizer, cap=2.0, num_generations=2, max_groups=0)


def test_save_credit_html_is_a_standalone_page(tmp_path):
    rows = _rows(references=[SimpleNamespace(text="<b>not bold</b>", source="contrast")] * 2)
    path = save_credit_html(rows, tmp_path / "deep" / "credit.html", cap=2.0)
    page = open(path, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold</b>" not in page
    assert page.count('class="row"') == 2 and "W=2.00" in page  # one card per row, and the legend
    assert "http" not in page  # nothing fetched from elsewhere


# ------------------------------------------------------------------------------------------------ W&B


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """Real wandb in offline mode, every folder it writes under tmp_path; the run is finished afterwards."""
    wandb = pytest.importorskip("wandb")
    for name, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        os.makedirs(tmp_path / sub, exist_ok=True)
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    yield wandb
    if wandb.run is not None:
        wandb.finish()


def _records(run_dir):
    """Protobuf records of an offline run's `.wandb` file (LevelDB log format: 32 KiB blocks of framed chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + 7 + length > len(raw):  # still being written
            return
        chunks += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _finished_records(run_dir, timeout=60.0) -> list:
    """All records, once the run's `exit` record is on disk: wandb-core may still be flushing when finish returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(_records(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _history(run_dir) -> list[dict]:
    rows = []
    for record in _finished_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


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


def test_decisive_tokens_are_underlined():
    tokens, weights, eligible = ["a", "b", "c"], [1.0, 1.6, 1.0], [True, True, False]
    out = render_weighted_html(tokens, weights, eligible, cap=2.0, decisive=[False, True, True])
    spans = re.findall(r"<span[^>]*>", out)
    assert ["underline" in s for s in spans] == [False, True, True]
    assert "(decisive)" in spans[1] and "not eligible, decisive" in spans[2]
    assert out.replace(render._DECISIVE_STYLE, "").replace(", decisive", "").replace(" (decisive)", "") == (
        render_weighted_html(tokens, weights, eligible, cap=2.0)
    )
    with pytest.raises(ValueError, match="decisive"):
        render_weighted_html(tokens, weights, eligible, cap=2.0, decisive=[True])


def test_localization_page_puts_the_reference_beside_the_tokens():
    item = {
        "meta": "task 1 <x>",
        "tokens": ["id", "=", "A1"],
        "weights": [1.0, 1.0, 2.0],
        "eligible": [True, True, True],
        "decisive": [False, False, True],
        "reference": "check <state>",
    }
    page = ct.localization_html_page([item], title="where credit lands", cap=2.0, intro="intro")
    assert page.count('class="pair"') == 1 and "check &lt;state&gt;" in page and "task 1 &lt;x&gt;" in page
    assert "underline" in page and 'title="W=2.000 (decisive)"' in page


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
        from trl_sgcd.credit.table import CreditTableRecorder, credit_table_rows, log_credit_table

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


# ------------------------------------------------------------------------------------------------ trainer, end to end


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
