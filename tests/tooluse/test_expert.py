"""Expert trajectories: rendered from gold solutions with real observations, each one re-executed earns reward 1."""

import json

import pytest

from trl_sgcd.envs import AirlineEnv, airline_tasks, airline_tool_schemas, make_airline_dataset, score_episode
from trl_sgcd.tooluse.expert import expert_conversations, expert_sft_dataset, expert_turn_ids


@pytest.fixture(scope="module")
def train_conversations():
    return expert_conversations("train")


def _reexecute(task, conversation):
    """Run every tool call of the conversation on a fresh environment; return it and the observations it gave."""
    env = AirlineEnv()
    env.reset(task_id=task["task_id"], seed=task["seed"])
    observations = []
    for message in conversation:
        for call in message.get("tool_calls") or []:
            function = call["function"]
            observations.append(getattr(env, function["name"])(**function["arguments"]))
    return env, observations


def test_each_expert_conversation_earns_reward_one(train_conversations):
    tasks = airline_tasks("train")
    assert len(train_conversations) == len(tasks) == 96
    for task, conversation in zip(tasks, train_conversations):
        env, observations = _reexecute(task, conversation)
        assert observations == [m["content"] for m in conversation if m["role"] == "tool"]  # real observations
        assert score_episode(env, conversation[-1]["content"]) == 1.0, task["task_id"]


def test_conversation_structure(train_conversations):
    tasks = airline_tasks("train")
    for task, conversation in zip(tasks, train_conversations):
        roles = [m["role"] for m in conversation]
        assert roles == ["system", "user"] + ["assistant", "tool"] * len(task["gold_actions"]) + ["assistant"]
        calls = [m for m in conversation if m.get("tool_calls")]
        assert all(len(m["tool_calls"]) == 1 and m["content"] == "" for m in calls)
        assert all(
            not json.loads(m["content"]).get("error")
            for m in conversation
            if m["role"] == "tool" and m["content"].startswith("{")
        )
        final = conversation[-1]["content"]
        assert all(fact in final for fact in task["answer_facts"])
        if task["category"] == "no_action":
            assert "sorry" in final.lower()
        if task["category"] == "transfer":
            assert "transferred" in final.lower()


def test_renders_with_the_tool_template(tokenizer, train_conversations):
    tools = airline_tool_schemas()
    conversation = max(train_conversations[:20], key=len)
    text = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False)
    assert text.count("<|im_start|>assistant\n<tool_call>") == sum(1 for m in conversation if m.get("tool_calls"))
    assert text.count("<tool_response>") == sum(1 for m in conversation if m["role"] == "tool")
    assert text.rstrip().endswith(conversation[-1]["content"] + "<|im_end|>")
    turns = expert_turn_ids(tokenizer, conversation, tools)
    assert len(turns) == sum(1 for m in conversation if m["role"] == "assistant")
    assert all(ids[-1] == tokenizer.eos_token_id for _, ids in turns)
    assert tokenizer.decode(turns[0][1]).startswith('<tool_call>\n{"name": ')


def test_conversations_from_dataset_rows():
    dataset = make_airline_dataset("test", n=3)
    from_rows = expert_conversations(dataset)
    assert [c[1]["content"] for c in from_rows] == [row["prompt"][1]["content"] for row in dataset]
    assert from_rows == expert_conversations("test")[:3]


def test_sft_dataset_keeps_tool_arguments_exact():
    dataset = expert_sft_dataset("train")
    assert set(dataset.column_names) == {"messages", "tools", "task_id", "category"} and len(dataset) == 96
    assert json.loads(dataset[0]["tools"]) == airline_tool_schemas()
    for row, conversation in zip(dataset, expert_conversations("train")):
        assert row["messages"] == conversation  # no Arrow struct merging: no `None`-filled argument keys


def test_sft_trainer_accepts_the_dataset(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    dataset = expert_sft_dataset("train").select(range(4))
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_length=4096,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        processing_class=tokenizer,
        args=args,
        train_dataset=dataset,
    )
    ids = trainer.train_dataset[0]["input_ids"]
    expected = tokenizer.apply_chat_template(
        dataset[0]["messages"], tools=json.loads(dataset[0]["tools"]), tokenize=True, return_dict=True
    )["input_ids"]
    assert list(ids) == list(expected)  # the trainer renders the tools and tool calls like the rollout loop
