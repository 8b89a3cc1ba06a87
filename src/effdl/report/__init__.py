"""report (to be filled)."""
