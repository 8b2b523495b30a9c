"""Channel importance, mask providers, the rate solver and network surgery."""
