"""Teacher inputs: reference insertion, capping, id splicing, masked-literal tokens."""

import torch

from trl_sgcd.credit.reference.builder import cap_reference
from trl_sgcd.credit.scoring.teacher import (
    REFERENCE_HEADER,
    insert_reference,
    literal_token_mask,
    splice_teacher_inputs,
    teacher_prompt_ids,
)


def test_insert_reference_goes_into_the_last_user_turn_and_copies():
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}]
    out = insert_reference(prompt, "REF")
    assert prompt[1]["content"] == "task"  # input untouched
    assert out[1]["content"].startswith("task\n\n" + REFERENCE_HEADER) and "REF" in out[1]["content"]
    assert insert_reference("plain task", "REF").endswith("\n\nplain task")
    blocks = insert_reference([{"role": "user", "content": [{"type": "text", "text": "t"}]}], "REF")
    assert blocks[0]["content"][-1]["type"] == "text" and "REF" in blocks[0]["content"][-1]["text"]


def test_cap_reference_caps_only_the_reference(tokenizer):
    long = "step " * 500
    capped = cap_reference(long, tokenizer, 16)
    assert len(tokenizer(capped, add_special_tokens=False)["input_ids"]) <= 16
    assert cap_reference("short", tokenizer, 16) == "short"


def test_splice_keeps_completion_ids_exact():
    completion = torch.tensor([[5, 6, 0], [7, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    ids, att = splice_teacher_inputs([[1, 2, 3], [4]], completion, mask, pad_token_id=0)
    assert torch.equal(ids[:, -3:], completion) and torch.equal(att[:, -3:], mask)
    assert ids[:, :3].tolist() == [[1, 2, 3], [0, 0, 4]] and att[:, :3].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_teacher_prompt_ids_fall_back_to_a_token_prefix_when_rendering_differs(tokenizer):
    def render(prompts):
        return [
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for p in prompts
        ]

    prompts = [[{"role": "system", "content": "s"}, {"role": "user", "content": f"task {i}"}] for i in range(3)]
    student = render(prompts)
    ids, fallback = teacher_prompt_ids(
        prompts, {0: "ref a", 2: "ref c"}, [student[0], student[2]], render=render, tokenizer=tokenizer
    )
    assert fallback == 0 and "ref a" in tokenizer.decode(ids[0]) and "task 0" in tokenizer.decode(ids[0])
    custom = [student[0], [11, 12, 13]]  # a rollout_func rendered row 2 itself
    ids, fallback = teacher_prompt_ids(prompts, {0: "ref a", 2: "ref c"}, custom, render=render, tokenizer=tokenizer)
    assert fallback == 1 and ids[1][-3:] == [11, 12, 13] and "ref c" in tokenizer.decode(ids[1])


def test_literal_token_mask_marks_overlapping_tokens(tokenizer):
    text = "card 4111111111111111 ok"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    mask = literal_token_mask(ids, [["4111111111111111"]], tokenizer)
    marked = tokenizer.decode(ids[0][mask[0]])
    assert "4111111111111111" in marked.replace(" ", "") and "ok" not in marked and mask[0].sum() < ids.size(1)
    assert not literal_token_mask(ids, [[]], tokenizer).any()
