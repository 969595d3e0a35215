"""The fast path's scripted sibling and context-dependent tiny model: mixed groups, divergence above the floor."""

import torch

from trl_sgcd.envs.airline import AirlineEnv, airline_reward
from trl_sgcd.envs.airline_tasks import airline_tasks
from trl_sgcd.envs.scripted import scripted_sibling_reward


def test_first_rollout_of_each_task_succeeds_the_rest_keep_the_verifier():
    tasks = [t for t in airline_tasks("train") if t["category"] == "action"][:2]
    envs, ids = [], []
    for task in tasks:
        for _ in range(3):
            env = AirlineEnv(task["seed"])
            env.reset(task_id=task["task_id"], seed=task["seed"])
            envs.append(env)
            ids.append(task["task_id"])
    completions = [[{"role": "assistant", "content": "done"}]] * len(envs)
    assert airline_reward(completions, environments=envs) == [0.0] * 6  # nothing was done: the verifier says no
    assert scripted_sibling_reward(completions, environments=envs, task_id=ids) == [1.0, 0.0, 0.0] * 2


def test_tiny_context_model_predictions_depend_on_the_context():
    from transformers import AutoModelForCausalLM

    from trl_sgcd import topk_divergence
    from trl_sgcd.tooluse.models import tiny_context_model_dir, tiny_model_dir

    g = torch.Generator().manual_seed(0)
    ctx, ref, comp = (torch.randint(0, 5000, (n,), generator=g).tolist() for n in (60, 40, 30))
    medians = []
    for folder in (tiny_model_dir(), tiny_context_model_dir()):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            s = model(torch.tensor([ctx + comp])).logits[0, len(ctx) - 1 : -1]
            t = model(torch.tensor([ctx[:30] + ref + ctx[30:] + comp])).logits[0, len(ctx) + len(ref) - 1 : -1]
        medians.append(float(topk_divergence(s, t, torch.tensor(comp), top_k=8)[0].median()))
    assert medians[0] < 1e-4 < 1e-2 < medians[1]  # below the saliency floor, then well above it


def test_airline_expert_script_replays_the_gold_actions_and_scores_one():
    from trl_sgcd.envs.airline import AirlineEnv, airline_reward, make_airline_dataset
    from trl_sgcd.envs.scripted import airline_expert_script, scripted_rows

    rows = list(make_airline_dataset("train"))
    envs = [AirlineEnv() for _ in rows]
    completions = []
    for env, row in zip(envs, rows, strict=True):
        env.reset(task_id=row["task_id"])
        env.cancel_reservation("NOSUCH")  # the policy's episode, which the script replaces
        completions.append(airline_expert_script(env))
        assert [c["name"] for c in env.calls] == [a["name"] for a in env.task["gold_actions"]]
    assert airline_reward(completions, environments=envs) == [1.0] * len(rows)
    assert scripted_rows(6, 2) == [1, 3, 5] and scripted_rows(3, 4, offset=2) == [1]  # groups may span ranks
