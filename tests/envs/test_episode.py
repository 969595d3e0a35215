"""`env.done` ends a rollout's tool loop (`trl_sgcd.envs.episode`), for any environment: unit level, then one SGCD
step of the tiny model with forced tool calls."""

import json
import types

import pytest

from trl_sgcd.envs.episode import FinalResult, end_episode_suffix, episode_done, watch_episode_ends


class ToyEnv:
    """`finish` ends the episode, `ping` does not; `done` is a plain attribute (never a method: it would be a tool)."""

    def reset(self, **kwargs):
        self.done = False
        self.calls = []

    def ping(self) -> str:
        """Check the connection."""
        self.calls.append("ping")
        return "pong"

    def finish(self, answer: str) -> str:
        """Submit the final answer.

        Args:
            answer: The answer.
        """
        self.calls.append("finish")
        self.done = True
        return "submitted"


def toy_reward(completions, environments, **kwargs):
    return [float(env.done) for env in environments]


def test_results_after_done_are_final_and_end_the_loop():
    envs = [ToyEnv(), ToyEnv()]
    for env in envs:
        env.reset()
    tokenizer = types.SimpleNamespace(pad_token_id=0)
    trainer = types.SimpleNamespace(
        environments=envs,
        tools=[ToyEnv.ping],
        _sync_tool_dicts=[{"ping": e.ping, "finish": e.finish} for e in envs],
        _async_tool_dicts=[{}, {}],
        _tokenizer=tokenizer,
        max_completion_length=8,
    )
    tool_dicts = (trainer._sync_tool_dicts, trainer._async_tool_dicts)
    watch_episode_ends(envs, tool_dicts)
    watch_episode_ends(envs, tool_dicts)  # idempotent: wrapped once
    first, second = trainer._sync_tool_dicts
    assert not isinstance(first["ping"](), FinalResult)
    final = first["finish"](answer="42")
    assert isinstance(final, FinalResult) and final == "submitted" and str(final) is final  # TRL's str() keeps it
    assert episode_done(envs[0]) and not episode_done(envs[1]) and not episode_done(object())
    assert not isinstance(second["ping"](), FinalResult)
    assert isinstance(first["ping"](), FinalResult)  # any call once done
    messages = [{"role": "tool", "name": "finish", "content": final}]
    budget = dict(pad_token_id=tokenizer.pad_token_id, max_completion_length=trainer.max_completion_length)
    assert len(end_episode_suffix(messages, [5, 6], **budget)) > trainer.max_completion_length
    assert end_episode_suffix([{"role": "tool", "content": "pong"}], [5, 6], **budget) == [5, 6]


@pytest.mark.timeout(900)
def test_a_finished_rollout_gets_no_further_turn(tmp_path, tiny_model_path):
    from datasets import Dataset

    from tests.trainer_utils import tiny_args
    from trl_sgcd import SGCDTrainer

    def call(name, arguments):
        return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call><|im_end|>"

    forced = {0: call("finish", {"answer": "42"}), 1: call("ping", {})}
    post_tool_batches = []

    class Forced(SGCDTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            if num_generations == 1:
                post_tool_batches.append(len(prompt_ids))
            elif self.model.training:
                for row, text in forced.items():
                    ids[row] = self.processing_class(text, add_special_tokens=False)["input_ids"]
            return ids, logprobs

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 6 x 7?"}]}])
    args = tiny_args(tmp_path, per_device_train_batch_size=2, num_generations=2, max_completion_length=64)
    trainer = Forced(tiny_model_path, toy_reward, args, train_dataset=dataset, environment_factory=ToyEnv)
    generated = []
    generate = trainer._generate
    trainer._generate = lambda prompts: generated.append(generate(prompts)) or generated[-1]
    trainer.train()
    _, completion_ids, tool_mask, completions, *_ = generated[0]
    finished, going = trainer.environments
    assert finished.calls == ["finish"] and finished.done and going.calls[0] == "ping" and not going.done
    assert [m["role"] for m in completions[0]] == ["assistant"]  # no turn after the final call
    assert completion_ids[0][-1] == trainer.processing_class.eos_token_id and set(tool_mask[0]) == {1}
    assert [m["role"] for m in completions[1]][:2] == ["assistant", "tool"]
    assert post_tool_batches[0] == 1  # only the rollout still going was generated on
