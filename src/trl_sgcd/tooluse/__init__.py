"""Tool-use toolkit around the method: audit, evaluation, expert trajectories, warm start, bundled models."""
