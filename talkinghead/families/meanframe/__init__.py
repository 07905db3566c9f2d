"""The meanframe family: the source's mean frame over the speech (a seconds-fast smoke test)."""
