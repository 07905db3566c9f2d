"""Shared models: versioned training jobs from a corpus, listing and resolution."""
