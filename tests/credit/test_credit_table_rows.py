"""Credit-table rows: prompt text, reference and weight stats per row, token strings, the recorder over a batch of
tensors, and the standalone HTML page."""

from types import SimpleNamespace

import pytest
import torch

from tests.credit.credit_table_utils import _rows
from trl_sgcd.credit.report import html as render
from trl_sgcd.credit.report.html import save_credit_html
from trl_sgcd.credit.report.table import COLUMNS, CreditTableRecorder, decode_token_strings, prompt_text


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
