"""The scoring wing: the policy scored as student and as teacher (its prompt plus the reference).

In order: `teacher.py` (teacher prompt ids, spliced completions, masked-literal tokens) -> `model_access.py` (unwrap,
decoder, chunked LM head) -> `hidden_states.py` (completion hidden states, shared-prefix cache) -> `divergence.py`
(pure top-K math) -> `scorer.py` (`DenseDivergenceScorer`) and `distill_losses.py` (the extra losses of `direct_sd`
and `sdpo`).
"""
