"""search (to be filled)."""
