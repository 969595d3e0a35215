"""Helpers for trainer tests: a real tool environment, a reward read from it, and a scripted first turn.

A random tiny model almost never emits a valid tool call. `scripted_first_turn` replaces only the *first* assistant
turn of chosen rows with a real `<tool_call>` in the chat template's format; TRL's own tool loop then parses and
executes it against the real environment, appends the tool result, and lets the model continue. Everything after
that (rewards, grouping, references, dense scoring, saliency, weights, loss) is the real pipeline.
"""

from __future__ import annotations

import json

from datasets import Dataset

SECRET_CARD = "4111 1111 1111 1111"  # Luhn-valid test number


class ToyLookupEnv:
    """A key-value store the agent must query: success = it looked up the key the task asks for."""

    def __init__(self):
        self.calls: list[str] = []
        self.target = None

    def reset(self, **row) -> None:
        self.calls = []
        self.target = row.get("target_key")
        return None

    def lookup(self, key: str) -> str:
        """Look up a record by its key.

        Args:
            key: The record key, for example "alpha".

        Returns:
            The record as JSON.
        """
        self.calls.append(key)
        if key not in {"alpha", "beta", "gamma"}:
            raise KeyError(f"unknown key {key!r}")
        return json.dumps({"value": len(key), "email": "ana@example.com", "card": SECRET_CARD})


def toy_reward(completions, environments=None, **kwargs) -> list[float]:
    """1.0 when the rollout looked up its task's target key, else 0.0."""
    return [1.0 if env.target in env.calls else 0.0 for env in environments]


def toy_dataset(n_prompts: int = 4) -> Dataset:
    keys = ["alpha", "beta", "gamma"]
    rows = []
    for i in range(n_prompts):
        key = keys[i % len(keys)]
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": "You are a records assistant. Use the lookup tool."},
                    {"role": "user", "content": f"Find the record for key {key} and report its value."},
                ],
                "target_key": key,
                "gold_answer": f"value={len(key)}-{key.upper()}",
            }
        )
    return Dataset.from_list(rows)


def tool_call_text(key: str) -> str:
    return '<tool_call>\n{"name": "lookup", "arguments": {"key": "%s"}}\n</tool_call><|im_end|>' % key


def scripted_first_turn(trainer_cls, *, script=lambda row_index, process_index: row_index % 2 == 0):
    """A subclass of `trainer_cls` whose first generation turn is a real tool call for rows where `script` is True.

    Row i of the local generation batch calls `lookup` with its target key when `script(i, rank)` holds (success),
    otherwise the model's own random tokens stand (failure). A script with a third parameter also gets the index of
    the generation round (0, 1, ...; dynamic sampling runs several per batch). Post-tool turns are the model's own.
    The first turn is recognised by TRL calling `_generate_single_turn` with `num_generations > 1` (tool-loop turns
    pass 1).
    """
    import inspect

    takes_round = len(inspect.signature(script).parameters) >= 3

    class Scripted(trainer_cls):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            if num_generations == 1 or not self.model.training:
                return completion_ids, logprobs
            round_index = getattr(self, "_scripted_rounds", 0)
            self._scripted_rounds = round_index + 1
            envs = self.environments or []
            rank = self.accelerator.process_index
            for i in range(min(len(completion_ids), len(envs))):
                hit = script(i, rank, round_index) if takes_round else script(i, rank)
                if hit:
                    ids = self.processing_class(tool_call_text(envs[i].target), add_special_tokens=False)["input_ids"]
                    completion_ids[i] = ids
            return completion_ids, logprobs

    Scripted.__name__ = f"Scripted{trainer_cls.__name__}"
    return Scripted


def tiny_args(output_dir, **overrides):
    from trl_sgcd import SGCDConfig

    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=96,
        max_steps=1,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=42,
        credit_dynamic_sampling=False,  # the tests that want it say so (the default: on in the credit modes)
        # At temperature 1 the random model's divergences are ~1e-6 (float noise); at 0.05 they reach ~0.1, so the
        # credit the tests see is signal, not rounding.
        temperature=0.05,
        max_tool_calling_iterations=2,
        credit_private_columns=["gold_answer"],
        # The mechanics tests keep the former lax span rule (spans run on until an entropy rise or max_span), so that a
        # random tiny model shows credit on many tokens; the default, sparse rule is tested in test_saliency.py and on
        # SmolLM2 in test_bench_credit_controlled.py.
        credit_spike_z=1.0,
        credit_reset_z=-0.5,
        credit_saturation_z=4.0,
        # The random tiny model is nearly deterministic (teacher entropy ~0.01 nats), so its divergences are ~1e-7;
        # the robust z-score is scale-free, so spikes still stand out once the absolute floor is lifted.
        credit_min_divergence=0.0,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return SGCDConfig(**kwargs)
