"""What a run shows of its credit: `table.py` (the per-step credit table, W&B and local HTML), `html.py` (tokens
shaded by W), `localization.py` (credit-mass lift, recall, precision, bootstrap intervals)."""
