"""deploy (to be filled)."""
