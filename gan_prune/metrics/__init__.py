"""FID, KID and precision/recall with Inception or the bundled effnet-lite0 detector."""
