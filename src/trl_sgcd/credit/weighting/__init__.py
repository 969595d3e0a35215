"""The weights stage: `saliency.py` (where the divergence spikes, in spans) -> `weights.py` (bounded W, A * W)."""
