"""`sgcd_state.json`: what a checkpoint needs beyond TRL's own files for a resumed SGCD run to continue exactly.

The reference builder's state (cache counters, the contrast reference's memory), the inert-steps count of the validity
check, and dynamic sampling's resample stream position. Written next to TRL's checkpoint files by
`SGCDTrainer._save_checkpoint`, read back by `SGCDTrainer._load_optimizer_and_scheduler`; the trainer says what the
state holds, these functions only store it.
"""

from __future__ import annotations

import json
import os

SGCD_STATE_FILE = "sgcd_state.json"


def save_sgcd_state(checkpoint_dir: str, state: dict) -> None:
    """Write `state` (JSON-serialisable) into the checkpoint folder TRL has just saved."""
    with open(os.path.join(checkpoint_dir, SGCD_STATE_FILE), "w") as f:
        json.dump(state, f)


def load_sgcd_state(checkpoint: str | None) -> dict | None:
    """The SGCD state of `checkpoint`, or `None` when it has none (a plain GRPO checkpoint)."""
    if checkpoint is None or not os.path.exists(path := os.path.join(checkpoint, SGCD_STATE_FILE)):
        return None
    with open(path) as f:
        return json.load(f)
