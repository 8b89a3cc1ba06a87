"""distill (to be filled)."""
