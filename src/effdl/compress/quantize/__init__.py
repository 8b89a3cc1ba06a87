"""quantize (to be filled)."""
