"""The trainer: staged schedule, EMA, checkpoints that resume exactly, held-out evaluation."""
