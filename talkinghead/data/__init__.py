"""Streaming access to a training dataset: frames at the training resolution and ray batches."""
