"""Export of trained avatars into self-contained, versioned renderer artifacts (TorchScript)."""
