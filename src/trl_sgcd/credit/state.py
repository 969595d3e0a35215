"""`sgcd_state.json`: what a checkpoint needs beyond TRL's own files for a resumed SGCD run to continue exactly.

The reference builder's state (cache counters, the contrast reference's memory), the inert-steps count of the validity
check, and dynamic sampling's resample stream position. Written next to TRL's checkpoint files by
`SGCDTrainer._save_checkpoint`, read back by `SGCDTrainer._load_optimizer_and_scheduler`.
"""

from __future__ import annotations

import json
import os

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

SGCD_STATE_FILE = "sgcd_state.json"


def save_sgcd_state(trainer, trial) -> None:
    """Write the trainer's SGCD state into the checkpoint TRL has just saved (main process only)."""
    if not trainer.args.should_save:
        return
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    state = {"reference_builder": trainer.reference_builder.state_dict(), "inert_steps": trainer._credit_inert_steps}
    with open(os.path.join(trainer._get_output_dir(trial=trial), name, SGCD_STATE_FILE), "w") as f:
        json.dump({**state, "resample": trainer._credit_stream.state_dict()}, f)


def load_sgcd_state(trainer, checkpoint) -> None:
    """Restore the SGCD state of `checkpoint`, if it has one (a plain GRPO checkpoint has none)."""
    if checkpoint is None or not os.path.exists(path := os.path.join(checkpoint, SGCD_STATE_FILE)):
        return
    with open(path) as f:
        state = json.load(f)
    trainer.reference_builder.load_state_dict(state.get("reference_builder", {}))
    trainer._credit_inert_steps = int(state.get("inert_steps", 0))
    trainer._credit_stream.load_state_dict(state.get("resample", {}))
