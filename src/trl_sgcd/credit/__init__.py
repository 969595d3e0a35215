"""The credit method, in pipeline order (`pipeline.py` runs it, one generation batch at a time):

1. `siblings.py`   cut the gathered batch into groups of G rollouts; a group is mixed when it has a success and a
                   failure (`modes.py`: which groups get a teacher, with which context, in each `credit_mode`);
2. `reference/`    (torch-free) traces -> sanitizer -> evidence -> prompt / contrast -> LLM client -> builder: one
                   `CreditReference` per mixed group;
3. `scoring/`      teacher context -> model access -> scorer (dense divergence, one chunk loop) and the extra losses;
4. `weighting/`    saliency (where the divergence spikes) -> bounded weights W;
5. `report/`       the per-step credit table (W&B, HTML) and localization metrics.

`types.py` holds the data the stages hand each other; `stats.py` the batch statistics, logs and validity checks;
`state.py` the checkpoint file.
"""
