"""Shared by the credit-table tests: sample table rows, and a reader for the records of an offline W&B run."""

import glob
import json
import os
import struct
import time
from types import SimpleNamespace

from trl_sgcd.credit.report.table import credit_table_rows


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
