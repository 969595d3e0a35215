"""The reference wing: sibling rollouts in, one text `CreditReference` per mixed group out. Torch-free.

In order: `traces.py` (a rollout as policy-visible steps) -> `sanitize.py` + `sanitize_patterns.py` (private values
and secrets masked) -> `evidence.py` (sanitized steps, siblings selected under a token budget) -> `prompt.py` (the
LLM's prompt and the five sections) / `contrast.py` (the offline reference) -> `llm.py` (the litellm client, its
results, errors and disk cache) -> `builder.py` (`SiblingReferenceBuilder`, its counters, the sibling contexts of the
SDPO-style modes).
"""
