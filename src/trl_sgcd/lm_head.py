"""Score only the completion positions in TRL's fused LM head on CPU.

TRL 1.16 computes the loss's per-token log-probabilities with a fused LM head (`trl.trainer.utils.add_fused_lm_head`)
that, on a device without Triton, projects EVERY position of the sequence through the vocabulary: the prompt too,
whose labels are `-100` and whose results are then zeroed. It does so to keep tile shapes fixed for compilers
(Neuron, XLA). On an eager CPU that is pure cost: a tool-use prompt (system message, tool schemas, earlier turns) is
most of each row, and the 49k-vocabulary projection with its entropy, forward and backward, dominated a tiny-model
step. `compact_lm_head()` makes TRL take its own compact path (only the positions with a label, `hidden[mask]`, as
it already does on Triton devices) for CPU tensors, while the context is active. Results equal the full path up to
float rounding (each position is computed alone either way); `tests/test_lm_head.py` checks loss and gradients.

Measured: the `examples/sgcd_airline.py` step (tiny model, 8 airline rollouts, ~9.4k tokens of which 384 are
completion) went from 61.6 s to 4.8 s on the loaded 2-core machine (one run each).

The upstream fix this stands for: in `add_fused_lm_head`, take the compact path whenever the device is not compiled
for fixed shapes (e.g. `compact = _use_triton(device) or device.type == "cpu"`).
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def compact_lm_head(enabled: bool = True):
    """While active, TRL's fused LM head scores only labelled positions of CPU tensors (see the module docstring)."""
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    if not enabled or getattr(original, "_sgcd_compact", False):  # off, or already inside the context
        yield
        return

    def use_compact(device) -> bool:
        return device.type == "cpu" or original(device)

    use_compact._sgcd_compact = True
    trl_utils._use_triton = use_compact
    try:
        yield
    finally:
        trl_utils._use_triton = original
