"""Shared models: parts of renderer families trained once from a multi-speaker corpus."""
