"""`CompactAirlineEnv`: the compact profile of the airline environment, sized for experiments on 2 CPU cores.

```python
from trl_sgcd.envs import CompactAirlineEnv, airline_reward, make_airline_dataset

trainer = SGCDTrainer(model=..., args=..., train_dataset=make_airline_dataset("train", profile="compact"),
                      environment_factory=CompactAirlineEnv, reward_funcs=airline_reward)
```

The same database, users, train/test user split and verifier (`airline_reward`: the final database, transfer flag
and answer facts against the gold replay) as `AirlineEnv`, with the prompt cut to what a 135M policy uses: a
four-line policy (`COMPACT_POLICY`, 84 tokens) and three tools with one-line descriptions (reservation look-up,
cancel, transfer; 217 tokens as JSON), so system text + schemas are 301 tokens and a whole rendered prompt ~460 with
the SmolLM2 template, against 209 + 745 and ~1,140 for the full profile (measured with the SmolLM2 tokenizer). The
tasks (`airline_tasks(split, profile="compact")`, ids `airline-compact-<split>-NNN`) are the five kinds of the full
profile that these tools solve, each with a gold solution of 1-2 calls: cancel (look up, cancel), refused cancel (look
up, refuse: the policy decides), reservation total (look up, answer the sum), compensation (look up, transfer) and
out-of-scope request (transfer). Unlike `AirlineEnv`, the cancel tool does not enforce the cancellation policy (as
in τ²-bench): the agent must read the reservation and decide, so a refused-cancel task fails when the agent cancels.
Observations are compact too: a reservation shows only the fields these tasks need (`compact_reservation`) and a
cancel returns a one-line confirmation, so a whole episode (calls, observations, answer) fits a 384-token completion
(TRL counts tool results in `max_completion_length`; full-profile observations are ~260-340 tokens each).
64 train tasks (24 action, 12 information, 12 transfer, 16 no-action) and 20 test
tasks (8 / 4 / 4 / 4) from the same disjoint user split. Every failure has a decisive deviation that
`trl_sgcd.envs.decisive` finds: a cancel the policy forbids, a missing cancel or transfer, a wrong id, a wrong total.

The full profile stays the default for users; this one exists so that the matched experiment
(`benchmarks/experiment.py --env-profile compact`) runs 100-step arms on CPU.
"""

from __future__ import annotations

from . import airline_ops as ops
from .airline import AirlineBase, _tool
from .airline_tasks import task_profile

COMPACT_RESERVATION_KEYS = ("reservation_id", "cabin", "insurance", "created_at", "status", "payment_history")
"""The reservation fields the compact tasks need: the cancellation rule's inputs and the payments of a total."""


def compact_reservation(reservation: dict) -> dict:
    """A reservation as the compact profile shows it: the fields of `COMPACT_RESERVATION_KEYS` and one line per flight
    (~110 tokens instead of ~260, so a whole episode fits a 384-token completion budget)."""
    view = {key: reservation[key] for key in COMPACT_RESERVATION_KEYS}
    view["flights"] = [
        f"{f['flight_number']} {f['origin']}-{f['destination']} {f['date']}" for f in reservation["flights"]
    ]
    return view


class CompactAirlineEnv(AirlineBase):
    """The 3-tool airline environment of the compact profile (see the module docstring and `AirlineBase`)."""

    def reset(self, task_id: str | None = None, seed: int | None = None, **kwargs) -> None:
        """Start the compact task `task_id` on a fresh copy of the database."""
        if task_id is not None and task_profile(task_id) != "compact":
            raise ValueError(
                f"CompactAirlineEnv runs compact tasks (make_airline_dataset(..., profile='compact')), got {task_id!r}"
            )
        return super().reset(task_id=task_id, seed=seed, **kwargs)

    @_tool
    def get_reservation_details(self, reservation_id: str):
        """Get a reservation.

        Args:
            reservation_id: Reservation id.
        """
        return compact_reservation(ops.get_reservation(self.db, reservation_id))

    @_tool
    def cancel_reservation(self, reservation_id: str):
        """Cancel a reservation.

        Args:
            reservation_id: Reservation id.
        """
        reservation = ops.cancel(self.db, reservation_id, enforce_policy=False)  # the agent applies the policy
        refund = -sum(p["amount"] for p in reservation["payment_history"] if p["amount"] < 0)
        return {"reservation_id": reservation_id, "status": reservation["status"], "refunded": refund}

    @_tool
    def transfer_to_human_agents(self, summary: str):
        """Transfer to a human agent.

        Args:
            summary: The request.
        """
        self.transferred = True
        return "Transfer successful"
