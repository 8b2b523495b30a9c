"""Frozen third-party architectures we implement ourselves (weights come from local files)."""
