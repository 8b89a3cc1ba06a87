"""factorize (to be filled)."""
