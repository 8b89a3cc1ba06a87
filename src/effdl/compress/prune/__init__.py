"""prune (to be filled)."""
